"""The backbones API: load, list, import, inspect.

Console examples::

    from sslseg.backbones import load_backbone, list_backbones, import_checkpoint
    [b["name"] for b in list_backbones()]
    name = import_checkpoint("/data/runs/s3d/checkpoint_final.pth", name="my-s3d")
    network, report = load_backbone(name, num_classes=3, in_channels=1)
    print(report.summary())
"""

from __future__ import annotations

import os
import shutil

from sslseg.errors import UserError

from . import cache
from .catalog import catalog_entry, catalog_names, is_catalog_name, plan_from_entry
from .safe_load import load_checkpoint

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_latest.pth")


def resolve(source: str, download: bool = False, progress=None):
    """``(path, name, catalog_entry_or_None, meta_or_None)`` for a checkpoint path, a folder holding
    ``checkpoint_final.pth``, a cached (imported/downloaded) name, or a catalog name."""
    source = os.fspath(source)
    if os.path.isdir(source):
        for candidate in CHECKPOINT_NAMES:
            if os.path.isfile(os.path.join(source, candidate)):
                return resolve(os.path.join(source, candidate))
        raise UserError(f"no checkpoint_final.pth in folder {source}")
    if os.path.isfile(source):
        return os.path.abspath(source), _name_for_path(source), None, None
    if cache._NAME_PATTERN.match(source):
        meta = cache.read_meta(source)
        entry = catalog_entry(source) if is_catalog_name(source) else None
        if meta:
            return cache.cached_checkpoint(source), source, entry, meta
        if entry:
            if download:
                from .download import download_backbone

                download_backbone(source, progress=progress)
                return resolve(source)
            raise UserError(f"backbone {source} is not downloaded yet: run `sslseg models download {source}` "
                            f"(or, offline, `sslseg models import FILE --name {source}` with a copy of the file)")
    if os.path.sep in source or source.endswith((".pth", ".pt", ".ckpt")):
        raise UserError(f"checkpoint file not found: {source}")
    raise UserError(f"unknown backbone {source!r}: not a file, nor a downloaded/imported backbone, nor in the "
                    f"catalog ({', '.join(catalog_names())}); see `sslseg models list`")


def _name_for_path(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.startswith("checkpoint") and os.path.basename(os.path.dirname(os.path.abspath(path))):
        stem = os.path.basename(os.path.dirname(os.path.abspath(path)))
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in stem).strip("-.") or "backbone"
    return cleaned[:100]


def _detect_format(checkpoint) -> str:
    from . import misfm, nnssl

    if nnssl.is_nnssl(checkpoint):
        return "nnssl"
    if misfm.is_misfm(checkpoint):
        return "misfm"
    if isinstance(checkpoint, dict) and checkpoint and all(hasattr(v, "shape") for v in checkpoint.values()):
        return "state_dict"
    return "unknown"


def _read(path: str):
    """Safely read a checkpoint. When the plain weights-only load stops at a NumPy global (PyMIC/MIS-FM store
    scores as NumPy scalars, nnssl training logs may too), it is retried once with the NumPy allow-list."""
    try:
        return load_checkpoint(path)
    except UserError as error:
        if "numpy" in str(error) and "os." not in str(error):
            return load_checkpoint(path, allow_numpy=True)
        raise


