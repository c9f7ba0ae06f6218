"""``sslseg models``: the pretrained backbones (list, download, import, inspect).

Examples::

    sslseg models list
    sslseg models download ResEncL-OpenMind-S3D
    sslseg models import ~/Downloads/checkpoint_final.pth --name ResEncL-OpenMind-MAE
    sslseg models import runs/s3d/checkpoint_final.pth --name my-s3d
    sslseg models inspect my-s3d --json
"""

import json

from sslseg.commands._common import add_progress_argument, run_reported

DESCRIPTION = """Pretrained backbones: the public MAE/S3D/Volume Fusion weights of the catalog, files you imported
and backbones you pretrained. Files are cached in $SSLSEG_HOME/backbones (default ~/.sslseg/backbones).
Without internet access (or behind a blocking proxy) download a file elsewhere and `sslseg models import` it."""
# the largest network `inspect` builds for its report: label values fit in a byte; more input channels than this
# is not an image any backbone was pretrained for
MAX_CLASSES = 256
MAX_CHANNELS = 64


def add_parser(subparsers):
    parser = subparsers.add_parser("models", help="list, download, import and inspect pretrained backbones",
                                   description=DESCRIPTION)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    listing = actions.add_parser("list", help="catalog, imported and user-pretrained backbones")
    listing.add_argument("--json", action="store_true", help="one JSON list on stdout")
    listing.set_defaults(func=run_list)

    download = actions.add_parser("download", help="download a catalog backbone into the cache (resumable)")
    download.add_argument("name")
    download.add_argument("--force", action="store_true", help="download again even when cached")
    add_progress_argument(download)
    download.set_defaults(func=run_download)

    importing = actions.add_parser(
        "import", help="register a local checkpoint (nnssl format with adaptation_plan.json beside it, or MIS-FM)",
        description="Copy a checkpoint into the cache after checking that it loads safely and completely. Use "
        "--name with a catalog name to register a manually downloaded public file (its checksum is verified).")
    importing.add_argument("file", help="checkpoint file or a pretraining output folder")
    importing.add_argument("--name", help="backbone name (default: from the file or folder name)")
    importing.add_argument("--overwrite", action="store_true", help="replace a different backbone of that name")
    importing.set_defaults(func=run_import)

    inspecting = actions.add_parser("inspect", help="format, method, architecture, parameters and load report")
    inspecting.add_argument("source", metavar="NAME_OR_FILE")
    inspecting.add_argument("--json", action="store_true")
    inspecting.add_argument("--num-classes", type=int, default=2, help="classes of the network built for the report")
    inspecting.add_argument("--in-channels", type=int, default=1)
    inspecting.set_defaults(func=run_inspect)

    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])
    return parser


def run_list(args):
    from sslseg.backbones import list_backbones

    backbones = list_backbones()
    if args.json:
        print(json.dumps(backbones, indent=2))
        return 0
    print(f"{'name':<28} {'source':<9} {'cached':<7} {'method':<6} {'architecture':<13} {'modality':<8} licence")
    for b in backbones:
        cached = "yes" if b["cached"] else ("manual" if b.get("download") == "manual" else "no")
        support = "" if b.get("supported", True) else "  (not supported yet)"
        print(f"{b['name']:<28} {b['source']:<9} {cached:<7} {str(b['method']):<6} {str(b['architecture']):<13} "
              f"{str(b['modality']):<8} {b.get('license') or '-'}{support}")
    return 0


def _download_progress(reporter):
    """``progress(done, total)`` for download_backbone: a ``progress`` event (phase "download", step/total in
    bytes) at each whole percent, or every 16 MiB when the size is unknown."""
    last = {"mark": None}

    def report(done, total):
        mark = done * 100 // total if total else done >> 24
        if mark == last["mark"] and not (total and done >= total):
            return
        last["mark"] = mark
        reporter.progress(phase="download", step=done, total=total or 0)

    return report


def run_download(args):
    from sslseg.progress import Reporter

    reporter = Reporter(args.progress, prefix="models download")

    def work():
        from sslseg.backbones import download_backbone

        path = download_backbone(args.name, progress=_download_progress(reporter), force=args.force)
        reporter.done(model=path)
        if args.progress != "json":
            print(path)
        return 0

    return run_reported(reporter, work)


def run_import(args):
    from sslseg.backbones import import_checkpoint, inspect

    name = import_checkpoint(args.file, name=args.name, overwrite=args.overwrite)
    print(f"imported backbone {name}")
    print(inspect(name)["summary"])
    return 0


def run_inspect(args):
    from sslseg.backbones import inspect
    from sslseg.validation import positive_int

    num_classes = positive_int("--num-classes", args.num_classes, maximum=MAX_CLASSES)
    in_channels = positive_int("--in-channels", args.in_channels, maximum=MAX_CHANNELS)
    result = inspect(args.source, num_classes=num_classes, in_channels=in_channels)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif result.get("loaded"):
        print(result["summary"])
    else:
        entry = result["catalog"]
        print(f"{result['name']}: {entry['title']}\n  method {entry['method']}, architecture {entry['architecture']}, "
              f"modality {entry['modality']}, licence {entry['license']}\n  {result['message']}")
    return 0
