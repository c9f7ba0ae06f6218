"""What a backbone load did, tensor by tensor, per part of the network (stem, encoder, decoder, head).

Counts are of distinct network tensors: a ResidualEncoderUNet lists some tensors under two names
(``conv.weight`` and ``all_modules.0.weight``; ``decoder.encoder.*`` repeats the encoder), which count once.

- ``total``: tensors of that part in the new network;
- ``loaded``: copied from the checkpoint (``adapted`` of them reshaped, e.g. the stem for more input channels);
- ``missing``: expected but absent from the checkpoint (left freshly initialised);
- ``mismatched``: present with another shape (left freshly initialised);
- ``skipped``: present in the checkpoint and deliberately not used (a new segmentation head; a decoder the format
  does not transfer);
- ``unexpected``: checkpoint tensors with no place in the network.

Example::

    network, report = load_backbone("ResEncL-OpenMind-S3D", num_classes=3)
    print(report.summary())
"""

from __future__ import annotations

import dataclasses

from sslseg.networks.layout import PARTS  # stem, encoder, decoder, head: each family's WeightLayout


@dataclasses.dataclass
class PartCounts:
    total: int = 0
    loaded: int = 0
    adapted: int = 0
    missing: int = 0
    mismatched: int = 0
    skipped: int = 0
    unexpected: int = 0

    @property
    def initialised(self) -> int:
        """Network tensors of this part that did not come from the checkpoint."""
        return self.total - self.loaded


@dataclasses.dataclass
class LoadReport:
    name: str
    source: str
    format: str
    spec: dict
    plan: dict
    num_classes: int
    in_channels: int
    parts: dict = dataclasses.field(default_factory=lambda: {part: PartCounts() for part in PARTS})
    examples: dict = dataclasses.field(default_factory=dict)   # kind -> a few tensor names (missing, mismatched...)
    notes: list = dataclasses.field(default_factory=list)
    quirks: dict = dataclasses.field(default_factory=dict)
    parameters: int = 0
    sha256: str = None
    trainer: str = None

    # convenience views ------------------------------------------------------------------------------------------
    def __getitem__(self, part: str) -> PartCounts:
        return self.parts[part]

    @property
    def stem(self) -> PartCounts:
        return self.parts["stem"]

    @property
    def encoder(self) -> PartCounts:
        return self.parts["encoder"]

    @property
    def decoder(self) -> PartCounts:
        return self.parts["decoder"]

    @property
    def head(self) -> PartCounts:
        return self.parts["head"]

    def encoder_fraction(self) -> float:
        """Share of stem + encoder tensors that came from the checkpoint."""
        total = self.stem.total + self.encoder.total
        return (self.stem.loaded + self.encoder.loaded) / total if total else 0.0

    def note_example(self, kind: str, key: str, limit: int = 5):
        names = self.examples.setdefault(kind, [])
        if len(names) < limit:
            names.append(key)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "format": self.format,
            "spec": self.spec,
            "plan": self.plan,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "parameters": self.parameters,
            "sha256": self.sha256,
            "trainer": self.trainer,
            "parts": {part: dict(dataclasses.asdict(counts), initialised=counts.initialised)
                      for part, counts in self.parts.items()},
            "encoder_fraction": round(self.encoder_fraction(), 6),
            "quirks": self.quirks,
            "examples": self.examples,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        plan = self.plan or {}
        lines = [
            f"backbone {self.name} ({self.format}, {plan.get('method') or 'unknown method'}, "
            f"{self.spec.get('name')}, {self.parameters / 1e6:.1f} M parameters)",
            f"  source: {self.source}",
            f"  network: {self.in_channels} input channel(s), {self.num_classes} classes",
            "  part      total  loaded  adapted  missing  mismatched  skipped  unexpected",
        ]
        for part in PARTS:
            c = self.parts[part]
            lines.append(f"  {part:<8} {c.total:>6} {c.loaded:>7} {c.adapted:>8} {c.missing:>8} {c.mismatched:>11} "
                         f"{c.skipped:>8} {c.unexpected:>11}")
        lines.append(f"  encoder (with stem) loaded: {100 * self.encoder_fraction():.1f} %")
        for kind, names in sorted(self.examples.items()):
            lines.append(f"  e.g. {kind}: {', '.join(names)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        if plan:
            lines.append(f"  expected input: spacing {plan.get('spacing')} mm (x, y, z), normalisation "
                         f"{plan.get('normalization')}, patch {plan.get('patch_size')} (z, y, x), "
                         f"{plan.get('in_channels')} pretraining channel(s), modality {plan.get('modality')}")
        return "\n".join(lines)
