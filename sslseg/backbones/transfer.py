"""Copying checkpoint tensors into a freshly built network, with an exact account in a LoadReport.

Shared by the nnssl and MIS-FM loaders. Which part (stem, encoder, decoder, head) a tensor belongs to, which names
merely repeat a module, and which tensors are the input projection all come from the network family's
``WeightLayout`` (``sslseg.networks``). Tensors the network lists under several names (aliases of one parameter)
are handled once: every checkpoint name of that tensor is a candidate source, and when candidates disagree the
loader's ``prefer`` rule picks one (the S3D ``all_modules.*`` quirk) and the report records it.
"""

from __future__ import annotations

from sslseg.errors import UserError

# A loaded encoder below this share of its tensors means the checkpoint does not belong to this network.
MIN_ENCODER_FRACTION = 0.99


def alias_groups(network, layout) -> list:
    """``[(canonical_name, [all names], tensor)]`` for the distinct parameters and buffers of ``network``."""
    groups = {}
    for key, tensor in network.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), (key, [], tensor))[1].append(key)
    result = []
    for canonical, names, tensor in groups.values():
        # name a group by its module's own path (not an alias such as decoder.encoder.*), for readable reports
        outside = [name for name in names if not layout.is_alias(name)]
        result.append(((outside or names)[0], names, tensor))
    return result


def transfer(network, state: dict, report, layout, load_parts, prefer=None, in_proj=None):
    """Copy ``state`` (name -> tensor) into ``network`` and fill ``report``.

    ``layout``: the network family's ``WeightLayout``; only ``load_parts`` are copied, the other parts' checkpoint
    tensors count as skipped; checkpoint names under the layout's aliases merely repeat other tensors (used only
    as a last resort). ``prefer(names, tensors)`` picks a name when candidate tensors differ. ``in_proj``: module
    paths of the input projection (adapted to more input channels), the layout's unless given."""
    import torch

    in_proj = tuple(layout.in_proj if in_proj is None else in_proj)
    used = set()
    differing = []
    for canonical, names, target in alias_groups(network, layout):
        part = layout.part_of(canonical)
        counts = report.parts.get(part)
        if counts is None:
            raise RuntimeError(f"network tensor {canonical} belongs to no part")
        counts.total += 1
        present = [name for name in names if name in state]
        used.update(present)
        primary = [name for name in present if not layout.is_alias(name)] or present
        if part not in load_parts:
            if present:
                counts.skipped += 1
            continue
        if not primary:
            counts.missing += 1
            report.note_example("missing", canonical)
            continue
        chosen = primary[0]
        if len(primary) > 1:
            tensors = [state[name] for name in primary]
            if any(t.shape != tensors[0].shape or not torch.equal(t, tensors[0]) for t in tensors[1:]):
                chosen = prefer(primary, tensors) if prefer else primary[0]
                differing.append((canonical, chosen))
        source = state[chosen]
        adapted = False
        if tuple(source.shape) != tuple(target.shape):
            source = _adapt_input_channels(source, target, canonical, names, in_proj)
            if source is None:
                counts.mismatched += 1
                report.note_example("mismatched", f"{canonical} {tuple(state[chosen].shape)}->{tuple(target.shape)}")
                continue
            adapted = True
        with torch.no_grad():
            target.copy_(source.to(dtype=target.dtype))
        counts.loaded += 1
        counts.adapted += int(adapted)

    for name in state:
        if name not in used:
            part = layout.part_of(name)
            report.parts[part if part in report.parts else "encoder"].unexpected += 1
            report.note_example("unexpected", name)
    return differing


def _adapt_input_channels(source, target, canonical, names, in_proj):
    """Replicate single-channel input-projection weights for ``C`` input channels, divided by ``C`` so that a
    channel-replicated image gives the pretrained response; None when this is no such case."""
    if not any(name[: -len(".weight")] in in_proj for name in names if name.endswith(".weight")):
        return None
    if source.dim() != target.dim() or source.dim() < 2:
        return None
    if source.shape[0] != target.shape[0] or source.shape[2:] != target.shape[2:] or source.shape[1] != 1:
        return None
    channels = target.shape[1]
    return source.repeat(1, channels, *([1] * (source.dim() - 2))) / channels


def check_encoder(report, hint: str = ""):
    """UserError unless the stem and encoder came (nearly) completely from the checkpoint."""
    fraction = report.encoder_fraction()
    if fraction < MIN_ENCODER_FRACTION:
        raise UserError(
            f"backbone {report.name}: only {100 * fraction:.1f} % of the encoder loaded from {report.source}, so "
            f"fine-tuning would start from a mostly random network; refusing ({_encoder_counts(report)})."
            f"{(' ' + hint) if hint else ''}"
        )


def _encoder_counts(report) -> str:
    """The load report's stem/encoder lines in a few words, for a one-line error."""
    parts = []
    for name in ("stem", "encoder"):
        counts = report.parts[name]
        parts.append(f"{name}: {counts.loaded} of {counts.total} tensors loaded, {counts.missing} missing, "
                     f"{counts.mismatched} of another shape")
    examples = [k for kind in ("missing", "mismatched") for k in report.examples.get(kind, [])][:2]
    return "; ".join(parts) + (f"; e.g. {', '.join(examples)}" if examples else "")
