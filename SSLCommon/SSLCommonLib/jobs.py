"""Background jobs for a module's logic: one engine command in a child process (:class:`Job`), one job at a time
per logic (:class:`JobOwner`), and the temporary work folders that carry scene data out to the child process.

Nothing here names a module: a logic is a :class:`JobOwner` with its ``moduleName`` ("SSLSegmentation",
"SSLPretrain"), which prefixes its work folders and its log lines.

A work folder is named ``<moduleName>-<purpose>-<pid>-<random>`` after the Slicer process that made it, under
Slicer's temporary path. Scene data exported for a run (patient volumes) lives there only while the run does: the job
removes it when it ends, and :func:`removeStaleWorkFolders`, called when a logic is created, removes what a crashed
Slicer left behind. A folder that holds a finished model (``<folder>/<sub>/model.json``) is never removed: a
finished model is never thrown away.

Console::

    from SSLCommonLib.jobs import Job, removeStaleWorkFolders
    job = Job("download", ["models", "download", "ResEncL-OpenMind-S3D", "--progress", "json"],
              moduleName="SSLSegmentation").start()
    job.waitForCompletion()
    removeStaleWorkFolders("SSLSegmentation")       # -> the folders it removed
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import time

from sslseg.errors import UserError

from .processRunner import ProcessCancelled, ProcessFailed, ProcessRunner, pythonModuleCommand

STALE_AFTER_SECONDS = 24 * 3600
HEARTBEAT_SECONDS = 60  # a running job touches its work folder this often, so that it never looks stale
ENDING_SECONDS = 10  # how long Job.end waits for the killed run's last output before it returns
_ACTIVE_WORK_FOLDERS = set()  # work folders of this process's jobs that have not ended
_RUNNING_JOBS = set()  # this process's started jobs that have not ended (ended when the application quits)


def engineCommand(args):
    """``(argv, env)`` running the engine CLI ``sslseg <args>`` in a child process that imports the same ``sslseg``
    as Slicer does (PYTHONPATH points at the folder holding it)."""
    return pythonModuleCommand("sslseg", args)


def temporaryParent():
    """Slicer's temporary path (``slicer.app.temporaryPath``), or the system's outside Slicer."""
    try:
        import slicer

        parent = getattr(getattr(slicer, "app", None), "temporaryPath", None)
    except ImportError:
        parent = None
    return parent or tempfile.gettempdir()


def makeTemporaryFolder(prefix):
    """A new work folder ``<prefix><pid>-<random>`` under :func:`temporaryParent` (``prefix``: see
    :meth:`JobOwner.makeWorkFolder`)."""
    parent = temporaryParent()
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)


def processAlive(pid):
    """True when a process with this id exists (it may belong to another user)."""
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        exitCode = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(exitCode))
        kernel32.CloseHandle(handle)
        return exitCode.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holdsFinishedModel(folder):
    """The first ``<folder>/<sub>`` holding a ``model.json``, or None."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return None
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(entry.path, "model.json")):
            return entry.path
    return None


def _ownerPid(moduleName):
    """The pattern of ``moduleName``'s work folder names; group 1 is the id of the Slicer process that made it."""
    return re.compile(rf"^{re.escape(moduleName)}-(?:[A-Za-z]+-)?(\d+)-")


def _isStale(entry, ownerPid, now, maxAge):
    if os.path.abspath(entry.path) in _ACTIVE_WORK_FOLDERS:
        return False
    match = ownerPid.match(entry.name)
    if match and not processAlive(int(match.group(1))):
        return True
    return now - entry.stat(follow_symlinks=False).st_mtime > maxAge


def removeStaleWorkFolders(moduleName, parent=None, maxAge=STALE_AFTER_SECONDS, now=None):
    """Remove ``moduleName``'s work folders under ``parent`` (default :func:`temporaryParent`) whose Slicer process
    has ended, or that no running job has touched for ``maxAge`` seconds. Folders of this process's running jobs and
    folders holding a finished model are kept (the latter are logged). Returns the removed paths."""
    parent = parent or temporaryParent()
    prefix, ownerPid = moduleName + "-", _ownerPid(moduleName)
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if not _isStale(entry, ownerPid, now, maxAge):
                continue
        except OSError:
            continue
        model = holdsFinishedModel(entry.path)
        if model:
            logging.warning("%s: a finished model is kept in %s (add it with 'Import model')", moduleName, model)
            continue
        if holdsResumableRun(entry.path):
            logging.warning("%s: an interrupted run can be resumed from %s", moduleName, entry.path)
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    if removed:
        logging.info("%s: removed %d work folder(s) left by ended runs: %s", moduleName, len(removed),
                     ", ".join(removed))
    return removed


