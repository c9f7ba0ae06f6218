"""The plan of a fine-tuning run, from the training data: target spacing, intensity normalisation, patch, batch and,
for a network built from scratch, its per-axis strides and kernels. After nnU-Net v2's experiment planning (Isensee
et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation", Nature Methods
2021; nnunetv2/experiment_planning), with a compute budget per preset.

- spacing: a fine-tuned model's own; a backbone's pretraining spacing; else the median of the training cases, except
  along a thick-slice axis (more than 3x coarser than the others AND fewer than a third as many voxels as the
  smallest other axis), which takes the 10th percentile of its spacings, never finer than the other axes (little
  interpolation across slices: nnU-Net's anisotropy rule). The ``cpu`` preset may then coarsen the spacing (at most
  ``max_coarsening`` times, the finest axes first) until a patch within its budget holds as many voxels as the
  median labelled region (the bounding box of a case's labels; with the labels unknown, ``min_coverage`` of the
  median case): a patch that sees a fraction of an organ learns little in 15 minutes, a small structure keeps its
  resolution, and predictions are resampled back onto every input's own grid anyway (nnU-Net's low-resolution
  configuration follows the same reasoning).
- normalisation: a fine-tuned model's own (its weights expect it); a backbone's (nnssl's fine-tuning z-scores every
  channel, MIS-FM's CT backbones clip to [-1000, 1000] HU and scale to [-1, 1]); else CT clipping for CT data and
  per-case z-score otherwise.
- network (from scratch): pooling along an axis only while its current spacing is less than 2x the finest current
  spacing and it keeps at least 4 voxels at the bottleneck; kernels 1 along an axis still 2x coarser than the finest
  (1x3x3 in the early stages of thick-slice data), 3 from then on, 3x3x3 at the bottleneck; as many stages as the
  patch allows, at most the preset's network's, whose widths and blocks it keeps (``resenc.planned_spec``).
- patch: the median case at the target spacing, shrunk one stride at a time along the axis that is largest
  relative to the median case (a thick-slice axis only once its extent in mm exceeds the others': all slices
  first) until one sample costs no more than the preset's budget, each axis a multiple of its total stride. The
  budget is the cost of the preset's ``budget_patch`` on its named network (``resenc.step_cost``): a planned
  network with cheap in-plane kernels may take a larger patch. A fixed network (a backbone, ``--init-model``, an
  explicit ``arch``) keeps its strides; its patch is held to the budget's voxel count and the backbone's
  recommended patch.
- batch: the budget left by the patch (at least 2, at most what covers 5 % of the training voxels, nnU-Net's cap)
  for a planned network; the recipe's batch (2) for a fixed one; an explicit ``batch_size`` always wins.
- configuration (``choose_configuration``, ``config="auto"``): slice-wise (2D) where the data is thick-slice (the
  spacing rule's thick axis) and the 3D plan's patch sees at most a quarter of each slice, else 3D; "2d" and "3d"
  choose. nnU-Net plans a 2D configuration beside the 3D one for the same reason: a 3D patch within the budget may
  see every thick slice but a small part of each. The 2D plan
  (``slice_plan``) keeps the 3D plan's spacing and normalisation, sees every case as one slice (``Fingerprint.
  slice_wise``), plans an in-plane network by the same rules (``SliceWiseNetwork``: the preset's widths and
  blocks, ``sslseg.networks.slicewise``) and shares the same budget per step among ``SLICE_BATCH`` slices. A fixed
  network (backbone, ``--init-model``, ``arch``) keeps its own configuration.

Example::

    plan = make_plan(geometries, modality="MR", in_channels=1, preset=get_preset("cpu"), config="auto")
    plan.configuration, plan.patch_size, plan.spec["config"]["strides"], plan.reasons
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from sslseg.errors import UserError
from sslseg.preprocessing import DEFAULT_CT_RANGE, Preprocessor

ANISOTROPY_RATIO = 3.0  # nnU-Net's ANISO_THRESHOLD
MIN_BOTTLENECK = 4  # voxels along a pooled axis at the bottleneck (nnU-Net's minimal feature map edge)
COARSEN_STEP = 1.03  # spacing increase per step when coarsening (nnU-Net's low-resolution planning)
FOREGROUND_BOX_SHARE = 1.0  # coarsening aims at a patch of as many voxels as the median labelled region
BATCH_DATA_FRACTION = 0.05  # a batch covers at most this share of the training voxels (nnU-Net)
MIN_BATCH = 2
MAX_SHRINK_STEPS = 10_000  # a bound on the patch search (it ends long before: every step shrinks an axis)
AXES = "zyx"  # array axes
# The slice axis's spacing while a slice-wise plan is made: so thick that the planning rules (minimum patch,
# shrinking, pooling, kernels, coarsening) never touch it, whatever the data's own slice spacing.
SLICE_PLANNING_MM = 1e4
SLICE_SHARE = 0.25  # auto: 2D when a 3D patch sees at most this share of each thick slice
SLICE_EXTRA_STAGES = 2  # a slice-wise network may have this many more stages than the preset's (cheap in 2D)
SLICE_BATCH = 8  # slices per step a slice-wise plan aims at (measured on the cardiac task, docs/benchmarks.md)


@dataclass(frozen=True)
class Fingerprint:
    """The training cases' spacings and shapes, both in array order [z, y, x], and, when the labels are known, the
    extent in mm of each case's labelled region (its bounding box)."""
    spacings: np.ndarray  # [n, 3] mm
    shapes: np.ndarray  # [n, 3] voxels
    boxes: np.ndarray | None = None  # [m, 3] mm, the cases with a labelled voxel

    @classmethod
    def of(cls, geometries, boxes=None) -> "Fingerprint":
        if not geometries:
            raise UserError("no training cases to plan from")
        boxes = [b for b in boxes or () if b is not None]
        return cls(np.asarray([list(reversed(g.spacing)) for g in geometries], float),
                   np.asarray([list(g.shape) for g in geometries], float),
                   np.asarray(boxes, float) if boxes else None)

    def slice_wise(self, axis: int, spacing: float) -> "Fingerprint":
        """Every case as one slice along ``axis`` of ``spacing`` mm (a slice-wise network's view of the data)."""
        spacings, shapes = self.spacings.copy(), self.shapes.copy()
        spacings[:, axis], shapes[:, axis] = spacing, 1.0
        boxes = None if self.boxes is None else self.boxes.copy()
        if boxes is not None:
            boxes[:, axis] = spacing
        return Fingerprint(spacings, shapes, boxes)

    def median_shape(self, spacing) -> np.ndarray:
        """The median case's shape [z, y, x] (voxels, not rounded) at ``spacing`` [z, y, x]."""
        return np.median(self.shapes * self.spacings / np.asarray(spacing, float), axis=0)

    def median_box(self, spacing) -> np.ndarray | None:
        """The median labelled region [z, y, x] in voxels at ``spacing``, at most the median case; None unknown."""
        if self.boxes is None:
            return None
        return np.minimum(np.median(self.boxes, axis=0) / np.asarray(spacing, float), self.median_shape(spacing))


