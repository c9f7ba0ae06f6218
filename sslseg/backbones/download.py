"""Downloads into the backbone cache: streamed, resumable (HTTP Range), verified, atomic, one at a time.

A file is fetched to ``.partial-<file>`` in the backbone's cache folder (resumed from there after an interruption)
and checked before it is renamed into place: against the catalog's sha256 where the catalog has one, and always by
what it holds - a checkpoint must load with the safe loader, have the catalog's format and load its encoder
completely; an adaptation plan must be a JSON object with the keys nnssl writes. Where the catalog has no sha256
the hash is recorded in ``backbone.json`` after these checks (trust on first use) and later downloads must match
it. ``backbone.json`` is written last. A file that fails a check is deleted; an interrupted one is kept for
resuming; neither counts as cached. A second download (or import) of the same backbone while one runs is refused.

``SSLSEG_BACKBONE_MIRROR`` (a base URL) fetches every file from ``<mirror>/<name>/<file name>`` instead, for
sites that mirror the weights on an internal server.

Example::

    from sslseg.backbones import download_backbone
    download_backbone("ResEncL-OpenMind-MAE", progress=lambda done, total: print(done, total))
"""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.parse
import urllib.request

from sslseg import __version__
from sslseg.atomic import PARTIAL_PREFIX, commit, remove_quietly, write_errors
from sslseg.errors import UserError
from sslseg.validation import parse_json_bytes

from . import cache
from .reading import validate_checkpoint
from .catalog import catalog_entry
from .safe_load import looks_like_checkpoint

CHUNK = 1 << 20
TIMEOUT_S = 60
# the top-level keys of an nnssl adaptation plan (nnssl's AdaptationPlan, as in the Hugging Face releases)
PLAN_KEYS = ("architecture_plans", "pretrain_plan")
MAX_PLAN_BYTES = 16 << 20


class DownloadInterrupted(OSError):
    """The transfer stopped early; the partial file is kept for resuming."""


# what the network (not this computer) can do to a transfer
TRANSFER_ERRORS = (urllib.error.URLError, http.client.HTTPException, DownloadInterrupted, ConnectionError,
                   TimeoutError, socket.timeout)


