"""``sslseg models``: the pretrained backbones (list, download, import, inspect).

Examples::

    sslseg models list
    sslseg models download ResEncL-OpenMind-S3D
    sslseg models import ~/Downloads/checkpoint_final.pth --name ResEncL-OpenMind-MAE
    sslseg models import runs/s3d/checkpoint_final.pth --name my-s3d
    sslseg models inspect my-s3d --json
"""

import json
import sys

DESCRIPTION = """Pretrained backbones: the public MAE/S3D/Volume Fusion weights of the catalog, files you imported
and backbones you pretrained. Files are cached in $SSLSEG_HOME/backbones (default ~/.sslseg/backbones).
Without internet access (or behind a blocking proxy) download a file elsewhere and `sslseg models import` it."""


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
    download.add_argument("--progress", default="bar", choices=["bar", "json", "none"])
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


def _progress_printer(mode):
    if mode == "none":
        return None
    state = {"last": -1}

    def report(done, total):
        if mode == "json":
            step = done // (16 << 20)
            if step != state["last"] or (total and done >= total):
                state["last"] = step
                print(json.dumps({"event": "progress", "phase": "download", "step": done, "total": total}),
                      flush=True)
            return
        if total:
            print(f"\r{done / 1e6:8.1f} / {total / 1e6:.1f} MB ({100 * done / total:5.1f} %)", end="",
                  file=sys.stderr, flush=True)
        else:
            print(f"\r{done / 1e6:8.1f} MB", end="", file=sys.stderr, flush=True)

    return report


def run_download(args):
    from sslseg.backbones import download_backbone

    path = download_backbone(args.name, progress=_progress_printer(args.progress), force=args.force)
    if args.progress == "bar":
        print(file=sys.stderr)
    if args.progress == "json":
        print(json.dumps({"event": "done", "model": path}))
    else:
        print(path)
    return 0


def run_import(args):
    from sslseg.backbones import import_checkpoint, inspect

    name = import_checkpoint(args.file, name=args.name, overwrite=args.overwrite)
    print(f"imported backbone {name}")
    print(inspect(name)["summary"])
    return 0


def run_inspect(args):
    from sslseg.backbones import inspect

    result = inspect(args.source, num_classes=args.num_classes, in_channels=args.in_channels)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif result.get("loaded"):
        print(result["summary"])
    else:
        entry = result["catalog"]
        print(f"{result['name']}: {entry['title']}\n  method {entry['method']}, architecture {entry['architecture']}, "
              f"modality {entry['modality']}, licence {entry['license']}\n  {result['message']}")
    return 0