def foreground_box(label: np.ndarray, spacing_zyx) -> list | None:
    """The extent [z, y, x] in mm of the labelled voxels (label > 0) of one case; None when it has none."""
    labelled, extents = label > 0, []
    for axis in range(3):
        present = np.flatnonzero(np.any(labelled, axis=tuple(a for a in range(3) if a != axis)))
        if not present.size:
            return None
        extents.append(float(present[-1] - present[0] + 1) * float(spacing_zyx[axis]))
    return extents


@dataclass(frozen=True)
class Topology:
    """Per-stage kernels and strides [z, y, x] of a planned network, stage 0 first."""
    kernel_sizes: list
    strides: list

    @property
    def stride(self) -> list:
        return [math.prod(s[axis] for s in self.strides) for axis in range(3)]


@dataclass(frozen=True)
class Plan:
    spacing: list  # [x, y, z] mm
    normalization: str  # "zscore" or "ct"
    in_channels: int
    patch_size: list  # [z, y, x] voxels
    batch_size: int
    stride: list  # the network's total stride per axis [z, y, x]
    intensity_range: list = tuple(DEFAULT_CT_RANGE)  # CT clipping window
    spec: dict | None = None  # the planned network (from scratch); None: the network is fixed
    anisotropy_axis: int | None = None  # array axis (0 = z) whose spacing is > 3x the others', or None
    reasons: tuple = field(default_factory=tuple)  # what the plan chose and why, one short line each
    configuration: str = "3d"  # "3d", or "2d": slice-wise along ``slice_axis`` (sslseg.networks.slicewise)
    slice_axis: int | None = None  # array axis a 2D configuration slices along

    def preprocessor(self) -> Preprocessor:
        return Preprocessor(spacing=list(self.spacing), normalization=self.normalization,
                            in_channels=self.in_channels, intensity_range=list(self.intensity_range))

    def to_dict(self) -> dict:
        """The model.json ``plan`` entry."""
        config = (self.spec or {}).get("config", {})
        return {"spacing": [round(float(s), 5) for s in self.spacing], "patch_size": list(self.patch_size),
                "batch_size": self.batch_size, "normalization": self.normalization, "stride": list(self.stride),
                "strides": config.get("strides"), "kernel_sizes": config.get("kernel_sizes"),
                "anisotropy_axis": None if self.anisotropy_axis is None else AXES[self.anisotropy_axis],
                "configuration": self.configuration,
                "slice_axis": None if self.slice_axis is None else AXES[self.slice_axis],
                "reasons": list(self.reasons)}


