"""Downloads into the backbone cache: streamed, resumable (HTTP Range), verified (sha256), atomic.

A file is fetched to ``.partial-<file>`` in the backbone's cache folder, resumed from there after an interruption,
checked against the catalog's sha256 (or, where the catalog has none, the hash is recorded in ``backbone.json`` on
this first download) and only then renamed into place; ``backbone.json`` is written last. A corrupt download is
deleted, an interrupted one kept for resuming; neither counts as cached.

``SSLSEG_BACKBONE_MIRROR`` (a base URL) fetches every file from ``<mirror>/<name>/<file name>`` instead, for
sites that mirror the weights on an internal server.

Example::

    from sslseg.backbones import download_backbone
    download_backbone("ResEncL-OpenMind-MAE", progress=lambda done, total: print(done, total))
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request

from sslseg import __version__
from sslseg.errors import UserError

from . import cache
from .catalog import catalog_entry

CHUNK = 1 << 20
TIMEOUT_S = 60


class DownloadInterrupted(OSError):
    """The transfer stopped early; the partial file is kept for resuming."""


def _request(url: str, start: int):
    headers = {"User-Agent": f"sslseg/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def download_file(url: str, target: str, sha256: str = None, progress=None, size: int = None) -> str:
    """Fetch ``url`` to ``target`` (resuming ``<dir>/.partial-<name>``), verify, rename; returns the sha256.

    ``progress(done_bytes, total_bytes_or_None)`` is called as data arrives. Raises UserError on a checksum
    mismatch (the partial file is removed) and DownloadInterrupted/OSError/urllib errors on transfer problems
    (the partial file is kept)."""
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, f".partial-{os.path.basename(target)}")
    start = os.path.getsize(partial) if os.path.isfile(partial) else 0
    response = _request(url, start)
    with response:
        status = getattr(response, "status", 200)
        if start and status != 206:
            start = 0    # the server ignored the Range request: start over
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else size
        done = start
        with open(partial, "ab" if start else "wb") as stream:
            if progress:
                progress(done, total)
            while True:
                try:
                    block = response.read(CHUNK)
                except (socket.timeout, ConnectionError, OSError) as error:
                    raise DownloadInterrupted(f"transfer interrupted after {done} bytes: {error}") from None
                except Exception as error:  # http.client.IncompleteRead and friends
                    raise DownloadInterrupted(f"transfer interrupted after {done} bytes: {error!r}") from None
                if not block:
                    break
                stream.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
    if total is not None and done < total:
        raise DownloadInterrupted(f"transfer interrupted: {done} of {total} bytes")
    digest = cache.sha256_of(partial)
    if sha256 and digest != sha256.lower():
        os.remove(partial)
        raise UserError(f"download of {url} is corrupt: sha256 {digest} instead of {sha256}; it was discarded, "
                        "try again (or import a verified copy with `sslseg models import`)")
    os.replace(partial, target)
    return digest


def _url_for(name: str, spec: dict) -> str:
    mirror = os.environ.get("SSLSEG_BACKBONE_MIRROR")
    if mirror:
        return f"{mirror.rstrip('/')}/{name}/{spec['filename']}"
    return spec.get("url")


def download_backbone(name: str, progress=None, force: bool = False) -> str:
    """Download a catalog backbone (checkpoint and plan) into the cache; returns the checkpoint path.
    Already cached: returns at once (``force`` re-downloads). Offline or blocked: UserError that explains how to
    import a manually downloaded file."""
    entry = catalog_entry(name)
    meta = cache.read_meta(name)
    if meta and not force:
        return cache.cached_checkpoint(name)
    files = entry["files"]
    checkpoint_spec = files["checkpoint"]
    checkpoint_url = _url_for(name, checkpoint_spec)
    manual = checkpoint_spec.get("manual") or entry.get("homepage")   # where a person gets the file by hand
    import_hint = (f"sslseg models import {checkpoint_spec['filename']} --name {name}"
                   + (" (with adaptation_plan.json in the same folder)" if "plan" in files else ""))
    if not checkpoint_url:
        raise UserError(f"{name} cannot be downloaded automatically (it is on Google Drive, which needs a browser). "
                        f"Download {checkpoint_spec['filename']} from {manual}, then run: {import_hint}")
    folder = cache.entry_dir(name)
    meta_path = os.path.join(folder, cache.META_FILE)
    # trust on first use: without a published hash, a re-download must match the hash recorded the first time
    expected = checkpoint_spec.get("sha256") or (meta or {}).get("sha256")
    # a valid cached copy stays valid during a forced re-download: the checkpoint is replaced atomically and only
    # by a file with the same verified hash
    if not meta and os.path.exists(meta_path):
        os.remove(meta_path)
    current_url = checkpoint_url
    try:
        plan_name = None
        if "plan" in files:
            plan_name = files["plan"]["filename"]
            current_url = _url_for(name, files["plan"])
            download_file(current_url, os.path.join(folder, plan_name), files["plan"].get("sha256"))
            current_url = checkpoint_url
        digest = download_file(checkpoint_url, os.path.join(folder, checkpoint_spec["filename"]),
                               expected, progress, checkpoint_spec.get("size"))
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        kept = " (the part received so far is kept; run the same command again to resume)" \
            if isinstance(error, DownloadInterrupted) else ""
        raise UserError(
            f"could not download {name} from {current_url}: {reason}{kept}. If this computer is offline or a "
            f"proxy/firewall blocks the site, download {checkpoint_spec['filename']}"
            + (f" and {files['plan']['filename']}" if "plan" in files else "")
            + f" on another computer from {manual}, copy {'them' if 'plan' in files else 'it'} here and run: {import_hint}"
        ) from None
    cache.write_meta(name, {
        "name": name, "source": "catalog", "catalog": name, "checkpoint": checkpoint_spec["filename"],
        "plan_file": plan_name, "sha256": digest, "sha256_source": "catalog" if checkpoint_spec.get("sha256")
        else (meta or {}).get("sha256_source") or "recorded on first download", "size": os.path.getsize(os.path.join(folder, checkpoint_spec["filename"])),
        "origin": checkpoint_url, "format": entry["format"], "method": entry["method"],
        "architecture": entry["architecture"], "modality": entry["modality"], "title": entry["title"],
        "license": entry["license"], "pretraining_data": entry["pretraining_data"],
    })
    return os.path.join(folder, checkpoint_spec["filename"])


def verify_cached(name: str) -> bool:
    """Recompute the sha256 of a cached backbone and compare it with the one recorded."""
    meta = cache.read_meta(name)
    return bool(meta) and cache.sha256_of(cache.cached_checkpoint(name)) == meta.get("sha256")
