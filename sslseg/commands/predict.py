"""``sslseg predict``: segment volumes with a fine-tuned model."""

from __future__ import annotations

import argparse

from sslseg.commands._common import (add_inference_arguments, add_progress_argument, run_reported,
                                     sigterm_cancels)

EPILOG = """examples:
  sslseg predict --model models/hippo --input case.nii.gz --output segmentations/ --seg-nrrd
  sslseg predict --model hippo.sslmodel --input scans/ --output segmentations/ --tta --progress json
  sslseg predict --model models/hippo --input unlabelled/ --output segmentations/ --uncertainty

Each input gives <case>.nii.gz (label values on the input's exact grid), with --seg-nrrd a Slicer
<case>.seg.nrrd with segment names and colours, and with --uncertainty <case>_uncertainty.nii.gz: per voxel the
normalised entropy (0 = sure, 1 = all classes equally likely) of the softmax averaged over the mirrorings, on the
input's grid; its summary per case (mean, per segment, a ranking score) comes in the "done" event.

Everything is checked before the model is loaded: the options, every output path (no output may land on an input,
a link to one included; no two inputs or outputs may share a name) and every input (readable, complete, the
model's channel count, no NaN/Inf voxels).

Each output file appears whole or not at all (written to a hidden .partial-* file, checked, then renamed). A killed
run leaves only whole outputs; the same command with --continue segments only the cases still missing. One run
writes an --output folder at a time: a second one is refused with the first one's process id. A full disk or a
folder that cannot be written ends the run with one line naming the file (exit 1)."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "predict", help="segment volumes with a fine-tuned model",
        description="Sliding-window inference (Gaussian blending, optional mirroring TTA, mixed precision on CUDA); "
                    "results are resampled onto each input's exact grid.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or packed .sslmodel file")
    parser.add_argument("--input", required=True, nargs="+", help="image file(s) or folder(s)")
    parser.add_argument("--output", required=True,
                        help="output folder (refused where an output would replace an input file)")
    add_inference_arguments(parser, "on with CUDA or --uncertainty; on the CPU for a case of at most 8 windows")
    parser.add_argument("--format", choices=("nii.gz", "nii", "nrrd"), default="nii.gz", help="label file format")
    parser.add_argument("--uncertainty", action="store_true",
                        help="also write <case>_uncertainty maps and summarise them per case (turns TTA on)")
    parser.add_argument("--continue", "--skip-existing", dest="skip_finished", action="store_true",
                        help="finish an interrupted run: keep the cases whose outputs are all in --output already "
                             "and segment only the others")
    add_progress_argument(parser)
    parser.set_defaults(func=run)
    return parser


def run(args):
    from sslseg.progress import Reporter

    reporter = Reporter(args.progress, prefix="predict")

    def work():
        from sslseg.inference import predict

        written = predict(args.model, args.input, args.output, device=args.device, overlap=args.overlap,
                          tta=args.tta, seg_nrrd=args.seg_nrrd, output_format=args.format, progress=reporter,
                          sw_batch_size=args.batch_size, uncertainty=args.uncertainty,
                          **({"skip_finished": True} if args.skip_finished else {}))
        if args.progress == "bar":
            for path in written:
                print(path)
        return 0

    with sigterm_cancels():  # Cancel in Slicer sends SIGTERM: stop cleanly, no half-written file
        return run_reported(reporter, work, "predict")