CONFIGURATIONS = ("auto", "2d", "3d")


def make_plan(train_geometries, modality: str, in_channels: int, preset, stride=None, network_plan=None,
              inherited=None, patch_size=None, batch_size=None, base_arch=None, foreground_boxes=None,
              config: str = "3d") -> Plan:
    """The plan from the training cases' geometries (sslseg.imageio.Geometry) and the dataset's modality.

    ``stride``: the total stride of a fixed starting network; None plans a network from scratch, derived from
    ``base_arch`` (default: the preset's). ``network_plan``: the starting network's hints {"spacing",
    "normalization", "patch_size" or "recommended_patch_size", "slice_axis" of a slice-wise one}; ``inherited``: a
    fine-tuned model's (Preprocessor, patch) to continue from. ``patch_size``, ``batch_size``: explicit choices
    (checked against the strides). ``foreground_boxes``: each training case's ``foreground_box`` (None: coarsening
    aims at a share of the case instead). ``config``: "3d", "2d" (slice-wise) or "auto" (``choose_configuration``);
    a fixed network keeps its own."""
    fingerprint = Fingerprint.of(train_geometries, foreground_boxes)
    network_plan = network_plan or {}
    if inherited is not None:
        return inherited_plan(inherited, in_channels, stride, preset, patch_size, batch_size,
                              network_plan.get("slice_axis"))
    if stride is not None:
        if config == "2d":
            raise UserError("--config 2d needs a network planned from the data; a backbone, --init-model or --arch "
                            "keeps its own 3D configuration")
        reasons = ["configuration 3d: the starting network is a 3D network"]
        return volume_plan(fingerprint, modality, in_channels, preset, stride, network_plan, patch_size, batch_size,
                           base_arch, reasons)
    volume = None if config == "2d" else volume_plan(fingerprint, modality, in_channels, preset, None, network_plan,
                                                      patch_size, batch_size, base_arch, [])
    chosen, axis, reason = choose_configuration(config, fingerprint, volume)
    if chosen == "2d":
        return slice_plan(fingerprint, modality, in_channels, preset, axis, patch_size, batch_size, base_arch,
                          [reason])
    return dataclasses.replace(volume, reasons=(reason, *volume.reasons))


def choose_configuration(config: str, fingerprint: Fingerprint, volume: Plan | None = None) -> tuple:
    """(configuration, slice axis or None, reason). "auto": slice-wise (2D) when the data is thick-slice (the
    thick-slice rule of ``choose_spacing``, nnU-Net's anisotropy rule) and the 3D plan's patch (``volume``) sees at
    most ``SLICE_SHARE`` of each slice; else 3D. Measured (docs/benchmarks.md): on thick slices whose 3D patch holds
    the whole slice (hippocampus at 5 mm) 3D is better; on cine-cardiac-like stacks, where it holds a small part of
    each slice, the slice-wise network is."""
    if config not in CONFIGURATIONS:
        raise UserError(f"--config must be one of {', '.join(CONFIGURATIONS)} (got {config!r})")
    axis = thick_slice_axis(fingerprint)
    if config == "3d":
        return "3d", None, "configuration 3d: as asked"
    if config == "2d":
        axis = 0 if axis is None else axis
        return "2d", axis, f"configuration 2d: as asked (slice-wise along {AXES[axis]})"
    if axis is None:
        return "3d", None, "configuration 3d (auto): no thick-slice axis"
    spacing = np.median(fingerprint.spacings, axis=0)
    slices = float(np.median(fingerprint.shapes[:, axis]))
    thick = (f"thick slices along {AXES[axis]} ({slices:.0f} slices of {spacing[axis]:.3g} mm, in-plane "
             f"{_in_plane_text(spacing, axis)} mm)")
    median = fingerprint.median_shape(list(reversed(volume.spacing)))
    seen = [min(p, m) for a, (p, m) in enumerate(zip(volume.patch_size, median)) if a != axis]
    share = math.prod(seen) / math.prod(m for a, m in enumerate(median) if a != axis)
    sight = (f"a 3D patch within the budget sees {100 * share:.0f} % of each slice "
             f"({' x '.join(str(p) for a, p in enumerate(volume.patch_size) if a != axis)} of "
             f"{' x '.join(f'{m:.0f}' for a, m in enumerate(median) if a != axis)})")
    if share > SLICE_SHARE:
        return "3d", None, f"configuration 3d (auto): {thick}, but {sight} (--config 2d overrides)"
    return "2d", axis, (f"configuration 2d (auto): {thick} and {sight}: slice-wise, larger in-plane patches "
                        f"(--config 3d overrides)")


