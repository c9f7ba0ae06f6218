"""``sslseg rank``: order unlabelled volumes by the model's uncertainty, to choose which one to correct next."""

from __future__ import annotations

import argparse

from sslseg.commands._common import (add_inference_arguments, add_progress_argument, run_reported,
                                     sigterm_cancels)

EPILOG = """examples:
  sslseg rank --model models/hippo --input unlabelled/ --output ranked/
  sslseg rank --model hippo.sslmodel --input a.nii.gz b.nii.gz c.nii.gz --output ranked/ --progress json

Every candidate is segmented as `sslseg predict --uncertainty` does it (<case>.nii.gz, <case>_uncertainty.nii.gz),
then the candidates are ordered by their uncertainty score, most uncertain first: correct the first one, add it to
the training data and fine-tune again. The order is written to <output>/ranking.json (a list of {case, input,
segmentation, uncertainty_map, score, per_segment}) and printed as a table; with --progress json it is the final
"done" event's "ranking". Inputs, options and output paths are checked before the model is loaded, as in predict."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "rank", help="order unlabelled volumes by uncertainty (which case to annotate next)",
        description="Segment every candidate with a fine-tuned model, measure the model's uncertainty (entropy of "
                    "the softmax averaged over the mirrorings) and list the candidates most uncertain first.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or packed .sslmodel file")
    parser.add_argument("--input", required=True, nargs="+", help="candidate image file(s) or folder(s)")
    parser.add_argument("--output", required=True,
                        help="output folder for the segmentations, uncertainty maps and ranking.json")
    add_inference_arguments(parser, "on; the uncertainty is measured over them; --no-tta is 8 times faster on "
                                    "the CPU")
    add_progress_argument(parser)
    parser.set_defaults(func=run)
    return parser


def run(args):
    from sslseg.progress import Reporter

    reporter = Reporter(args.progress, prefix="rank")

    def work():
        from sslseg.ranking import RANKING_FILE, rank_cases, ranking_table

        ranking = rank_cases(args.model, args.input, args.output, device=args.device, tta=args.tta,
                             overlap=args.overlap, sw_batch_size=args.batch_size, seg_nrrd=args.seg_nrrd,
                             progress=reporter)
        if args.progress == "bar":
            print(ranking_table(ranking))
            print(f"(most uncertain first; written to {args.output.rstrip('/')}/{RANKING_FILE})")
        return 0

    with sigterm_cancels():  # Cancel in Slicer sends SIGTERM: stop cleanly, no half-written file
        return run_reported(reporter, work, "rank")
