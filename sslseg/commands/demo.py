"""``sslseg demo``: the whole loop on public sample data - fine-tune on a few hippocampus cases, segment held-out
cases, print their Dice and where the outputs are."""

from __future__ import annotations

import argparse
import os

from sslseg.commands._common import add_progress_argument, run_reported

EPILOG = """Data: --data DIR, else $SSLSEG_DEMO_DATA, else ../shared/data/Task04_Hippocampus (beside the current
folder or the repository), else an earlier download in $SSLSEG_HOME/data, else a download of the Medical
Segmentation Decathlon Task04 Hippocampus (27 MB, MD5-verified). On a CPU the default run takes about 5 minutes."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo", help="fine-tune on sample data, segment held-out cases, print Dice (the main job, ~5 min on CPU)",
        description="Fine-tune on a few MSD hippocampus cases (from scratch: no pretrained backbone is needed), "
                    "segment held-out cases and report their Dice.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="hippocampus dataset folder (MSD/nnU-Net layout)")
    parser.add_argument("--out", help="output folder (default: $SSLSEG_HOME/demo, i.e. ~/.sslseg/demo)")
    parser.add_argument("--backbone", default="none", help="backbone to fine-tune (default none: from scratch)")
    parser.add_argument("--train-cases", type=int, default=10, help="training cases (default 10)")
    parser.add_argument("--test-cases", type=int, default=3, help="held-out cases to segment (default 3)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="training time in seconds (default: 210 on CPU, the preset's steps on a GPU)")
    parser.add_argument("--preset", help="default: cpu without a GPU, quick with one")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    add_progress_argument(parser)
    parser.set_defaults(func=run)
    return parser


def run(args):
    from sslseg.progress import Reporter

    reporter = Reporter(args.progress, prefix="demo")
    return run_reported(reporter, lambda: demo(args, reporter))


def check_args(args) -> None:
    """Every option checked before the data are looked for (which may download them) or anything is trained."""
    from sslseg.device import parse_device
    from sslseg.errors import UserError
    from sslseg.validation import float_in_range, positive_int, seed

    positive_int("--train-cases", args.train_cases)
    positive_int("--test-cases", args.test_cases)
    if args.time_limit is not None:
        float_in_range("--time-limit", args.time_limit, 0.0)  # 0: no limit, the preset's steps
    seed(args.seed)
    parse_device(args.device)
    if args.out and os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} exists and is not a folder; give a folder")


def demo(args, reporter):
    """The main job: split, fine-tune, segment the held-out cases, score them, say where everything is."""
    from sslseg.datasets import load_dataset
    from sslseg.demo_data import find_demo_data
    from sslseg.device import resolve_device
    from sslseg.inference import predict
    from sslseg.progress import Reporter

    check_args(args)
    say = print if args.progress == "bar" else reporter.log
    root, how = find_demo_data(args.data, log=say)
    say(f"sample data: {root} (found via {how})")
    dataset = load_dataset(root)
    train_ids, test_ids = _split(dataset, args)
    out = os.path.abspath(args.out or os.path.join(os.environ.get("SSLSEG_HOME") or
                                                   os.path.join(os.path.expanduser("~"), ".sslseg"), "demo"))
    device, _ = resolve_device(args.device)
    time_limit = args.time_limit if args.time_limit is not None else (210.0 if device.type == "cpu" else None)
    say(f"fine-tuning on {len(train_ids)} cases ({', '.join(train_ids)})"
        + (f" for about {time_limit:.0f} s" if time_limit else "") + f" on {device.type.upper()}")
    model_dir = _train(args, reporter, root, os.path.join(out, "model"), train_ids, time_limit)
    by_id = {case.case_id: case for case in dataset.cases}
    say(f"segmenting {len(test_ids)} held-out case(s) never used in training: {', '.join(test_ids)}")
    segmentations = os.path.join(out, "segmentations")
    written = predict(model_dir, [by_id[c].images[0] for c in test_ids], segmentations, device=args.device,
                      seg_nrrd=True, progress=Reporter("none"))
    results = _score(by_id, test_ids, segmentations, dataset.label_names, say)
    label_names = dataset.label_names
    mean = float(results.mean())
    say(f"mean Dice on {len(test_ids)} held-out case(s): {mean:.3f} "
        f"(MSD hippocampus labels {', '.join(label_names.values())})")
    say(f"model: {model_dir}")
    say(f"segmentations (label maps and Slicer .seg.nrrd files): {segmentations}")
    say(f"next: sslseg predict --model {model_dir} --input YOUR_SCAN.nii.gz --output OUT_DIR --seg-nrrd")
    if args.progress == "json":
        reporter.validation(step=0, dice={label_names[k + 1]: float(v) for k, v in enumerate(results.mean(axis=0))},
                            mean_dice=mean)
    reporter.done(model=model_dir, outputs=[os.path.abspath(p) for p in written])
    return 0


def _split(dataset, args):
    """Training and held-out case ids: the cases permuted with the seed."""
    import numpy as np

    from sslseg.errors import UserError

    ids = sorted(case.case_id for case in dataset.cases)
    if args.train_cases + args.test_cases > len(ids):
        raise UserError(f"--train-cases and --test-cases must add up to at most {len(ids)}")
    order = [ids[i] for i in np.random.default_rng(args.seed).permutation(len(ids))]
    return order[:args.train_cases], order[args.train_cases:args.train_cases + args.test_cases]


def _train(args, reporter, root, out, train_ids, time_limit):
    from sslseg.finetuning import finetune

    finish, reporter.done = reporter.done, (lambda **fields: None)  # one "done" event, at the very end
    try:
        return finetune(args.backbone, data=root, out=out, preset=args.preset, device=args.device, seed=args.seed,
                        progress=reporter, time_limit=time_limit or 0, train_case_ids=train_ids, val_case_ids=[],
                        keep_best=False)
    finally:
        reporter.done = finish


def _score(by_id, test_ids, segmentations, label_names, say):
    """Dice per held-out case and label, on each case's own grid."""
    import numpy as np

    from sslseg.finetuning.evaluation import dice_per_class
    from sslseg.preprocessing import read_channels, read_label

    results = []
    for case_id in test_ids:
        image, geometry = read_channels(by_id[case_id].images, case_id)
        truth = read_label(by_id[case_id].label, case_id, geometry)
        predicted, _ = read_channels([os.path.join(segmentations, f"{case_id}.nii.gz")], case_id)
        scores = dice_per_class(predicted[0].astype(np.int64), truth.astype(np.int64), max(label_names) + 1)
        say(f"  {case_id}: Dice " + ", ".join(f"{label_names[k + 1]} {s:.3f}" for k, s in enumerate(scores)))
        results.append(scores)
    return np.asarray(results)