def _in_plane_text(spacing, axis) -> str:
    return " x ".join(f"{float(s):.3g}" for a, s in enumerate(spacing) if a != axis)


def volume_plan(fingerprint, modality, in_channels, preset, stride, network_plan, patch_size, batch_size, base_arch,
                reasons) -> Plan:
    """The 3D plan: spacing, normalisation, patch, batch and (``stride`` None) the network's topology."""
    normalization, intensity_range = choose_normalization(modality, network_plan, reasons)
    spacing = choose_spacing(fingerprint, network_plan.get("spacing"), reasons)
    sizer = (PlannedNetwork(base_arch or preset.arch, preset, in_channels) if stride is None
             else FixedNetwork(stride, preset, network_plan.get("patch_size")
                               or network_plan.get("recommended_patch_size")))
    if patch_size or preset.patch_size:
        patch, topology = sizer.explicit([int(p) for p in patch_size or preset.patch_size], spacing)
        source = "as asked" if patch_size else "the preset's"
        reasons.append(f"patch {patch}: {source}")
    else:
        coarsen = bool(preset.min_coverage) and not network_plan.get("spacing")
        spacing, patch, topology = fit_patch(fingerprint, spacing, sizer, preset, coarsen, reasons)
    batch = choose_batch(fingerprint, spacing, patch, sizer, batch_size, reasons)
    spec = sizer.spec(topology)
    return Plan(spacing=[float(s) for s in reversed(spacing)], normalization=normalization,
                in_channels=int(in_channels), patch_size=[int(p) for p in patch], batch_size=batch,
                stride=list(sizer.stride_of(topology)), intensity_range=list(intensity_range), spec=spec,
                anisotropy_axis=thick_axis(spacing), reasons=tuple(reasons))


def slice_plan(fingerprint, modality, in_channels, preset, axis, patch_size, batch_size, base_arch, reasons) -> Plan:
    """The slice-wise (2D) plan along ``axis``: the 3D plan's spacing and normalisation; an in-plane patch and a
    batch within the same compute budget per step; a 2D network planned by the same rules (``SliceWiseNetwork``).
    Planning sees every case as one slice, of a thickness that never pools or convolves across slices."""
    normalization, intensity_range = choose_normalization(modality, {}, reasons)
    spacing = choose_spacing(fingerprint, None, reasons)
    planning = list(spacing)
    planning[axis] = SLICE_PLANNING_MM
    sizer = SliceWiseNetwork(base_arch or preset.arch, preset, in_channels, axis)
    if patch_size or preset.patch_size:
        patch, topology = sizer.explicit([int(p) for p in patch_size or preset.patch_size], planning)
        reasons.append(f"patch {patch}: {'as asked' if patch_size else 'the preset'}")
    else:
        flat = fingerprint.slice_wise(axis, SLICE_PLANNING_MM)
        planning, patch, topology = fit_patch(flat, planning, sizer, preset, bool(preset.min_coverage), reasons)
    spacing = [s if a != axis else spacing[axis] for a, s in enumerate(planning)]
    batch = choose_batch(fingerprint, spacing, patch, sizer, batch_size, reasons)
    return Plan(spacing=[float(s) for s in reversed(spacing)], normalization=normalization,
                in_channels=int(in_channels), patch_size=[int(p) for p in patch], batch_size=batch,
                stride=list(sizer.stride_of(topology)), intensity_range=list(intensity_range),
                spec=sizer.spec(topology), anisotropy_axis=axis, reasons=tuple(reasons), configuration="2d",
                slice_axis=axis)


