"""The backbones API: load, list, import, inspect.

Console examples::

    from sslseg.backbones import load_backbone, list_backbones, import_checkpoint
    [b["name"] for b in list_backbones()]
    name = import_checkpoint("/data/runs/s3d/checkpoint_final.pth", name="my-s3d")
    network, report = load_backbone(name, num_classes=3, in_channels=1)
    print(report.summary())
"""

from __future__ import annotations

import hashlib
import os
import shutil

from sslseg.atomic import remove_quietly, sync_file, write_errors, write_json_atomic
from sslseg.errors import UserError
from sslseg.validation import int_in_range, read_json_file

from . import cache
from .catalog import catalog_entry, catalog_names, is_catalog_name, plan_from_entry
from .reading import build_loaded, read_checkpoint, validate_checkpoint  # noqa: F401 - validate_checkpoint is API
from .safe_load import require_checkpoint_file

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_latest.pth")


def checkpoint_in(source: str) -> str:
    """The checkpoint file ``source`` names: the file itself, or ``checkpoint_final.pth`` (else
    ``checkpoint_latest.pth``) in a pretraining output folder. UserError when there is none."""
    source = os.fspath(source)
    if os.path.isdir(source):
        for candidate in CHECKPOINT_NAMES:
            if os.path.isfile(os.path.join(source, candidate)):
                return os.path.abspath(os.path.join(source, candidate))
        raise UserError(f"no checkpoint_final.pth in folder {source}")
    if os.path.isfile(source):
        return os.path.abspath(source)
    if os.path.lexists(source):
        raise UserError(f"{source} is not a regular file")
    raise UserError(f"checkpoint file not found: {source}")


def resolve(source: str, download: bool = False, progress=None):
    """``(path, name, catalog_entry_or_None, meta_or_None)`` for a checkpoint path, a folder holding
    ``checkpoint_final.pth``, a cached (imported/downloaded) name, or a catalog name."""
    source = os.fspath(source)
    if os.path.exists(source):
        path = checkpoint_in(source)
        return path, _name_for_path(path), None, None
    if cache.is_valid_name(source):
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
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in stem).strip("-._") or "backbone"
    return cleaned[:100]


def load_backbone(source, num_classes: int, in_channels: int = 1, load_decoder: bool = None,
                  download: bool = False, progress=None):
    """``(network, report)``: a freshly built segmentation network for ``num_classes`` (background included) and
    ``in_channels`` inputs with the pretrained weights of ``source`` (catalog name, imported or user-pretrained
    name, checkpoint file, or a pretraining output folder), and a LoadReport. ResEnc backbones give a
    ``ResidualEncoderUNet`` with its usual state_dict names; MIS-FM gives an FMUNet.

    ``load_decoder``: None = the format's own practice (nnssl: encoder only; MIS-FM/PyMIC: encoder and decoder).
    Raises UserError when the file is unsafe, corrupt, of an unsupported architecture, or when the encoder did not
    load (nearly) completely."""
    num_classes = int_in_range("num_classes", num_classes, 1)
    in_channels = int_in_range("in_channels", in_channels, 1)
    source = os.fspath(source)
    if is_catalog_name(source) and not os.path.exists(source):
        _refuse_unsupported(catalog_entry(source))
    path, name, entry, meta = resolve(source, download=download, progress=progress)
    if entry is None and meta and isinstance(meta.get("catalog"), str) and is_catalog_name(meta["catalog"]):
        entry = catalog_entry(meta["catalog"])
    if entry is not None:
        _refuse_unsupported(entry)
    network, report = build_loaded(read_checkpoint(path), path, name, num_classes, in_channels, load_decoder, entry)
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
    rows = [_catalog_row(name) for name in catalog_names()]
    return rows + [_imported_row(name) for name in cache.cached_names() if not is_catalog_name(name)]


def _catalog_row(name: str) -> dict:
    entry = catalog_entry(name)
    meta = cache.read_meta(name)
    return {
        "name": name, "source": "catalog", "cached": bool(meta), "title": entry["title"],
        "method": entry["method"], "architecture": entry["architecture"], "modality": entry["modality"],
        "pretraining_data": entry["pretraining_data"], "license": entry["license"],
        "supported": entry.get("supported", True), "input": plan_from_entry(entry),
        "download": "automatic" if entry["files"]["checkpoint"].get("url") else "manual",
        "homepage": entry.get("homepage"),
        "path": cache.cached_checkpoint(name) if meta else None,
        "sha256": (meta or {}).get("sha256") or entry["files"]["checkpoint"].get("sha256"),
    }


def _imported_row(name: str) -> dict:
    meta = cache.read_meta(name)
    return {
        "name": name, "source": "imported", "cached": True, "title": meta.get("title") or name,
        "method": meta.get("method"), "architecture": meta.get("architecture"), "modality": meta.get("modality"),
        "pretraining_data": meta.get("pretraining_data"), "license": meta.get("license"),
        "supported": True, "input": meta.get("plan"), "download": "imported", "homepage": None,
        "path": cache.cached_checkpoint(name), "sha256": meta.get("sha256"),
        "origin": meta.get("origin"), "trainer": meta.get("trainer"),
    }


