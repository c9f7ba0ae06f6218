"""The catalog of public pretrained backbones, shipped as data (``catalog.json`` beside this file).

Each entry names its method (MAE, S3D, VolF), architecture, pretraining data and modality, the input it expects
(spacing [x, y, z] mm, normalisation, patch [z, y, x], channels), where its files come from, licence and citation.
Example::

    from sslseg.backbones.catalog import catalog_entry
    catalog_entry("ResEncL-OpenMind-S3D")["license"]      # 'CC-BY-4.0'
"""

from __future__ import annotations

import copy
import functools
import os

from sslseg.errors import UserError
from sslseg.validation import read_json_file

CATALOG_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalog.json")


@functools.lru_cache(maxsize=1)
def _catalog() -> dict:
    catalog = read_json_file(CATALOG_PATH, "the backbone catalog", expect=dict)
    if not isinstance(catalog.get("backbones"), dict):
        raise UserError(f"the backbone catalog ({CATALOG_PATH}) has no `backbones` object; reinstall sslseg")
    return catalog["backbones"]


def catalog_names() -> list:
    return list(_catalog())


def is_catalog_name(name: str) -> bool:
    return name in _catalog()


def catalog_entry(name: str) -> dict:
    """A copy of the catalog entry (UserError for unknown names)."""
    entries = _catalog()
    if name not in entries:
        raise UserError(f"unknown backbone {name!r}; catalog backbones: {', '.join(entries)} "
                        "(see `sslseg models list`)")
    entry = copy.deepcopy(entries[name])
    entry["name"] = name
    return entry


def plan_from_entry(entry: dict) -> dict:
    """The LoadReport plan fields the catalog states for a backbone."""
    expected = entry.get("input", {})
    return {
        "spacing": expected.get("spacing"),
        "normalization": expected.get("normalization", "zscore"),
        "patch_size": expected.get("patch_size"),
        "in_channels": expected.get("in_channels", 1),
        "method": entry.get("method"),
        "modality": entry.get("modality"),
    }