def inherited_plan(inherited, in_channels, stride, preset, patch_size, batch_size, slice_axis=None) -> Plan:
    """A fine-tuned model's spacing, normalisation, patch and configuration (``slice_axis``: slice-wise; an explicit
    patch or batch still wins)."""
    preprocessor, model_patch = inherited
    spacing = [float(s) for s in preprocessor.spacing]
    patch = [int(p) for p in (patch_size or model_patch)]
    check_multiple(patch, stride)
    batch = int(batch_size or preset.batch_size)
    reasons = (f"spacing {[round(s, 3) for s in spacing]} mm, {preprocessor.normalization} normalisation and "
               f"patch {patch}: the initial model's", f"batch {batch}: {'as asked' if batch_size else 'the recipe'}")
    return Plan(spacing=spacing, normalization=preprocessor.normalization, in_channels=int(in_channels),
                patch_size=patch, batch_size=batch, stride=list(stride),
                intensity_range=list(preprocessor.intensity_range),
                anisotropy_axis=thick_axis(list(reversed(spacing))) if slice_axis is None else int(slice_axis),
                reasons=reasons, configuration="3d" if slice_axis is None else "2d",
                slice_axis=None if slice_axis is None else int(slice_axis))


# --- normalisation and spacing -------------------------------------------------------------------------------

def choose_normalization(modality: str, network_plan: dict, reasons: list):
    """(normalisation, CT window): the starting network's, else by modality."""
    wanted = network_plan.get("normalization")
    window = list(network_plan.get("intensity_range") or DEFAULT_CT_RANGE)
    if wanted in ("zscore", "ct"):
        reasons.append(f"normalisation {wanted}: the backbone's plan" +
                       (f" (clip to {window} -> [-1, 1])" if wanted == "ct" else " (per case and channel)"))
        return wanted, window
    if wanted:
        # nnssl's fine-tuning z-scores every channel whatever its pretraining plan names
        reasons.append(f"normalisation zscore: the backbone's plan names {wanted!r}, which fine-tuning does not use")
        return "zscore", list(DEFAULT_CT_RANGE)
    if modality == "CT":
        reasons.append(f"normalisation ct: CT data (clip to {list(DEFAULT_CT_RANGE)} HU -> [-1, 1])")
        return "ct", list(DEFAULT_CT_RANGE)
    reasons.append("normalisation zscore: per case and channel (not CT)")
    return "zscore", list(DEFAULT_CT_RANGE)


def choose_spacing(fingerprint: Fingerprint, network_spacing, reasons: list) -> list:
    """The target spacing [z, y, x]: the network's (its None entries from the data), else the data's."""
    spacing = np.median(fingerprint.spacings, axis=0)
    if network_spacing:
        given = list(reversed(list(network_spacing)))
        spacing = [float(g) if g is not None else float(s) for g, s in zip(given, spacing)]
        reasons.append(f"spacing {_mm(spacing)}: the backbone's pretraining spacing")
        return spacing
    median_shape = np.median(fingerprint.shapes, axis=0)
    coarse = thick_slice_axis(fingerprint)
    if coarse is not None:
        others = [a for a in range(3) if a != coarse]
        tenth = float(np.percentile(fingerprint.spacings[:, coarse], 10))
        spacing[coarse] = max(tenth, float(max(spacing[others])))
        reasons.append(f"spacing {_mm(spacing)}: median of {len(fingerprint.shapes)} case(s); {AXES[coarse]} has "
                       f"thick slices (about {median_shape[coarse]:.0f}), kept near its own spacing (10th percentile)")
    else:
        reasons.append(f"spacing {_mm(spacing)}: median of {len(fingerprint.shapes)} case(s)")
    return [float(s) for s in spacing]


def thick_slice_axis(fingerprint: Fingerprint) -> int | None:
    """The axis of thick slices: its median spacing over 3x every other's and fewer than a third as many slices
    as the smallest other axis has voxels (nnU-Net's anisotropy rule), or None."""
    spacing = np.median(fingerprint.spacings, axis=0)
    median_shape = np.median(fingerprint.shapes, axis=0)
    coarse = int(np.argmax(spacing))
    others = [a for a in range(3) if a != coarse]
    if spacing[coarse] > ANISOTROPY_RATIO * max(spacing[others]) and \
            median_shape[coarse] * ANISOTROPY_RATIO < min(median_shape[others]):
        return coarse
    return None