def _request(url: str, start: int):
    headers = {"User-Agent": f"sslseg/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _open(url: str, partial: str):
    """``(response, start)``: resume from the partial file when the server honours the Range request."""
    start = os.path.getsize(partial) if os.path.isfile(partial) else 0
    try:
        response = _request(url, start)
    except urllib.error.HTTPError as error:
        if not (start and error.code == 416):
            raise
        remove_quietly(partial)    # the part kept is not a prefix of what the server has now: start over
        return _request(url, 0), 0
    if start and getattr(response, "status", 200) != 206:
        start = 0                  # the server ignored the Range request: start over
    return response, start


def fetch(url: str, partial: str, sha256: str = None, progress=None, size: int = None) -> str:
    """Fetch ``url`` into ``partial`` (resuming it) and return its sha256. Raises UserError on a checksum mismatch
    (the partial file is removed) and DownloadInterrupted/OSError/urllib errors on transfer problems (the partial
    file is kept). ``progress(done_bytes, total_bytes_or_None)`` is called as data arrives."""
    response, start = _open(url, partial)
    with response:
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None and length.isdigit() else size
        done = _stream(response, partial, start, total, progress)
    if total is not None and done < total:
        raise DownloadInterrupted(f"transfer interrupted: {done} of {total} bytes")
    digest = cache.sha256_of(partial)
    if sha256 and digest != sha256.lower():
        hint = "" if looks_like_checkpoint(partial) else " (what arrived is not a checkpoint: an error page?)"
        remove_quietly(partial)
        raise UserError(f"download of {url} is corrupt: sha256 {digest} instead of {sha256}{hint}; it was "
                        "discarded, try again (or import a verified copy with `sslseg models import`)")
    return digest


def _stream(response, partial: str, start: int, total, progress) -> int:
    done = start
    # read1: whatever has arrived (up to CHUNK), so that progress and the part kept after a break are up to date
    read = getattr(response, "read1", response.read)
    with open(partial, "ab" if start else "wb") as stream:
        if progress:
            progress(done, total)
        while True:
            try:
                block = read(CHUNK)
            except (socket.timeout, ConnectionError, OSError) as error:
                raise DownloadInterrupted(f"transfer interrupted after {done} bytes: {error}") from None
            except Exception as error:  # noqa: BLE001 - http.client.IncompleteRead and friends
                raise DownloadInterrupted(f"transfer interrupted after {done} bytes: {error!r}") from None
            if not block:
                return done
            stream.write(block)
            stream.flush()        # what arrived is on disk, ready to resume from, whatever happens next
            done += len(block)
            if progress:
                progress(done, total)


def staged_path(target: str) -> str:
    """Where ``target`` is downloaded to before it is checked: one name per file, so that a later run resumes it
    (the per-backbone lock keeps two downloads from sharing it)."""
    directory, base = os.path.split(os.path.abspath(target))
    return os.path.join(directory, f"{PARTIAL_PREFIX}{base}")


def download_file(url: str, target: str, sha256: str = None, progress=None, size: int = None) -> str:
    """Fetch ``url`` to ``target`` through ``staged_path(target)``, verify its sha256 and rename it into place;
    returns the sha256."""
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    partial = staged_path(target)
    with write_errors(target):
        digest = fetch(url, partial, sha256, progress, size)
        commit(partial, target)
    return digest


def _url_for(name: str, spec: dict) -> str:
    mirror = os.environ.get("SSLSEG_BACKBONE_MIRROR")
    if mirror:
        if urllib.parse.urlsplit(mirror).scheme not in ("http", "https", "file") or "://" not in mirror:
            raise UserError(f"SSLSEG_BACKBONE_MIRROR must be an http(s) or file URL such as "
                            f"https://models.example.org/sslseg (got {mirror!r})")
        return f"{mirror.rstrip('/')}/{name}/{spec['filename']}"
    return spec.get("url")


def _import_hint(name: str, files: dict) -> str:
    return (f"sslseg models import {files['checkpoint']['filename']} --name {name}"
            + (" (with adaptation_plan.json in the same folder)" if "plan" in files else ""))


def downloadable_entry(name: str) -> dict:
    """The catalog entry of ``name``; UserError for an unknown name or a file only a person can download."""
    entry = catalog_entry(name)
    spec = entry["files"]["checkpoint"]
    if not spec.get("url"):
        manual = spec.get("manual") or entry.get("homepage")
        raise UserError(f"{name} cannot be downloaded automatically (it is on Google Drive, which needs a browser). "
                        f"Download {spec['filename']} from {manual}, then run: {_import_hint(name, entry['files'])}")
    return entry


def download_backbone(name: str, progress=None, force: bool = False) -> str:
    """Download a catalog backbone (checkpoint and plan) into the cache; returns the checkpoint path.
    Already cached: returns at once (``force`` re-downloads). Offline or blocked: UserError that explains how to
    import a manually downloaded file. Another download of the same backbone running: UserError."""
    catalog_entry(name)
    if cache.read_meta(name) and not force:      # cached, also when it was imported by hand
        return cache.cached_checkpoint(name)
    entry = downloadable_entry(name)
    _url_for(name, entry["files"]["checkpoint"])   # a bad mirror setting is refused before anything is written
    with cache.exclusive(name):
        meta = cache.read_meta(name)      # another process may have finished it just before we took the lock
        if meta and not force:
            return cache.cached_checkpoint(name)
        try:
            with write_errors(cache.entry_dir(name)):  # a full disk: one line naming the cache folder
                return _download_locked(name, entry, meta, progress)
        finally:
            cache.remove_if_empty(name)


def _download_locked(name: str, entry: dict, meta, progress) -> str:
    files = entry["files"]
    spec = files["checkpoint"]
    folder = cache.entry_dir(name)
    os.makedirs(folder, exist_ok=True)
    plan_partial = staged_path(os.path.join(folder, files["plan"]["filename"])) if "plan" in files else None
    url = _url_for(name, spec)
    # trust on first use: without a published hash, a re-download must match the hash recorded the first time
    expected = spec.get("sha256") or (meta or {}).get("sha256")
    try:
        plan = None
        if plan_partial:
            url = _url_for(name, files["plan"])
            fetch(url, plan_partial, files["plan"].get("sha256"))
            plan = _check_plan(plan_partial, url)
        url = _url_for(name, spec)
        partial = staged_path(os.path.join(folder, spec["filename"]))
        digest = fetch(url, partial, expected, progress, spec.get("size"))
        _check_checkpoint(partial, url, name, entry, plan)
        if plan_partial:
            commit(plan_partial, os.path.join(folder, files["plan"]["filename"]))
        commit(partial, os.path.join(folder, spec["filename"]))
    except TRANSFER_ERRORS as error:      # other OSErrors (a full disk) are not the network's: raised as they are
        raise _transfer_error(name, entry, url, error) from None
    finally:
        if plan_partial:
            remove_quietly(plan_partial)   # small: fetched again next time rather than resumed
    cache.write_meta(name, _download_meta(name, entry, meta, digest, url, folder))
    return os.path.join(folder, spec["filename"])


def _check_plan(partial: str, url: str) -> dict:
    """The adaptation plan downloaded to ``partial``; UserError (file removed) when it is not one."""
    try:
        if os.path.getsize(partial) > MAX_PLAN_BYTES:
            raise UserError(f"the file served by {url} is not an adaptation plan (it is far too large)")
        with open(partial, "rb") as stream:
            raw = stream.read()
        plan = parse_json_bytes(raw, f"the file served by {url}", expect=dict)
        missing = [key for key in PLAN_KEYS if not isinstance(plan.get(key), dict)]
        if missing:
            raise UserError(f"the file served by {url} is not an adaptation plan (no {', '.join(missing)}; an error "
                            "page?)")
        return plan
    except UserError as error:
        remove_quietly(partial)
        raise UserError(f"{error}; nothing was registered") from None


def _check_checkpoint(partial: str, url: str, name: str, entry: dict, plan):
    """Load-check the downloaded checkpoint before it is registered; UserError (file removed) when it fails."""
    try:
        if not looks_like_checkpoint(partial):
            raise UserError(f"the file served by {url} is not a checkpoint (an error page?)")
        try:
            validate_checkpoint(partial, name, entry, plan)
        except UserError as error:
            raise UserError(f"the file served by {url} is not a usable {name} checkpoint: "
                            f"{str(error).strip().splitlines()[0].replace(partial, 'the download')}") from None
    except UserError as error:
        remove_quietly(partial)
        raise UserError(f"{error}; it was discarded and nothing was registered") from None


def _transfer_error(name: str, entry: dict, url: str, error: Exception) -> UserError:
    files = entry["files"]
    spec = files["checkpoint"]
    manual = spec.get("manual") or entry.get("homepage")
    reason = getattr(error, "reason", None) or error
    kept = " (the part received so far is kept; run the same command again to resume)" \
        if isinstance(error, DownloadInterrupted) else ""
    plan = f" and {files['plan']['filename']}" if "plan" in files else ""
    return UserError(
        f"could not download {name} from {url}: {reason}{kept}. If this computer is offline or a proxy/firewall "
        f"blocks the site, download {spec['filename']}{plan} on another computer from {manual}, copy "
        f"{'them' if plan else 'it'} here and run: {_import_hint(name, files)}")


def _download_meta(name: str, entry: dict, meta, digest: str, url: str, folder: str) -> dict:
    spec = entry["files"]["checkpoint"]
    source = "catalog" if spec.get("sha256") else (meta or {}).get("sha256_source") or "recorded on first download"
    return {
        "name": name, "source": "catalog", "catalog": name, "checkpoint": spec["filename"],
        "plan_file": entry["files"]["plan"]["filename"] if "plan" in entry["files"] else None,
        "sha256": digest, "sha256_source": source, "size": os.path.getsize(os.path.join(folder, spec["filename"])),
        "origin": url, "format": entry["format"], "method": entry["method"],
        "architecture": entry["architecture"], "modality": entry["modality"], "title": entry["title"],
        "license": entry["license"], "pretraining_data": entry["pretraining_data"],
    }