def import_checkpoint(path, name: str = None, overwrite: bool = False) -> str:
    """Copy a local checkpoint (and the ``adaptation_plan.json`` beside it) into the cache as backbone ``name``
    and return the name. A catalog name registers a manually downloaded public file (its sha256 is checked where
    the catalog has one, its format always). The copy staged in the cache is what gets validated (safe load, known
    format, encoder loads completely) before it replaces anything, so a broken or partial file is never
    registered and a failed import leaves an existing backbone as it was. Importing the same file again under the
    same name is a no-op; other content under an existing name needs ``overwrite=True``."""
    source = checkpoint_in(os.fspath(path))
    require_checkpoint_file(source)      # the staged copy is fully checked; this refuses the obvious at once
    name = cache.check_name(name or _name_for_path(source))
    entry = _import_entry(name)
    plan_beside = _plan_beside(source)
    digest = cache.sha256_of(source)
    _check_published_hash(entry, name, source, digest)
    with cache.exclusive(name):
        existing = cache.read_meta(name)
        if existing and existing.get("sha256") == digest:
            return name
        if existing and not overwrite:
            raise UserError(f"a different backbone named {name} already exists; choose another --name "
                            "(or overwrite it explicitly)")
        _stage_and_install(source, plan_beside, name, entry, digest)
    return name


def _import_entry(name: str):
    """The catalog entry a name registers (None for a name of your own); an unsupported one is refused."""
    if not is_catalog_name(name):
        return None
    entry = catalog_entry(name)
    _refuse_unsupported(entry)
    return entry


def _plan_beside(source: str):
    """``adaptation_plan.json`` next to the checkpoint, when there is one; it must be a JSON object."""
    plan = os.path.join(os.path.dirname(source), cache.PLAN_FILE)
    if not os.path.isfile(plan):
        return None
    read_json_file(plan, f"the {cache.PLAN_FILE} beside the checkpoint", expect=dict)
    return plan


def _check_published_hash(entry, name: str, source: str, digest: str):
    expected = (entry or {}).get("files", {}).get("checkpoint", {}).get("sha256")
    if expected and expected.lower() != digest:
        raise UserError(f"{source} is not the published {name} file: sha256 {digest} differs from the "
                        f"catalog's {expected}. Download it again from {entry.get('homepage')}.")


def _stage_and_install(source: str, plan_beside, name: str, entry, digest: str):
    """Assemble the backbone in a private folder in the cache, validate that copy, then swap it into place (a full
    disk: one line naming the cache folder)."""
    with write_errors(cache.entry_dir(name)):
        _stage_and_install_unguarded(source, plan_beside, name, entry, digest)


def _stage_and_install_unguarded(source: str, plan_beside, name: str, entry, digest: str):
    staged = cache.staging_dir(name)
    try:
        checkpoint_name = entry["files"]["checkpoint"]["filename"] if entry else os.path.basename(source)
        staged_checkpoint = os.path.join(staged, checkpoint_name)
        if _copy_hashing(source, staged_checkpoint) != digest:
            raise UserError(f"{source} changed while it was being imported; try again")
        if plan_beside:
            shutil.copyfile(plan_beside, os.path.join(staged, cache.PLAN_FILE))
        try:
            report = validate_checkpoint(staged_checkpoint, name, entry)
        except UserError as error:   # one line that names the user's file, not the staged copy
            message = str(error).strip().splitlines()[0]
            raise UserError(message.replace(staged_checkpoint, source).replace(staged, os.path.dirname(source))) \
                from None
        meta = _import_meta(name, entry, checkpoint_name, digest, source, report)
        write_json_atomic(meta, os.path.join(staged, cache.META_FILE))
        cache.install(name, staged)
    finally:
        remove_quietly(staged)


def _copy_hashing(source: str, target: str) -> str:
    """Copy ``source`` to ``target`` and return the sha256 of the bytes written."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            writer.write(block)
    sync_file(target)  # a write error the file system reports late surfaces here, before the swap
    return digest.hexdigest()


def _import_meta(name, entry, checkpoint_name, digest, source, report) -> dict:
    return {
        "name": name,
        "source": "catalog" if entry else "imported",
        "catalog": name if entry else None,
        "checkpoint": checkpoint_name,
        "sha256": digest,
        "size": os.path.getsize(source),
        "origin": source,
        "format": report.format,
        "method": report.plan.get("method"),
        "architecture": report.spec.get("name"),
        "modality": report.plan.get("modality"),
        "plan": report.plan,
        "spec": report.spec,
        "trainer": report.trainer,
        "title": entry["title"] if entry else f"{report.plan.get('method')} {report.spec.get('name')} ({name})",
        "license": entry["license"] if entry else None,
        "pretraining_data": entry["pretraining_data"] if entry else None,
    }


def inspect(source, num_classes: int = 2, in_channels: int = 1) -> dict:
    """What a backbone is and how it loads: format, method, architecture, parameter count, load report. A catalog
    backbone that is not downloaded yet is described from the catalog (``"loaded": false``)."""
    source = os.fspath(source)
    if is_catalog_name(source) and not cache.read_meta(source) and not os.path.exists(source):
        entry = catalog_entry(source)
        return {"name": source, "cached": False, "loaded": False, "catalog": entry,
                "message": f"not downloaded yet: `sslseg models download {source}`"}
    _, report = load_backbone(source, num_classes=num_classes, in_channels=in_channels)
    result = {"name": report.name, "cached": bool(cache.is_valid_name(source) and cache.read_meta(source)),
              "loaded": True, "report": report.to_dict(), "summary": report.summary()}
    if is_catalog_name(report.name):
        result["catalog"] = catalog_entry(report.name)
    return result
