"""The demo's sample data: the Medical Segmentation Decathlon Task04 Hippocampus (260 labelled T1 MRI crops;
CC-BY-SA 4.0; Simpson et al. 2019, arXiv:1902.09063; Antonelli et al. 2022, Nature Communications 13:4128).

Where the data comes from, first match wins:

1. an explicit folder (``sslseg demo --data DIR``);
2. the environment variable ``SSLSEG_DEMO_DATA``;
3. a local copy at ``../shared/data/Task04_Hippocampus`` relative to the current folder or to the repository;
4. an earlier download in ``$SSLSEG_HOME/data/Task04_Hippocampus`` (default ``~/.sslseg``);
5. a download of ``Task04_Hippocampus.tar`` (27 MB) from the Decathlon's public AWS mirror (the copy MONAI's
   ``DecathlonDataset`` uses), verified against its published MD5 before it is unpacked.

Offline, step 5 fails with a message saying how to point the demo at a local copy.

Example::

    root = find_demo_data()            # a folder with imagesTr/, labelsTr/, dataset.json
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request

from sslseg.atomic import disk_failure
from sslseg.errors import UserError

TASK = "Task04_Hippocampus"
URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar"
MD5 = "9d24dba78a72977dbd1d2e110310f31b"
ENV = "SSLSEG_DEMO_DATA"
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_dataset(folder) -> bool:
    return bool(folder) and os.path.isfile(os.path.join(folder, "dataset.json")) and \
        os.path.isdir(os.path.join(folder, "imagesTr")) and os.path.isdir(os.path.join(folder, "labelsTr"))


def cache_dir() -> str:
    home = os.environ.get("SSLSEG_HOME") or os.path.join(os.path.expanduser("~"), ".sslseg")
    return os.path.join(home, "data")


def local_candidates() -> list:
    """(folder, how it was found) in the order they are tried, before any download."""
    candidates = []
    if os.environ.get(ENV):
        candidates.append((os.environ[ENV], f"${ENV}"))
    for base, how in ((os.getcwd(), "the current folder"), (REPOSITORY, "the repository")):
        candidates.append((os.path.join(os.path.dirname(base), "shared", "data", TASK), f"../shared/data beside {how}"))
    candidates.append((os.path.join(cache_dir(), TASK), "an earlier download"))
    return candidates


def find_demo_data(data=None, download: bool = True, log=print):
    """The hippocampus dataset folder: ``data`` when given, else the first local copy found, else a verified
    download. Returns (folder, how it was found)."""
    if data is not None:
        if not _is_dataset(data):
            raise UserError(f"--data {data} is not a dataset folder (it needs imagesTr/, labelsTr/ and dataset.json)")
        return os.path.abspath(data), "--data"
    for folder, how in local_candidates():
        if _is_dataset(folder):
            return os.path.abspath(folder), how
        if how == f"${ENV}":
            raise UserError(f"${ENV} is set to {folder}, which is not a dataset folder (imagesTr/, labelsTr/, "
                            f"dataset.json)")
    if not download:
        raise UserError("no local copy of the hippocampus data found")
    return download_demo_data(log=log), "download"


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_demo_data(url: str = URL, md5: str = MD5, target: str | None = None, log=print, timeout: float = 60):
    """Download the task's tar file, check its MD5, unpack it safely into ``target`` (default: the cache) and
    return the dataset folder. Nothing is left behind when a step fails."""
    target = target or cache_dir()
    final = os.path.join(target, TASK)
    if _is_dataset(final):
        return final
    os.makedirs(target, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as scratch:
        archive = os.path.join(scratch, "data.tar")
        log(f"downloading the sample data from {url} ...")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as stream:
                shutil.copyfileobj(response, stream, 1 << 20)
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            failure = disk_failure(error, final)
            if failure is not None and not isinstance(error, urllib.error.URLError):
                raise failure from None  # a full disk, not the network: one line naming where it was going
            raise UserError(
                f"could not download the sample data from {url} ({getattr(error, 'reason', error)}). Without a "
                f"network, download {TASK}.tar elsewhere (or use the copy in ../shared/data), unpack it and run "
                f"`sslseg demo --data /path/to/{TASK}` or set {ENV}=/path/to/{TASK}") from None
        found = _md5(archive)
        if found != md5:
            raise UserError(f"the downloaded file from {url} is corrupt or not the expected one (MD5 {found}, "
                            f"expected {md5}); nothing was kept")
        unpacked = os.path.join(scratch, "unpacked")
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if _safe_member(m)]
            tar.extractall(unpacked, members=members, filter="data")
        source = os.path.join(unpacked, TASK)
        if not _is_dataset(source):
            raise UserError(f"the archive from {url} does not hold {TASK}/ with imagesTr/, labelsTr/, dataset.json")
        os.replace(source, final)
    log(f"sample data verified (MD5 {md5}) and unpacked to {final}")
    return final


def _safe_member(member: tarfile.TarInfo) -> bool:
    """Regular files and folders under the task folder only; macOS resource forks (``._*``) skipped."""
    name = member.name
    parts = name.replace("\\", "/").split("/")
    return (parts[0] == TASK and ".." not in parts and not name.startswith("/")
            and not any(part.startswith("._") for part in parts) and (member.isfile() or member.isdir()))