def thick_axis(spacing) -> int | None:
    """The array axis whose spacing is more than 3x every other's ([z, y, x] spacing), or None."""
    spacing = [float(s) for s in spacing]
    coarse = int(np.argmax(spacing))
    others = [s for a, s in enumerate(spacing) if a != coarse]
    return coarse if spacing[coarse] > ANISOTROPY_RATIO * max(others) else None


def _mm(spacing) -> str:
    """[z, y, x] spacing as the [x, y, z] mm text used everywhere else (a slice-wise plan's slice axis: "slice")."""
    shown = [round(float(s), 3) if s < SLICE_PLANNING_MM else "slice" for s in reversed(list(spacing))]
    return f"{shown} mm (x, y, z)"


# --- network topology ----------------------------------------------------------------------------------------

def plan_topology(spacing, patch, max_stages: int) -> Topology:
    """Per-stage kernels and strides for ``patch`` at ``spacing`` (both [z, y, x]), nnU-Net's rules (module
    docstring); at most ``max_stages`` stages."""
    current, size = [float(s) for s in spacing], [int(p) for p in patch]
    kernel, kernels, strides = [1, 1, 1], [], [[1, 1, 1]]
    while len(strides) < max_stages:
        able = [a for a in range(3) if size[a] >= 2 * MIN_BOTTLENECK]
        if not able:
            break
        finest = min(current[a] for a in able)
        pooled = [a for a in able if current[a] < 2 * finest]
        kernel = [3 if kernel[a] == 3 or current[a] < 2 * min(current) else 1 for a in range(3)]
        kernels.append(kernel)
        strides.append([2 if a in pooled else 1 for a in range(3)])
        for a in pooled:
            current[a] *= 2
            size[a] = math.ceil(size[a] / 2)
    return Topology(kernels + [[3, 3, 3]], strides)


def round_up(patch, stride) -> list:
    return [int(math.ceil(p / s) * s) for p, s in zip(patch, stride)]


def check_multiple(patch, stride):
    if any(p % s for p, s in zip(patch, stride)):
        raise UserError(f"patch size {list(patch)} must be a multiple of the network's total stride {list(stride)}")


class PlannedNetwork:
    """Sizes patches for a network planned from the data (from scratch): strides and kernels follow the patch,
    the cost is held to the preset's budget."""
    planned = True

    def __init__(self, base_arch: str, preset, in_channels: int):
        from sslseg.networks.resenc import architecture_kwargs, step_cost

        self.base, self.in_channels = base_arch, int(in_channels)
        self.max_stages = architecture_kwargs(base_arch)["n_stages"]
        reference = architecture_kwargs(preset.arch)
        self.budget = step_cost(reference, preset.budget_patch, self.in_channels)
        self.budget_batch = int(preset.batch_size)
        self.budget_text = f"{'x'.join(map(str, preset.budget_patch))} on {preset.arch}"

    def fit(self, spacing, patch) -> tuple:
        """(patch rounded up to its network's strides, topology): rounding may allow one more pooling."""
        topology = plan_topology(spacing, patch, self.max_stages)
        for _ in range(self.max_stages):  # each round adds a pooling, at most one per stage
            rounded = round_up(patch, topology.stride)
            again = plan_topology(spacing, rounded, self.max_stages)
            if again == topology:
                break
            patch, topology = rounded, again
        return round_up(patch, topology.stride), topology

    def cost(self, patch, topology) -> float:
        from sslseg.networks.resenc import step_cost

        return step_cost(self.spec(topology)["config"], patch, self.in_channels)

    def explicit(self, patch, spacing) -> tuple:
        topology = plan_topology(spacing, patch, self.max_stages)
        check_multiple(patch, topology.stride)
        return patch, topology

    def spec(self, topology) -> dict:
        from sslseg.networks.resenc import planned_spec

        return planned_spec(self.base, topology.kernel_sizes, topology.strides)

    @staticmethod
    def stride_of(topology) -> list:
        return topology.stride


