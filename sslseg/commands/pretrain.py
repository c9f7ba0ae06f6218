"""``sslseg pretrain``: self-supervised pretraining (S3D, MAE, Volume Fusion) on unlabelled volumes.

Single machine::

    sslseg pretrain --method s3d --images /data/unlabelled --out runs/s3d --arch ResEncL --steps 250000 --batch 2

Many GPUs (one process per GPU; same arguments)::

    torchrun --nproc_per_node 8 -m sslseg pretrain --method s3d --images /data/unlabelled --out runs/s3d ...

With ``--progress json`` every stdout line is one JSON event (start, log, progress, validation, done, error) for the
SSLPretrain module; see sslseg/pretraining/reporting.py.
"""

from __future__ import annotations

import argparse
import sys

from sslseg.commands._common import add_progress_argument, run_reported, sigterm_cancels
from sslseg.pretraining.config import CPU_DEFAULTS, GPU_DEFAULTS, METHODS, VOLF_VARIANTS

DESCRIPTION = """Pretrain a ResEnc U-Net backbone on unlabelled 3D images (NIfTI/NRRD/MHA, a folder searched
recursively or a list file with one path per line). Methods: s3d (sparse masked autoencoder, Wald et al.),
mae (its dense variant), volf (Volume Fusion, Wang et al.). The result, OUT/checkpoint_final.pth +
OUT/adaptation_plan.json in the nnssl format, loads as a backbone for `sslseg finetune --backbone`.
Under torchrun the same command trains with DistributedDataParallel (NCCL on GPUs, gloo on CPU)."""


def _by_device(name: str) -> str:
    gpu, cpu = GPU_DEFAULTS[name], CPU_DEFAULTS[name]
    if name == "patch":
        gpu, cpu = f"{gpu[0]}^3", f"{cpu[0]}^3"
    return f"default: {gpu} on a GPU, {cpu} on the CPU"


def add_parser(subparsers):
    parser = subparsers.add_parser("pretrain", help="self-supervised pretraining on your own unlabelled volumes",
                                   description=DESCRIPTION,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--images", required=True, metavar="DIR_OR_LISTFILE",
                        help="folder with images (recursive) or a text file listing image paths")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (checkpoints, final backbone)")
    parser.add_argument("--arch", default=argparse.SUPPRESS,
                        help="architecture: ResEncL (paper, GPU), ResEncS-cpu, ResEncXS-cpu, ResEncT-test (see "
                        f"`sslseg models`); {_by_device('arch')}")
    parser.add_argument("--steps", type=int, default=250_000, help="training steps (the paper: 250000)")
    parser.add_argument("--batch", type=int, default=argparse.SUPPRESS,
                        help=f"patches per step per process; {_by_device('batch')}")
    parser.add_argument("--patch", type=int, nargs="+", default=argparse.SUPPRESS, metavar="N",
                        help="patch size z y x in voxels (one value: cube), a multiple of the network's total stride; "
                        f"{_by_device('patch')}")
    parser.add_argument("--spacing", type=float, nargs="+", default=[1.0], metavar="MM",
                        help="target spacing x y z in mm (one value: isotropic)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cuda:N or cpu")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    add_progress_argument(parser)
    parser.add_argument("--register", metavar="NAME", help="register the finished backbone under this name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=1000, metavar="STEPS", help="checkpoint interval")
    parser.add_argument("--workers", type=int, default=-1,
                        help="data-loading processes per training process (-1: 4 on CUDA, 0 on CPU)")
    parser.add_argument("--volf-variant", default="pymic", choices=VOLF_VARIANTS,
                        help="Volume Fusion variant: pymic (2024, one scan, block grid) or paper (2023, two scans, "
                        "random boxes)")
    parser.add_argument("--modality", help="recorded in the plan, e.g. MR or CT")
    parser.add_argument("--report-every", type=int, default=0, metavar="STEPS",
                        help="progress interval (0: about 500 progress events per run)")
    parser.add_argument("--stop-at", type=int, metavar="STEP",
                        help="save and stop at this step (for time-limited jobs); continue later with --resume")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--no-amp", action="store_true", help="full precision on CUDA")
    parser.set_defaults(func=run)
    return parser


def run(args):
    from sslseg.pretraining.distributed import Distributed
    from sslseg.pretraining.reporting import PretrainReporter

    # under torchrun only rank 0 reports (the other ranks' errors still reach stderr as one line)
    reporter = PretrainReporter(args.progress if Distributed().is_main else "none")

    def work():
        from sslseg.pretraining import pretrain

        result = pretrain(
            args.method, images=args.images, out=args.out, arch=getattr(args, "arch", None), steps=args.steps,
            batch=getattr(args, "batch", None), patch=getattr(args, "patch", None), spacing=args.spacing,
            device=args.device, resume=args.resume, progress=reporter, register=args.register, seed=args.seed,
            save_every=args.save_every, workers=args.workers, volf_variant=args.volf_variant,
            modality=args.modality, lr=args.lr, amp=not args.no_amp, report_every=args.report_every,
            stop_at=args.stop_at,
        )
        if args.progress != "json" and result.get("checkpoint"):
            print(f"backbone written to {result['checkpoint']}", file=sys.stderr)
        return 0

    with sigterm_cancels():
        return run_reported(reporter, work, "pretrain")