RESUME_FILE = "resume.json"  # in a work folder: how to run its interrupted job again with --resume


def holdsResumableRun(folder):
    """True when ``folder`` holds a job description (``RESUME_FILE``) and an engine checkpoint (``.*.resume.pth``,
    ``sslseg.finetuning.resume``) of a run that failed or was killed."""
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return RESUME_FILE in names and any(n.startswith(".") and n.endswith(".resume.pth") for n in names)


class ResultKept(UserError):
    """The run finished but its result could not be put in place; it stays at ``path``, and the job's work folder
    is not removed."""

    def __init__(self, message, path):
        super().__init__(message)
        self.path = path


class Job:
    """One background run (fine-tuning, segmentation, download). ``status``: "running", "succeeded", "failed",
    "cancelled"; ``result`` (model path, segmentation node, ...) when succeeded; ``errorMessage`` otherwise.

    ``moduleName`` starts its log lines. Callbacks: ``onEvent(event)`` (JSON progress events), ``onLog(text)``,
    ``onFinished(job)``. ``complete(done)`` turns the engine's "done" event into the result; raising
    :class:`ResultKept` there keeps the work folder."""

    def __init__(self, kind, args, moduleName, workFolder=None, complete=None, onEvent=None, onLog=None,
                 onFinished=None, resumable=False):
        self.kind = kind
        self.resumable = resumable  # a failed run whose work folder holds a checkpoint keeps it for a resume
        self.moduleName = moduleName
        self.workFolder = os.path.abspath(workFolder) if workFolder else None
        self._complete = complete
        self.onFinished = onFinished
        self.onLog = onLog
        self.result = None
        self.errorMessage = None
        self.keptPath = None  # where a finished result was kept when it could not be put in place
        self.status = "running"
        self.endReason = None  # why the job was ended without a Cancel: "the scene was closed", ...
        self._whenEnded = []  # callables run once when the process has ended, before onFinished
        self._lastHeartbeat = 0.0
        if self.workFolder:
            _ACTIVE_WORK_FOLDERS.add(self.workFolder)
        try:
            argv, env = engineCommand(args)
        except BaseException:
            self._removeWorkFolder()
            raise
        self.runner = ProcessRunner(argv, env=env, onEvent=onEvent, onLog=onLog, onFinished=self._processFinished,
                                    onPoll=self._heartbeat)

    def _removeWorkFolder(self):
        if self.workFolder:
            _ACTIVE_WORK_FOLDERS.discard(self.workFolder)
            shutil.rmtree(self.workFolder, ignore_errors=True)

    def _heartbeat(self):
        if self.workFolder and time.monotonic() - self._lastHeartbeat > HEARTBEAT_SECONDS:
            self._lastHeartbeat = time.monotonic()
            try:
                os.utime(self.workFolder)
            except OSError:
                pass

    @property
    def events(self):
        return self.runner.events

    def start(self, autoPoll=None):
        try:
            self.runner.start(autoPoll=autoPoll)
        except BaseException as error:  # e.g. the Python executable could not be started
            self.status, self.errorMessage = "failed", str(error)
            self._removeWorkFolder()
            raise
        _RUNNING_JOBS.add(self)
        return self

    def whenEnded(self, callback):
        """Call ``callback()`` once when the process has ended, whatever the outcome (before ``onFinished``)."""
        self._whenEnded.append(callback)

    def poll(self):
        return self.runner.poll()

    def cancel(self):
        self.runner.cancel()
        self.runner.poll()

    def end(self, reason):
        """End the run as Cancel does (process tree killed, nothing registered or added to the scene, work folder
        removed), because of ``reason`` ("the scene was closed", ...), which is logged and kept in ``endReason``."""
        if self.status != "running":
            return
        self.endReason = reason
        logging.warning("%s: %s ended because %s", self.moduleName, self.kind, reason)
        if self.onLog:
            try:
                self.onLog(f"{self.kind} ended because {reason}")
            except Exception:  # noqa: BLE001 - e.g. a panel already gone at quit: the run must still end
                logging.exception("%s: onLog callback failed", self.moduleName)
        self.cancel()
        # finish here, not at a later timer tick that may never come (quit): the killed tree's output pipes close
        # within moments, then the end is reported (nothing added, work folder removed)
        deadline = time.monotonic() + ENDING_SECONDS
        while self.poll() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _processFinished(self, runner):
        _RUNNING_JOBS.discard(self)
        for callback in self._whenEnded:
            try:
                callback()
            except Exception:  # noqa: BLE001 - the run's outcome must still be reported
                logging.exception("%s: clean-up after %s failed", self.moduleName, self.kind)
        keep = False
        try:
            if runner.status == "succeeded":
                keep = self._useResult(runner.result or {})
            else:
                self.status, self.errorMessage = runner.status, runner.errorMessage
                # a crash or kill (not a Cancel or an ending) keeps what a resume needs
                keep = self.resumable and runner.status == "failed" and holdsResumableRun(self.workFolder)
                if keep:
                    self.keptPath = self.workFolder
        finally:
            if keep:
                _ACTIVE_WORK_FOLDERS.discard(self.workFolder)
            else:
                self._removeWorkFolder()
            if self.onFinished:
                try:
                    self.onFinished(self)
                except Exception:  # noqa: BLE001
                    logging.exception("%s: onFinished callback failed", self.moduleName)

    def _useResult(self, done):
        """Status and result from the "done" event; True when the work folder must be kept."""
        try:
            self.result = self._complete(done) if self._complete else done
            self.status = "succeeded"
            return False
        except ResultKept as error:
            self.status, self.errorMessage, self.keptPath = "failed", str(error), error.path
            logging.error("%s: %s", self.moduleName, error)
            if self.onLog:
                self.onLog(str(error))
            return True
        except Exception as error:  # noqa: BLE001 - importing the result failed: report, keep nothing
            logging.exception("%s: %s result could not be used", self.moduleName, self.kind)
            self.status, self.errorMessage = "failed", str(error)
            return False

    def waitForCompletion(self, timeout=None):
        """Block until done; returns ``result``. Raises ProcessCancelled, or ProcessFailed with the engine's
        message."""
        self.runner.waitForCompletion(timeout=timeout, raiseOnError=False)
        if self.status == "cancelled":
            raise ProcessCancelled(f"{self.kind} was cancelled")
        if self.status != "succeeded":
            raise ProcessFailed(f"{self.kind} failed: {self.errorMessage}", self.runner.returncode)
        return self.result