class SliceWiseNetwork(PlannedNetwork):
    """Sizes in-plane patches for a slice-wise (2D) network of the preset's size: the same budget as the 3D plan;
    one slice along ``axis`` (kernel and stride 1 there, ``sslseg.networks.slicewise``)."""

    def __init__(self, base_arch: str, preset, in_channels: int, axis: int):
        super().__init__(base_arch, preset, in_channels)
        self.axis = int(axis)
        self.max_stages += SLICE_EXTRA_STAGES
        # the step's budget shared by SLICE_BATCH samples: a slice costs little, and a batch of many patches
        # around the structure sees far more of it per step than two whole slices of mostly background
        total = self.budget * self.budget_batch
        self.budget_batch = max(self.budget_batch, SLICE_BATCH)
        self.budget = total / self.budget_batch
        self.budget_text = (f"{'x'.join(map(str, preset.budget_patch))} x {preset.batch_size} on {preset.arch} "
                            f"shared by {self.budget_batch} slices,")

    def topology(self, spacing, patch) -> Topology:
        spacing = [s if a != self.axis else SLICE_PLANNING_MM for a, s in enumerate(spacing)]
        patch = [p if a != self.axis else 1 for a, p in enumerate(patch)]
        planned = plan_topology(spacing, patch, self.max_stages)
        flat = [[k if a != self.axis else 1 for a, k in enumerate(kernel)] for kernel in planned.kernel_sizes]
        return Topology(flat, planned.strides)

    def fit(self, spacing, patch) -> tuple:
        patch = [p if a != self.axis else 1 for a, p in enumerate(patch)]
        topology = self.topology(spacing, patch)
        for _ in range(self.max_stages):
            rounded = round_up(patch, topology.stride)
            again = self.topology(spacing, rounded)
            if again == topology:
                break
            patch, topology = rounded, again
        return round_up(patch, topology.stride), topology

    def explicit(self, patch, spacing) -> tuple:
        if patch[self.axis] != 1:
            raise UserError(f"a 2D (slice-wise) configuration's patch is one slice thick: give 1 along "
                            f"{AXES[self.axis]} (got {list(patch)}, z y x)")
        topology = self.topology(spacing, patch)
        check_multiple(patch, topology.stride)
        return patch, topology

    def spec(self, topology) -> dict:
        from sslseg.networks.resenc import planned_spec

        return planned_spec(self.base, topology.kernel_sizes, topology.strides, slice_axis=self.axis)


