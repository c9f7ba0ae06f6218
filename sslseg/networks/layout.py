"""Which state_dict names make up which part of a network: stem, encoder, decoder, head.

Each network family declares its ``WeightLayout`` once, next to its code, as dynamic-network-architectures'
architectures declare ``key_to_stem``, ``key_to_encoder`` and ``keys_to_in_proj``. Freezing the encoder
(``sslseg.networks.split_parameters``) and checkpoint loading with its per-part report (``sslseg.backbones``) read
the parts from here, so the two cannot disagree.
"""

from __future__ import annotations

import dataclasses

PARTS = ("stem", "encoder", "decoder", "head")


def _under(key: str, module: str) -> bool:
    return key == module or key.startswith(module + ".")


@dataclasses.dataclass(frozen=True)
class WeightLayout:
    """Module paths (state_dict name prefixes without the trailing dot) of each part of one family's networks.

    ``in_proj``: the input projection's convolutions (their weights are adapted to more input channels).
    ``aliases``: ``(alias, module)`` pairs for a module the network lists a second time under another path (the
    decoder of a ResidualEncoderUNet keeps a reference to the encoder: ``decoder.encoder.*``)."""

    stem: tuple
    encoder: tuple
    decoder: tuple
    head: tuple
    in_proj: tuple = ()
    aliases: tuple = ()

    def canonical(self, key: str) -> str:
        """``key`` with an alias path replaced by the module's own path."""
        for alias, module in self.aliases:
            if _under(key, alias):
                return module + key[len(alias):]
        return key

    def matching_parts(self, key: str) -> list:
        """Every part whose modules hold ``key`` (a well-formed layout gives at most one)."""
        key = self.canonical(key)
        return [part for part in PARTS if any(_under(key, module) for module in getattr(self, part))]

    def part_of(self, key: str) -> str:
        """``stem``, ``encoder``, ``decoder``, ``head``, or ``other`` for a name outside the layout."""
        matches = self.matching_parts(key)
        return matches[0] if matches else "other"

    def is_alias(self, key: str) -> bool:
        return any(_under(key, alias) for alias, _ in self.aliases)