def endRunningJobs(reason="the application quit"):
    """End every job of this process that still runs (see :meth:`Job.end`); called when the application quits, so
    that no training process outlives Slicer (the runner starts it in a session of its own, which would not get
    Slicer's end)."""
    for job in list(_RUNNING_JOBS):
        job.end(reason)


atexit.register(endRunningJobs)


def _currentScene():
    """``slicer.mrmlScene`` where there is one (Slicer, the test harness), else None."""
    try:
        import slicer
    except ImportError:
        return None
    return getattr(slicer, "mrmlScene", None)


class JobOwner:
    """One background job at a time: what a module's logic inherits. Subclasses set ``moduleName``.

    A started job ends (as on Cancel) when the scene starts closing: its inputs came from that scene and its
    result would go into the next one. Nothing is then added to either scene."""

    moduleName = None
    currentJob = None

    def makeWorkFolder(self, purpose=""):
        """A new work folder ``<moduleName>-<purpose>-<pid>-<random>`` (see the module docstring)."""
        return makeTemporaryFolder(f"{self.moduleName}-{purpose + '-' if purpose else ''}")

    def removeStaleWorkFolders(self):
        """This module's work folders left by ended runs (see :func:`removeStaleWorkFolders`)."""
        return removeStaleWorkFolders(self.moduleName)

    def newJob(self, kind, args, **options):
        """A :class:`Job` (not started) that logs as this module."""
        return Job(kind, args, self.moduleName, **options)

    def _refuseIfRunning(self):
        job = self.currentJob
        if job is not None and job.status == "running" and job.poll():
            raise UserError(f"{job.kind} is still running: wait for it or cancel it first")

    def _run(self, job, waitForCompletion):
        try:
            self._refuseIfRunning()
        except UserError:
            job._removeWorkFolder()  # the refused job's inputs were already written out
            raise
        self.currentJob = job
        job.start(autoPoll=False if waitForCompletion else None)
        self._endWithScene(job)
        return job.waitForCompletion() if waitForCompletion else job

    @staticmethod
    def _endWithScene(job):
        scene = _currentScene()
        if scene is None or not hasattr(scene, "StartCloseEvent"):
            return
        tag = scene.AddObserver(scene.StartCloseEvent, lambda caller, event: job.end("the scene was closed"))
        job.whenEnded(lambda: scene.RemoveObserver(tag))

    def endRun(self, reason):
        """End the running job, if any, because of ``reason`` (the panel: the module was left or closed)."""
        if self.currentJob is not None:
            self.currentJob.end(reason)

    def cancel(self):
        """Cancel the running job: its process tree is killed; nothing is registered or added to the scene."""
        if self.currentJob is not None and self.currentJob.status == "running":
            self.currentJob.cancel()