class FixedNetwork:
    """Sizes patches for a fixed network: multiples of its stride, at most the budget's voxels and the network's
    recommended patch."""
    planned = False

    def __init__(self, stride, preset, recommended=None):
        self.stride = [int(s) for s in stride]
        self.budget = float(math.prod(preset.budget_patch))
        self.budget_text = f"{'x'.join(map(str, preset.budget_patch))} voxels"
        self.cap = [max(s, (int(r) // s) * s) for r, s in zip(recommended, self.stride)] if recommended else None

    def fit(self, spacing, patch) -> tuple:
        patch = [max(s, p) for p, s in zip(round_up(patch, self.stride), self.stride)]
        return ([min(p, c) for p, c in zip(patch, self.cap)] if self.cap else patch), None

    def cost(self, patch, topology) -> float:
        return float(math.prod(patch))

    def explicit(self, patch, spacing) -> tuple:
        check_multiple(patch, self.stride)
        return patch, None

    def spec(self, topology):
        return None

    def stride_of(self, topology) -> list:
        return self.stride


# --- patch and batch -----------------------------------------------------------------------------------------

def minimum_patch(spacing) -> list:
    """Axes within 2x of the finest spacing need room for one pooling; a coarse axis may be a single slice."""
    finest = min(spacing)
    return [2 * MIN_BOTTLENECK if s < 2 * finest else 1 for s in spacing]


def shrink_axis(patch, median, spacing, stride, minimum) -> int | None:
    """The axis to shrink next: the largest relative to ``median``; a thick-slice axis only once its extent
    in mm exceeds every other axis's (all slices first). None: none can shrink."""
    thick = thick_axis(spacing)
    extent = [p * s for p, s in zip(patch, spacing)]
    candidates = [a for a in range(3) if patch[a] - stride[a] >= minimum[a] and
                  (a != thick or extent[a] > max(e for b, e in enumerate(extent) if b != a))]
    if not candidates:
        return None
    return max(candidates, key=lambda a: (patch[a] / max(median[a], 1e-6), patch[a]))


def patch_within_budget(sizer, spacing, median, shape_of=None) -> tuple:
    """(patch, topology): the median case, shrunk until one sample costs no more than the budget, towards the
    aspect of ``shape_of`` (the median labelled region; default the median case)."""
    shape_of = median if shape_of is None else shape_of
    minimum = minimum_patch(spacing)
    patch = [max(int(math.ceil(m)), low) for m, low in zip(median, minimum)]
    for _ in range(MAX_SHRINK_STEPS):
        patch, topology = sizer.fit(spacing, patch)
        if sizer.cost(patch, topology) <= sizer.budget:
            return patch, topology
        stride = sizer.stride_of(topology)
        axis = shrink_axis(patch, shape_of, spacing, stride, minimum)
        if axis is None:
            return patch, topology
        patch = list(patch)
        patch[axis] -= stride[axis]
    return patch, topology


def fit_patch(fingerprint, spacing, sizer, preset, coarsen: bool, reasons: list) -> tuple:
    """(spacing, patch, topology): the patch within the budget; with ``coarsen`` the spacing grows (finest axes
    first, at most ``preset.max_coarsening`` times) until the patch holds ``coverage_target`` voxels."""
    start = list(spacing)
    median = fingerprint.median_shape(spacing)
    patch, topology = patch_within_budget(sizer, spacing, median, fingerprint.median_box(spacing))
    while coarsen and math.prod(patch) < coverage_target(fingerprint, spacing, preset):
        coarsest = max(spacing)
        grow = [s * COARSEN_STEP if coarsest / s > 2 else s for s in spacing]
        grow = grow if grow != spacing else [s * COARSEN_STEP for s in spacing]
        if max(g / s0 for g, s0 in zip(grow, start)) > preset.max_coarsening:
            break
        spacing, median = grow, fingerprint.median_shape(grow)
        patch, topology = patch_within_budget(sizer, spacing, median, fingerprint.median_box(spacing))
    if spacing != start:
        reasons.append(f"spacing {_mm(spacing)}: coarsened {max(s / s0 for s, s0 in zip(spacing, start)):.2f}x so "
                       f"that a patch within the budget holds {coverage_text(fingerprint, spacing, patch)} "
                       f"(predictions are resampled back to each image's grid)")
    covered = [round(100 * min(1.0, p / m)) for p, m in zip(patch, median)]
    reasons.append(f"patch {patch} (z, y, x): the median case {[int(round(m)) for m in median]} at that spacing "
                   f"({covered} % per axis) within the budget of {sizer.budget_text} per sample")
    if topology is not None:
        reasons.append(f"network: strides {topology.strides[1:]}, kernels {topology.kernel_sizes} (pooling an axis "
                       f"while within 2x of the finest spacing, kernel 1 along an axis still 2x coarser)")
    return spacing, patch, topology


def coverage_target(fingerprint, spacing, preset) -> float:
    """The voxels a patch should hold at ``spacing``: as many as the median labelled region (a patch that sees a
    fraction of an organ learns little in minutes; a small structure needs no coarsening), else, with the labels
    unknown, ``preset.min_coverage`` of the median case."""
    box = fingerprint.median_box(spacing)
    if box is not None:
        return FOREGROUND_BOX_SHARE * math.prod(box)
    return preset.min_coverage * math.prod(fingerprint.median_shape(spacing))


def coverage_text(fingerprint, spacing, patch) -> str:
    box = fingerprint.median_box(spacing)
    if box is None:
        return f"{100 * math.prod(patch) / math.prod(fingerprint.median_shape(spacing)):.0f} % of the median case"
    mm = [round(float(b * s)) for b, s in zip(box, spacing)]
    return (f"{100 * math.prod(patch) / math.prod(box):.0f} % of the voxels of the median labelled region "
            f"({mm[2]} x {mm[1]} x {mm[0]} mm, x y z)")


def choose_batch(fingerprint, spacing, patch, sizer, batch_size, reasons: list) -> int:
    """An explicit batch; the recipe's (2) for a fixed network; else what the budget leaves, nnU-Net's caps."""
    if batch_size:
        reasons.append(f"batch {int(batch_size)}: as asked")
        return int(batch_size)
    if not sizer.planned:
        reasons.append(f"batch {MIN_BATCH}: the fine-tuning recipe's")
        return MIN_BATCH
    _, topology = sizer.fit(spacing, patch)
    by_budget = int(sizer.budget * sizer.budget_batch // sizer.cost(patch, topology))
    training_voxels = math.prod(fingerprint.median_shape(spacing)) * len(fingerprint.shapes)
    by_data = int(round(BATCH_DATA_FRACTION * training_voxels / math.prod(patch)))
    batch = max(MIN_BATCH, min(by_budget, by_data))
    reasons.append(f"batch {batch}: what the budget allows ({by_budget}), at most 5 % of the training voxels "
                   f"({by_data}), at least {MIN_BATCH}")
    return batch
