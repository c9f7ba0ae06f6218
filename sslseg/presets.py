"""Fine-tuning presets: how long, how big, which optimiser.

- ``paper``: faithful to Wald et al. ("Revisiting MAE pre-training for 3D medical image segmentation", CVPR 2025):
  ResEnc-L, 150k steps with 12.5k + 12.5k warm-up steps, SGD Nesterov momentum 0.99, weight decay 3e-5, max lr 1e-3,
  batch 2 (nnU-Net's default, Isensee et al., Nature Methods 2021). Days on one GPU.
- ``standard``: the same recipe, shortened to 8k steps (warm-ups keep the paper's 1/12 fractions). Tens of minutes
  on a GPU.
- ``quick``: the same recipe at 2k steps, for interactive use (a few minutes on a GPU).
- ``cpu``: for users without a GPU: a small ResEnc network (``ResEncXS-cpu``, the cost of a DynUNet 16-128; the
  larger ``ResEncS-cpu`` is 3-4 times dearer per step, which a 15-minute run cannot afford), the compute of a
  32x48x32 patch on it per sample (measured as the sweet spot on MSD hippocampus; the plan shapes it to the data and
  may coarsen the spacing of large volumes, see sslseg.finetuning.planning), and AdamW with a short poly schedule
  (a plain MONAI script reached Dice 0.845 with AdamW but 0.515 with SGD momentum 0.99 in the same time on 2
  cores); the three phases are kept. Default time limit 15 minutes.
- ``test``: the tiny ``ResEncT-test`` network for the test suite only.

The compute budget of a preset is ``budget_patch`` on its network ``arch``, per sample, at ``batch_size``: the plan
(sslseg.finetuning.planning) chooses the patch, the batch and, from scratch, the network's strides and kernels
within it; the GPU presets' budget is ResEnc-L's recommended 160^3 patch.

With ``--backbone none`` every preset trains from scratch with nnU-Net's defaults instead: no warm-ups, SGD max lr
1e-2 (``cpu``: AdamW at its own ``scratch_lr``). With a backbone, or a fine-tuned model to continue from
(``--init-model``), the network comes from there and the preset's ``arch`` is ignored (the ``cpu`` preset then warns
when the network is large).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

from sslseg.errors import UserError


@dataclass
class Preset:
    name: str
    description: str
    arch: str  # network for --backbone none: a name in sslseg.networks
    steps: int
    decoder_warmup: float  # fraction of the steps
    full_warmup: float
    max_lr: float = 1e-3  # fine-tuning from a backbone
    scratch_lr: float = 1e-2  # --backbone none
    optimizer: str = "sgd"  # "sgd" (Nesterov) or "adamw"
    momentum: float = 0.99
    weight_decay: float = 3e-5
    batch_size: int = 2
    patch_size: list | None = None  # [z, y, x]: a fixed patch; None: planned from the data within the budget
    budget_patch: list = field(default_factory=lambda: [160, 160, 160])  # [z, y, x] on ``arch``: compute per sample
    # None: never coarsen; else coarser spacing until a patch holds the median labelled region (planning.py) or,
    # with the labels unknown, this share of the median case (0.125: about half its extent per axis)
    min_coverage: float | None = None
    max_coarsening: float = 1.0  # ... at most this many times the planned spacing
    val_every: int = 250
    foreground_oversampling: float = 0.33  # the last round(batch * 0.33) samples of a batch (nnU-Net's rule)
    grad_clip: float = 12.0
    time_limit: float | None = None  # seconds; None: run all steps
    augment: dict = field(default_factory=lambda: {"rotate_deg": 30.0, "rotate_p": 0.2, "scale": [0.7, 1.4],
                                                   "scale_p": 0.2, "mirror_p": 0.5, "intensity_p": 0.15})

    def to_dict(self) -> dict:
        return asdict(self)


_PAPER_WARMUP = 12_500 / 150_000


PRESETS = {
    "paper": Preset("paper", "Wald et al.'s published schedule: ResEnc-L, 12.5k + 12.5k warm-up steps, 150k steps",
                    arch="ResEncL", steps=150_000, decoder_warmup=_PAPER_WARMUP, full_warmup=_PAPER_WARMUP,
                    val_every=5000),
    "standard": Preset("standard", "the paper's recipe shortened to 8k steps (GPU)", arch="ResEncL", steps=8000,
                       decoder_warmup=_PAPER_WARMUP, full_warmup=_PAPER_WARMUP, val_every=500),
    "quick": Preset("quick", "the paper's recipe at 2k steps for interactive use (GPU, minutes)", arch="ResEncL",
                    steps=2000, decoder_warmup=_PAPER_WARMUP, full_warmup=_PAPER_WARMUP, val_every=250),
    "cpu": Preset("cpu", "small ResEnc network planned from the data, AdamW; for 2-8 CPU cores (15 minutes)",
                  arch="ResEncXS-cpu", steps=900, decoder_warmup=0.04, full_warmup=0.04, max_lr=2e-3, scratch_lr=3e-3,
                  optimizer="adamw", weight_decay=1e-4, batch_size=2, budget_patch=[32, 48, 32], val_every=150,
                  min_coverage=0.125, max_coarsening=3.0, time_limit=900.0,
                  augment={"rotate_deg": 20.0, "rotate_p": 0.1, "scale": [0.8, 1.25], "scale_p": 0.1, "mirror_p": 0.5,
                           "intensity_p": 0.1}),
    "test": Preset("test", "tiny network for the test suite", arch="ResEncT-test", steps=20, decoder_warmup=0.25,
                   full_warmup=0.25, max_lr=1e-2, scratch_lr=1e-2, optimizer="adamw", weight_decay=1e-4,
                   batch_size=2, budget_patch=[16, 24, 16], val_every=10),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def default_preset(device_type: str) -> str:
    return "quick" if device_type == "cuda" else "cpu"