def load_backbone(source, num_classes: int, in_channels: int = 1, load_decoder: bool = None,
                  download: bool = False, progress=None):
    """``(network, report)``: a freshly built segmentation network for ``num_classes`` (background included) and
    ``in_channels`` inputs with the pretrained weights of ``source`` (catalog name, imported or user-pretrained
    name, checkpoint file, or a pretraining output folder), and a LoadReport. ResEnc backbones give a
    ``ResidualEncoderUNet`` with its usual state_dict names; MIS-FM gives an FMUNet.

    ``load_decoder``: None = the format's own practice (nnssl: encoder only; MIS-FM/PyMIC: encoder and decoder).
    Raises UserError when the file is unsafe, corrupt, of an unsupported architecture, or when the encoder did not
    load (nearly) completely."""
    if int(num_classes) < 1 or int(in_channels) < 1:
        raise UserError("num_classes and in_channels must be at least 1")
    source = os.fspath(source)
    if is_catalog_name(source) and not os.path.exists(source):
        _refuse_unsupported(catalog_entry(source))
    path, name, entry, meta = resolve(source, download=download, progress=progress)
    if entry is None and meta and meta.get("catalog"):
        entry = catalog_entry(meta["catalog"]) if is_catalog_name(meta["catalog"]) else None
    if entry is not None:
        _refuse_unsupported(entry)
    checkpoint = _read(path)
    kind = _detect_format(checkpoint)
    if kind == "nnssl":
        from . import nnssl

        network, report = nnssl.load(checkpoint, path, name, int(num_classes), int(in_channels),
                                     load_decoder=bool(load_decoder), catalog_entry=entry)
    elif kind == "misfm":
        from . import misfm

        network, report = misfm.load(checkpoint, path, name, int(num_classes), int(in_channels),
                                     load_decoder=True if load_decoder is None else bool(load_decoder),
                                     catalog_entry=entry)
    elif kind == "state_dict":
        from . import nnssl

        wrapped = {"network_weights": checkpoint}
        network, report = nnssl.load(wrapped, path, name, int(num_classes), int(in_channels),
                                     load_decoder=bool(load_decoder), catalog_entry=entry)
        report.notes.append("bare state_dict read as nnssl network_weights")
    else:
        keys = ", ".join(list(checkpoint)[:8]) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UserError(f"{path} is not a checkpoint format sslseg knows (nnssl `network_weights` or MIS-FM "
                        f"`model_state_dict`); it holds: {keys}")
    if meta:
        report.sha256 = meta.get("sha256")
    return network, report


def _refuse_unsupported(entry: dict):
    if not entry.get("supported", True):
        raise UserError(f"backbone {entry['name']} ({entry['architecture']}) is not supported yet: "
                        f"{entry.get('notes', '')}".strip())


def list_backbones() -> list:
    """Catalog entries and imported/user-pretrained backbones, each a dict with ``name``, ``source``
    ("catalog" | "imported"), ``cached``, ``method``, ``architecture``, ``modality``, ``license``, ``title``,
    ``supported``, ``path`` (checkpoint when cached), ``input``."""
    result = []
    for name in catalog_names():
        entry = catalog_entry(name)
        meta = cache.read_meta(name)
        result.append({
            "name": name, "source": "catalog", "cached": bool(meta), "title": entry["title"],
            "method": entry["method"], "architecture": entry["architecture"], "modality": entry["modality"],
            "pretraining_data": entry["pretraining_data"], "license": entry["license"],
            "supported": entry.get("supported", True), "input": plan_from_entry(entry),
            "download": "automatic" if entry["files"]["checkpoint"].get("url") else "manual",
            "homepage": entry.get("homepage"),
            "path": cache.cached_checkpoint(name) if meta else None,
            "sha256": (meta or {}).get("sha256") or entry["files"]["checkpoint"].get("sha256"),
        })
    for name in cache.cached_names():
        if is_catalog_name(name):
            continue
        meta = cache.read_meta(name)
        result.append({
            "name": name, "source": "imported", "cached": True, "title": meta.get("title") or name,
            "method": meta.get("method"), "architecture": meta.get("architecture"), "modality": meta.get("modality"),
            "pretraining_data": meta.get("pretraining_data"), "license": meta.get("license"),
            "supported": True, "input": meta.get("plan"), "download": "imported", "homepage": None,
            "path": cache.cached_checkpoint(name), "sha256": meta.get("sha256"),
            "origin": meta.get("origin"), "trainer": meta.get("trainer"),
        })
    return result


