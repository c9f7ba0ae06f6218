"""One way to write a file so that nobody ever sees half of it, and a failed write is never taken for a result.

Every writer in the engine (images, ``.seg.nrrd`` files, JSON metadata, checkpoints, packed models, copies) goes
through :func:`atomic_file`: the content is written to a hidden sibling with a name unique to this process and
call, flushed to the disk (``fsync``) and checked (not empty; each writer may add its own check, e.g. an image's
header and data length), and only then renamed over the target (``os.replace`` is atomic on one file system).
Whatever goes wrong - an exception, a full disk, Ctrl-C - the sibling is removed, so no ``.partial`` file is left
behind and the target keeps its old content.

Some writers do not report a failed write: SimpleITK's NIfTI writer leaves a truncated or empty file on a full
disk without an error, and ``torch.save`` raises ``RuntimeError: [enforce fail at inline_container.cc...]``. Both
become an ``OSError`` with the errno of the cause (ENOSPC, EFBIG, EROFS, EACCES, EDQUOT, else EIO) and the
*target's* path, which the command line prints as one line (exit 1).

A process killed with SIGKILL cannot clean up: :func:`remove_stale_partials` removes the hidden siblings whose
writer process is gone (the next run on the same output calls it), so they never pile up.

:func:`exclusive_lock` is the one lock of the engine (``flock`` on a lock file, which the kernel releases when its
holder dies, so a killed run never blocks the next one).

Example::

    with atomic_file("out/model.json") as partial:
        write_something(partial)           # any writer that takes a path
    write_json_atomic({"a": 1}, "out/a.json")
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import shutil

PARTIAL_PREFIX = ".partial-"
_counter = itertools.count()
# causes of a failed write the user can act on (a full disk or quota, a read-only disk, no permission, a size limit)
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}
# how torch.save, SimpleITK and numpy report a write that failed part-way (they lose the errno)
_WRITER_FAILURES = re.compile(r"inline_container|PytorchStreamWriter|file write failed|Error writing|"
                              r"Could not write|unable to write|ImageFileWriter|\d+ requested and \d+ written",
                              re.IGNORECASE)
MIN_FREE_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


def partial_path(path) -> str:
    """A hidden sibling of ``path`` that no other process or call uses (pid and a per-process counter)."""
    path = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(path)
    return os.path.join(directory, f"{PARTIAL_PREFIX}{os.getpid()}-{next(_counter)}-{base}")


@contextlib.contextmanager
def atomic_file(path, make_parent: bool = True, check=None):
    """Yield a temporary path beside ``path``; on success verify it (see :func:`commit`) and rename it to
    ``path``, on any failure remove it. ``check(partial)`` raises ``IncompleteWrite`` for content that is not
    whole."""
    path = os.path.abspath(os.fspath(path))
    with write_errors(path):
        if make_parent:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = partial_path(path)
        try:
            yield partial
            commit(partial, path, check)
        except BaseException as error:
            failure = disk_failure(error, path, partial)  # the cause, read while the partial still holds its space
            remove_quietly(partial)
            if failure is not None:
                raise failure from None
            raise


class IncompleteWrite(Exception):
    """What was written is not whole (empty, truncated): the writer lost an error."""


def commit(partial: str, path: str, check=None) -> None:
    """Flush ``partial`` to the disk, verify it (not empty, then ``check``) and rename it to ``path``."""
    sync_file(partial)
    if os.path.getsize(partial) == 0:
        raise IncompleteWrite(f"{path}: nothing was written")
    if check is not None:
        check(partial)
    os.replace(partial, path)
    sync_directory(os.path.dirname(path))


def sync_file(path: str) -> None:
    """``fsync``: a write error the file system reports late (a full disk on NFS, a quota) surfaces here."""
    descriptor = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def disk_failure(error: BaseException, path: str, partial: str | None = None):
    """An ``OSError`` naming ``path`` and the cause when ``error`` is a failed write, else None."""
    path = os.path.abspath(os.fspath(path))
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
        if error.filename and not os.path.abspath(os.fsdecode(error.filename)).startswith(os.path.dirname(path)):
            return None  # another file's error (an input that cannot be read): not this write's
        code = error.errno
    elif isinstance(error, IncompleteWrite) or \
            (isinstance(error, (RuntimeError, OSError)) and _WRITER_FAILURES.search(str(error))):
        code = write_cause(os.path.dirname(path), partial)
    else:
        return None
    return OSError(code, f"{os.strerror(code)}{_HINTS.get(code, '')}", path)


_HINTS = {errno.ENOSPC: " (free some space or write elsewhere; nothing was written)",
          errno.EDQUOT: " (disk quota reached; nothing was written)",
          errno.EFBIG: " (the file-size limit, ulimit -f; nothing was written)",
          errno.EIO: " (the written file was incomplete and has been removed)"}


def write_cause(directory: str, partial: str | None = None) -> int:
    """The errno of a write that failed without one: a read-only disk, no permission, a full disk, a file-size
    limit, else EIO."""
    try:
        stat = os.statvfs(directory)
    except (OSError, AttributeError):  # Windows: no statvfs
        stat = None
    if stat is not None and stat.f_flag & getattr(os, "ST_RDONLY", 1):
        return errno.EROFS
    if not os.access(directory, os.W_OK):
        return errno.EACCES
    if stat is not None and stat.f_bavail * stat.f_frsize < MIN_FREE_BYTES:
        return errno.ENOSPC
    if _file_size_limited(partial):
        return errno.EFBIG
    return errno.EIO


def _file_size_limited(partial) -> bool:
    try:
        import resource
    except ImportError:  # Windows
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY:
        return False
    size = os.path.getsize(partial) if partial and os.path.isfile(partial) else soft
    return size >= soft - (1 << 16)


@contextlib.contextmanager
def write_errors(path):
    """Within the block, a failed write (see :func:`disk_failure`) becomes an ``OSError`` naming ``path``: for
    writers that stage several files (a model folder, an imported backbone) under hidden names."""
    try:
        yield
    except BaseException as error:
        failure = disk_failure(error, os.fspath(path))
        if failure is None or (isinstance(error, OSError) and error.filename == failure.filename):
            raise
        raise failure from None


def remove_quietly(path) -> None:
    """Remove a file or folder if it exists; never raises (used to clean up after a failure)."""
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process (or no way to tell): leave its file alone
    return True


def remove_stale_partials(directory, base: str | None = None) -> list:
    """Remove the hidden siblings (``.partial-<pid>-<n>-<name>``) in ``directory`` whose writer process is gone
    (killed before it could clean up); with ``base`` only those of that name. Returns what was removed."""
    directory = os.fspath(directory)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        match = re.fullmatch(re.escape(PARTIAL_PREFIX) + r"(\d+)-\d+-(.+)", name)
        if match is None or (base is not None and match.group(2) != base) or _process_alive(int(match.group(1))):
            continue
        remove_quietly(os.path.join(directory, name))
        removed.append(os.path.join(directory, name))
    return removed


def write_text_atomic(text: str, path) -> str:
    with atomic_file(path) as partial, open(partial, "w", encoding="utf-8") as stream:
        stream.write(text)
    return os.path.abspath(os.fspath(path))


def write_json_atomic(obj, path, indent: int = 2) -> str:
    return write_text_atomic(json.dumps(obj, indent=indent) + "\n", path)


def copy_file_atomic(source, target) -> str:
    """Copy the bytes of ``source`` (a regular file; a symbolic link is refused) to ``target`` atomically."""
    if os.path.islink(source) or not os.path.isfile(source):
        raise OSError(f"{source} is not a regular file")
    size = os.path.getsize(source)

    def same_size(partial):
        if os.path.getsize(partial) != size:
            raise IncompleteWrite(f"{target}: {os.path.getsize(partial)} of {size} bytes written")

    with atomic_file(target, check=same_size) as partial:
        shutil.copyfile(source, partial, follow_symlinks=False)
    return os.path.abspath(os.fspath(target))


def check_zip_file(partial: str) -> None:
    """A zip archive (``torch.save`` files and packed models are) has its directory at the end: a truncated one
    does not open."""
    import zipfile

    try:
        with zipfile.ZipFile(partial) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise IncompleteWrite(f"{partial}: {error}") from None


def save_torch(obj, path) -> str:
    """``torch.save`` to ``path`` (not atomic: for files inside a staged folder), flushed and checked; a failed
    write is an ``OSError`` naming ``path``."""
    import torch

    with write_errors(path):
        try:
            torch.save(obj, path)
            sync_file(path)
            check_zip_file(path)
        except BaseException as error:
            failure = disk_failure(error, path, path)
            if failure is not None:
                raise failure from None
            raise
    return os.path.abspath(os.fspath(path))


def torch_save_atomic(obj, path) -> str:
    import torch

    with atomic_file(path, check=check_zip_file) as partial:
        torch.save(obj, partial)
    return os.path.abspath(os.fspath(path))


# --- one writer at a time ------------------------------------------------------------------------------------

class Busy(Exception):
    """Another process (or thread) holds the lock; ``owner``: its pid when it wrote one."""

    def __init__(self, owner=None):
        super().__init__(owner)
        self.owner = owner


def lock_path(target) -> str:
    """The lock file of an output: a hidden sibling ``.<name>.lock``."""
    directory, base = os.path.split(os.path.abspath(os.fspath(target)))
    return os.path.join(directory, f".{base}.lock")


@contextlib.contextmanager
def exclusive_lock(path, refuse=None):
    """Hold the lock file ``path`` (created, with this process's pid in it) for the block; at once, when another
    process or thread holds it, raise ``refuse(owner pid or None)`` (default ``Busy``). ``flock``: the kernel
    releases the lock of a process that dies, so a killed holder never blocks the next run; the file is removed on
    release."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        descriptor = _acquire(path)
    except Busy as busy:
        if refuse is None:
            raise
        raise refuse(busy.owner) from None
    try:
        yield
    finally:
        _release(path, descriptor)


@contextlib.contextmanager
def hold_output(target, option: str, inside: bool = False):
    """Within the block this process is the only sslseg run writing ``target`` (a model folder, an output
    folder): its lock ``.<name>.lock`` beside it (``inside``: ``.sslseg.lock`` in the existing folder ``target``,
    for outputs whose parent may not be writable) is held, and the hidden files that killed runs left beside it or
    in it (``.partial-<pid>-...``) are removed first. A second run is refused with one line (``UserError``) naming
    the first one's process."""
    from sslseg.errors import UserError

    target = os.path.abspath(os.fspath(target)).rstrip(os.sep) or os.sep
    lock = os.path.join(target, ".sslseg.lock") if inside else lock_path(target)

    def refuse(owner):
        holder = f" (process {owner})" if owner else ""
        return UserError(f"another sslseg run{holder} is writing {option} {target}; wait for it to finish or "
                         f"choose another {option}")

    with exclusive_lock(lock, refuse):
        remove_stale_partials(os.path.dirname(target), os.path.basename(target))
        if os.path.isdir(target):
            remove_stale_partials(target)
        yield


def _acquire(path: str) -> int:
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(descriptor)
        except Busy:
            os.close(descriptor)
            raise Busy(_owner(path)) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        # the holder before us removes the file as it releases: a lock on a removed file locks nothing
        if current is not None and os.path.samestat(current, os.fstat(descriptor)):
            with contextlib.suppress(OSError):  # the pid only names the holder: a full disk must not stop the run
                os.ftruncate(descriptor, 0)
                os.write(descriptor, f"{os.getpid()}\n".encode())
            return descriptor
        _unlock(descriptor)
        os.close(descriptor)


def _owner(path: str):
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="ascii") as stream:
            return int(stream.read().split()[0])
    return None


def _release(path: str, descriptor: int):
    remove_quietly(path)      # POSIX: removed while still held, so nobody can lock the old file after us
    _unlock(descriptor)
    os.close(descriptor)


def _lock(descriptor: int):
    if os.name == "nt":
        import msvcrt

        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise Busy() from None
        return
    import fcntl

    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Busy() from None
    except OSError as error:
        # a file system without locks (some network mounts): go on unlocked rather than refuse every run
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise


def _unlock(descriptor: int):
    with contextlib.suppress(OSError):
        if os.name == "nt":
            import msvcrt

            os.lseek(descriptor, 0, os.SEEK_SET)
            msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(descriptor, fcntl.LOCK_UN)
