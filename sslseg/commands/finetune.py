"""``sslseg finetune``: fine-tune a pretrained backbone (or train from scratch) on labelled volumes."""

from __future__ import annotations

from sslseg.commands._common import add_progress_argument, run_reported, sigterm_cancels

EPILOG = """examples:
  sslseg finetune --backbone none --data ../shared/data/Task04_Hippocampus --out models/hippo --preset cpu
  sslseg finetune --data Task04_Hippocampus --unlabelled more_scans/ --time-limit 900 --out models/hippo
  sslseg finetune --backbone ResEncL-OpenMind-S3D --data Task04_Hippocampus --out models/hippo --preset quick
  sslseg finetune --backbone my_backbone.pth --images a.nii.gz b.nii.gz --labels a_seg.nii.gz b_seg.nii.gz \\
      --label-names Liver Tumour --out models/liver --progress json

The model folder holds model.json and model.pt; it appears at --out only when training finished.

Interrupted runs: every --checkpoint-every seconds (default 300) the whole training state is saved atomically to
a hidden file beside --out (.<name>.resume.pth). After a crash, a kill or a cancel, the same command with --resume
continues from there and ends as the uninterrupted run would have (same steps and schedule; on the CPU the same
weights); the file is removed when the model is written. Only one run may write an --out at a time: a second one
is refused with the first one's process id."""


def add_parser(subparsers):
    from sslseg.presets import PRESETS

    parser = subparsers.add_parser(
        "finetune", help="fine-tune a backbone on labelled volumes (the low-data recipe)",
        description="Fine-tune a pretrained backbone with the low-data recipe of Wald et al. (decoder warm-up with "
                    "the encoder frozen, whole-network warm-up, PolyLR), or train from scratch (--backbone none).",
        epilog=EPILOG, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="none",
                        help="backbone name (see `sslseg models`), checkpoint file, or none (from scratch; default)")
    parser.add_argument("--data", help="dataset folder in the nnU-Net/MSD layout (imagesTr/, labelsTr/, dataset.json)")
    parser.add_argument("--images", nargs="+", help="image files (instead of --data)")
    parser.add_argument("--labels", nargs="+", help="label files, one per image, same order")
    parser.add_argument("--label-names", nargs="+", metavar="NAME",
                        help="names of label values 1, 2, ... (with --images; default: the values found)")
    parser.add_argument("--label-info", metavar="JSON",
                        help='JSON file: [{"value": 1, "name": "Liver", "color": [r, g, b]}, ...] (colours 0..1)')
    parser.add_argument("--out", required=True, help="output model folder (written when training finished)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="quick | standard | paper (GPU), cpu (small network, default without a GPU), test")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cuda:N or cpu")
    parser.add_argument("--steps", type=int, help="number of training steps (default: the preset's)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="fit the run into this many seconds (the cpu preset defaults to 900; 0 = no limit)")
    parser.add_argument("--val-cases", type=int,
                        help="cases held out for validation (default: none below 20 cases, so that every "
                             "case trains; 1 in 5, at most 10, from 20 on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, help="batch size (default: the preset's, reduced to fit the GPU)")
    parser.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="patch size in voxels (default: from the backbone plan, clipped to the data)")
    parser.add_argument("--arch", help="network for --backbone none (default: the preset's; e.g. ResEncL, "
                                       "ResEncS-cpu, ResEncXS-cpu)")
    parser.add_argument("--config", choices=["auto", "2d", "3d"], default="auto",
                        help="auto (default): slice-wise 2D for thick-slice data, else 3D (the reason is logged and "
                             "kept in model.json); 2d or 3d to choose (--backbone none only for 2d)")
    parser.add_argument("--max-lr", type=float, help="maximum learning rate (default: 1e-3 fine-tuning, 1e-2 scratch)")
    parser.add_argument("--max-memory-gb", type=float,
                        help="GPU memory limit: batch/patch are reduced and gradient checkpointing enabled to fit")
    parser.add_argument("--pack", metavar="FILE", help="also pack the model into one .sslmodel file")
    parser.add_argument("--init-model", metavar="PATH",
                        help="continue from a fine-tuned model folder or .sslmodel: its trained weights are the "
                             "starting point and the recipe's warm-ups run again")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run of --out from its last checkpoint (same options; without "
                             "a checkpoint it starts from step 0)")
    parser.add_argument("--checkpoint-every", type=float, metavar="SECONDS",
                        help="save the training state for --resume every SECONDS (default 300; 0 = never)")
    parser.add_argument("--unlabelled", metavar="FOLDER_OR_LIST",
                        help="unlabelled images of the same kind (a folder, or a text file with one path a line): "
                             "pseudo-labelled by a first round and trained on in a second, within the same time")
    add_progress_argument(parser)
    parser.set_defaults(func=run)
    return parser


def _check_options(args):
    """Every option checked before any data is read (one line naming the option otherwise)."""
    from sslseg.finetuning.options import check_finetune_options

    return check_finetune_options(
        steps=args.steps, batch_size=args.batch_size, patch_size=args.patch, seed=args.seed, max_lr=args.max_lr,
        time_limit=args.time_limit, val_cases=args.val_cases, max_memory_gb=args.max_memory_gb,
        label_info=args.label_info, preset=args.preset, device=args.device, out=args.out, pack=args.pack,
        init_model=args.init_model, checkpoint_every=args.checkpoint_every, config=args.config)


def run(args):
    from sslseg.progress import Reporter

    reporter = Reporter(args.progress, prefix="finetune")

    def work():
        options = _check_options(args)
        import sslseg  # sslseg.finetune: the API function, wherever its module lives
        from sslseg.model_folder import pack_model

        names = {i + 1: n for i, n in enumerate(args.label_names)} if args.label_names else None
        # passed only when given, so that an engine without the keyword keeps working
        extra = {"init_model": options.init_model} if options.init_model else {}
        if args.resume:
            extra["resume"] = True
        if options.checkpoint_every is not None:
            extra["checkpoint_every"] = options.checkpoint_every
        if options.config != "auto":
            extra["config"] = options.config
        if args.unlabelled:
            extra["unlabelled"] = args.unlabelled
        path = sslseg.finetune(
            args.backbone, data=args.data, images=args.images, labels=args.labels, out=options.out,
            preset=options.preset, device=options.device, steps=options.steps, val_cases=options.val_cases,
            seed=options.seed, progress=reporter, label_names=names, label_info=options.label_info,
            time_limit=options.time_limit, max_memory_gb=options.max_memory_gb, batch_size=options.batch_size,
            patch_size=options.patch_size, max_lr=options.max_lr, arch=args.arch, **extra)
        if options.pack:
            reporter.log(f"packed model: {pack_model(path, options.pack)}")
        if args.progress == "bar":
            print(f"model written to {path}")
        return 0

    with sigterm_cancels():
        return run_reported(reporter, work, "finetune")