def import_checkpoint(path, name: str = None, overwrite: bool = False) -> str:
    """Copy a local checkpoint (and the ``adaptation_plan.json`` beside it) into the cache as backbone ``name``
    and return the name. A catalog name registers a manually downloaded public file (its sha256 is checked where
    the catalog has one). The file is validated first (safe load, known format, encoder loads completely), so a
    broken or partial file is never registered. Importing the same file again under the same name is a no-op;
    other content under an existing name needs ``overwrite=True``."""
    source_path, default_name, _, _ = resolve(os.fspath(path))
    name = cache.check_name(name or default_name)
    entry = catalog_entry(name) if is_catalog_name(name) else None
    digest = cache.sha256_of(source_path)
    if entry:
        expected = entry["files"]["checkpoint"].get("sha256")
        if expected and expected != digest:
            raise UserError(f"{source_path} is not the published {name} file: sha256 {digest} differs from the "
                            f"catalog's {expected}. Download it again from {entry.get('homepage')}.")
    existing = cache.read_meta(name)
    if existing and existing.get("sha256") == digest:
        return name
    if existing and not overwrite:
        raise UserError(f"a different backbone named {name} already exists; choose another --name "
                        "(or overwrite it explicitly)")

    # validate before anything lands in the cache
    _, report = load_backbone(source_path, num_classes=2, in_channels=1)
    checkpoint_name = entry["files"]["checkpoint"]["filename"] if entry else os.path.basename(source_path)
    target_dir = cache.entry_dir(name)
    os.makedirs(target_dir, exist_ok=True)
    meta_path = os.path.join(target_dir, cache.META_FILE)
    if os.path.exists(meta_path):
        os.remove(meta_path)   # the folder stops being a finished backbone while it is rewritten
    _copy_atomic(source_path, os.path.join(target_dir, checkpoint_name))
    plan_beside = os.path.join(os.path.dirname(source_path), cache.PLAN_FILE)
    if os.path.isfile(plan_beside):
        _copy_atomic(plan_beside, os.path.join(target_dir, cache.PLAN_FILE))
    trainer = report.trainer
    meta = {
        "name": name,
        "source": "catalog" if entry else "imported",
        "catalog": name if entry else None,
        "checkpoint": checkpoint_name,
        "sha256": digest,
        "size": os.path.getsize(source_path),
        "origin": source_path,
        "format": report.format,
        "method": report.plan.get("method"),
        "architecture": report.spec.get("name"),
        "modality": report.plan.get("modality"),
        "plan": report.plan,
        "spec": report.spec,
        "trainer": trainer,
        "title": entry["title"] if entry else f"{report.plan.get('method')} {report.spec.get('name')} ({name})",
        "license": entry["license"] if entry else None,
        "pretraining_data": entry["pretraining_data"] if entry else None,
    }
    cache.write_meta(name, meta)
    return name


def _copy_atomic(source: str, target: str):
    partial = os.path.join(os.path.dirname(target), f".partial-{os.getpid()}-{os.path.basename(target)}")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def inspect(source, num_classes: int = 2, in_channels: int = 1) -> dict:
    """What a backbone is and how it loads: format, method, architecture, parameter count, load report. A catalog
    backbone that is not downloaded yet is described from the catalog (``"loaded": false``)."""
    source = os.fspath(source)
    if is_catalog_name(source) and not cache.read_meta(source) and not os.path.exists(source):
        entry = catalog_entry(source)
        return {"name": source, "cached": False, "loaded": False, "catalog": entry,
                "message": f"not downloaded yet: `sslseg models download {source}`"}
    _, report = load_backbone(source, num_classes=num_classes, in_channels=in_channels)
    result = {"name": report.name, "cached": bool(cache._NAME_PATTERN.match(source) and cache.read_meta(source)),
              "loaded": True, "report": report.to_dict(), "summary": report.summary()}
    if is_catalog_name(report.name):
        result["catalog"] = catalog_entry(report.name)
    return result
