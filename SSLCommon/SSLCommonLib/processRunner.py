"""Long work in a separate process, so that Slicer never freezes: launch a command, read its output without blocking,
turn ``--progress json`` lines into events, and kill the whole process tree on Cancel.

Generic (no module-specific code): the SSLSegmentation and SSLPretrain modules both use it.

The runner itself needs no Qt. Something must call :meth:`ProcessRunner.poll` regularly: inside Slicer
:meth:`ProcessRunner.start` creates a ``qt.QTimer`` that does it (``autoPoll``); in console scripts and tests call
:meth:`ProcessRunner.waitForCompletion`, or ``poll()`` in your own loop. Callbacks always run in the thread that
calls ``poll()`` (Slicer's main thread), never in the reader threads.

Example (console)::

    from SSLCommonLib.jobs import engineCommand
    argv, env = engineCommand(["predict", "--model", model, "--input", path, "--output", out, "--progress", "json"])
    runner = ProcessRunner(argv, env=env, onEvent=lambda event: print(event.get("event"), event.get("step")))
    runner.start()
    runner.waitForCompletion()      # raises ProcessFailed with the engine's message when it failed
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time


class ProcessFailed(RuntimeError):
    """The process ended with an error (``message`` is the engine's last error, or the tail of its stderr)."""

    def __init__(self, message, returncode=None):
        super().__init__(message)
        self.returncode = returncode


class ProcessCancelled(RuntimeError):
    """The process was cancelled by the user."""


# --- building the command line ------------------------------------------------------------------------------------


def _insideSlicer():
    """True in the Slicer application (its Qt bindings and application object exist); False in plain Python and
    in the headless test harness (slicer-core has a ``slicer.app`` stand-in there, but no Qt)."""
    try:
        import qt
        import slicer
    except ImportError:
        return False
    return getattr(slicer, "app", None) is not None and qt.QCoreApplication.instance() is not None


def _slicerProcessEvents():
    if _insideSlicer():
        import slicer

        return slicer.app.processEvents
    return lambda: None


def pythonExecutable():
    """The Python to run child processes with: ``PythonSlicer`` inside Slicer (``sys.executable`` is the Slicer
    application there), the current interpreter elsewhere."""
    if _insideSlicer():
        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = os.path.join(os.path.dirname(sys.executable), "PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if os.path.isfile(candidate):
            return candidate
        raise ProcessFailed("cannot find the PythonSlicer executable next to Slicer")
    return sys.executable


def packageRoot(packageName):
    """The folder that contains ``packageName`` (to put on the child's PYTHONPATH), or None if not importable."""
    spec = importlib.util.find_spec(packageName)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        packageDir = list(spec.submodule_search_locations)[0]
    elif spec.origin:
        packageDir = spec.origin
    else:
        return None
    return os.path.dirname(os.path.abspath(packageDir))


def pythonModuleCommand(moduleName, args, packageName=None):
    """``(args, env)`` that run ``python -m moduleName args...`` in a child process which imports the same copy of
    ``packageName`` (default: the top-level package of ``moduleName``) as this process."""
    packageName = packageName or moduleName.split(".")[0]
    env = dict(os.environ)
    root = packageRoot(packageName)
    if root:
        current = env.get("PYTHONPATH")
        env["PYTHONPATH"] = root + (os.pathsep + current if current else "")
    # Child output must arrive line by line, not in 8 kB blocks.
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return [pythonExecutable(), "-m", moduleName, *[str(a) for a in args]], env


# --- the runner ---------------------------------------------------------------------------------------------------


class ProcessRunner:
    """Run one command in its own process group; parse JSON progress events from stdout.

    Callbacks (all optional):

    - ``onEvent(event: dict)`` for each JSON object printed on stdout (``{"event": "progress", ...}``);
    - ``onLog(text: str)`` for every other output line (stderr, non-JSON stdout) and for ``log`` events;
    - ``onFinished(runner)`` once, after the process ended (check ``runner.status``: "succeeded", "failed",
      "cancelled");
    - ``onPoll()`` at each ``poll()`` while the process runs (e.g. to show that its work folder is in use).

    After the end: ``returncode``, ``status``, ``result`` (the ``done`` event, or None), ``errorMessage``,
    ``events`` (all parsed events), ``stderrTail`` (last lines of stderr).
    """

    def __init__(self, args, env=None, cwd=None, onEvent=None, onLog=None, onFinished=None, keepEvents=True,
                 onPoll=None):
        self.args = [str(a) for a in args]
        self.env = env
        self.cwd = cwd
        self.onEvent = onEvent
        self.onLog = onLog
        self.onFinished = onFinished
        self.onPoll = onPoll
        self.keepEvents = keepEvents
        self.process = None
        self.returncode = None
        self.status = "new"  # new -> running -> succeeded | failed | cancelled
        self.result = None
        self.errorMessage = None
        self.events = []
        self.stderrTail = []
        self._queue = queue.Queue()
        self._readers = []
        self._cancelRequested = False
        self._finishedReported = False
        self._timer = None
        self._exitSeen = None
        self.leftoverGraceSeconds = 2.0
        self.startTime = None

    # -- lifecycle --

    @property
    def pid(self):
        return self.process.pid if self.process else None

    @property
    def running(self):
        return self.status == "running"

    @property
    def finished(self):
        return self.status in ("succeeded", "failed", "cancelled")

    def start(self, autoPoll=None, pollIntervalMs=200):
        """Start the process. ``autoPoll``: poll from a ``qt.QTimer`` (default: when running inside Slicer)."""
        if self.process is not None:
            raise RuntimeError("this runner was already started")
        kwargs = {}
        if os.name == "nt":
            # No console window; own process group so that taskkill /T finds the children.
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: Cancel kills the child's children too
        logging.debug("ProcessRunner: %s", " ".join(self.args))
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        self.status = "running"
        self.startTime = time.monotonic()
        # Pipes are read by threads (portable; select() does not work on Windows pipes); poll() drains the queue.
        for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            reader = threading.Thread(target=self._read, args=(stream, name), daemon=True)
            reader.start()
            self._readers.append(reader)
        if autoPoll is None:
            autoPoll = _insideSlicer()
        if autoPoll:
            import qt

            self._timer = qt.QTimer()
            self._timer.setInterval(pollIntervalMs)
            self._timer.connect("timeout()", self.poll)
            self._timer.start()
        return self

    def _read(self, stream, name):
        try:
            for line in stream:
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((name, None))

    def poll(self):
        """Handle the output received so far and notice the end of the process. Non-blocking; returns True while
        the process is running (or its last output is still being handled)."""
        if self.process is None or self._finishedReported:
            return False
        self._call(self.onPoll)
        self._drain()
        if self.process.poll() is None:
            return True
        if any(reader.is_alive() for reader in self._readers):
            # The process ended but something it started still holds its output pipes open (e.g. a worker that
            # outlived a crash): after a grace period, end those leftovers rather than wait for them forever.
            if self._exitSeen is None:
                self._exitSeen = time.monotonic()
                return True
            if time.monotonic() - self._exitSeen < self.leftoverGraceSeconds:
                return True
            killProcessTree(self.process, timeout=1.0)
            for reader in self._readers:
                reader.join(timeout=1.0)
        self._drain()
        self._finish()
        return False

    def _drain(self):
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is None or not line.strip():
                continue
            if name == "stdout" and line.lstrip().startswith("{"):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    event = None
                if isinstance(event, dict) and "event" in event:
                    self._handleEvent(event)
                    continue
            if name == "stderr":
                self.stderrTail = (self.stderrTail + [line])[-40:]
            self._call(self.onLog, line)

    def _handleEvent(self, event):
        if self.keepEvents:
            self.events.append(event)
        kind = event.get("event")
        if kind == "done":
            self.result = event
        elif kind == "error":
            self.errorMessage = str(event.get("message", "unknown error"))
        elif kind == "log":
            self._call(self.onLog, str(event.get("message", "")))
        self._call(self.onEvent, event)

    def _call(self, callback, *args):
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a broken display callback must not lose the process's outcome
            logging.exception("ProcessRunner callback failed")

    def _finish(self):
        self.returncode = self.process.returncode
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        for stream in (self.process.stdout, self.process.stderr):
            try:
                stream.close()
            except OSError:
                pass
        if self._cancelRequested:
            self.status = "cancelled"
            self.errorMessage = "cancelled"
        elif self.returncode == 0 and self.errorMessage is None:
            self.status = "succeeded"
        else:
            self.status = "failed"
            if not self.errorMessage:
                # Engine UserErrors print one line on stderr ("sslseg finetune: error: ..."); else the traceback tail.
                tail = [line for line in self.stderrTail if line.strip()]
                detail = tail[-1] if tail else "no output"
                self.errorMessage = f"the process exited with code {self.returncode}: {detail}"
        self._finishedReported = True
        self._call(self.onFinished, self)

    def cancel(self, timeout=5.0):
        """Kill the process and all its children (SIGTERM, then SIGKILL after ``timeout`` s). The end is reported
        through ``onFinished`` at the next ``poll()`` with status "cancelled"."""
        if self.process is None or self.finished:
            return
        self._cancelRequested = True
        killProcessTree(self.process, timeout)

    def waitForCompletion(self, pollInterval=0.1, timeout=None, raiseOnError=True):
        """Block until the process ends, handling its output (console scripts, tests). Returns ``result`` (the
        ``done`` event). Raises ProcessCancelled / ProcessFailed unless ``raiseOnError`` is False."""
        if self.process is None:
            self.start(autoPoll=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        # In Slicer's console the application keeps repainting (progress shows) while the call blocks.
        processEvents = _slicerProcessEvents()
        try:
            while self.poll():
                if deadline is not None and time.monotonic() > deadline:
                    self.cancel()
                    self.poll()
                    raise ProcessFailed(f"the process did not finish within {timeout} s and was stopped")
                processEvents()
                time.sleep(pollInterval)
        except KeyboardInterrupt:
            # Ctrl+C in a console script: do not leave a training process running in the background.
            self.cancel()
            while self.poll():
                time.sleep(pollInterval)
            raise
        if raiseOnError:
            if self.status == "cancelled":
                raise ProcessCancelled("cancelled")
            if self.status == "failed":
                raise ProcessFailed(self.errorMessage, self.returncode)
        return self.result


def killProcessTree(process, timeout=5.0):
    """Terminate ``process`` (started in its own process group / session) and every process it started."""
    if process.poll() is not None and os.name == "nt":
        return
    if os.name == "nt":
        # taskkill /T walks the tree of child processes; /F because workers ignore polite requests while busy.
        subprocess.run(["taskkill", "/PID", str(process.pid), "/T", "/F"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    else:
        try:
            groupId = os.getpgid(process.pid)
        except ProcessLookupError:
            groupId = process.pid  # leader already reaped; its group may still hold children
        _signalGroup(groupId, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None and not _groupAlive(groupId):
                break
            time.sleep(0.05)
        _signalGroup(groupId, signal.SIGKILL)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _signalGroup(groupId, signalNumber):
    try:
        os.killpg(groupId, signalNumber)
    except (ProcessLookupError, PermissionError):
        pass


def _groupAlive(groupId):
    try:
        os.killpg(groupId, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
