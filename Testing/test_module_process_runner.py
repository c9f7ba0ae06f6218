"""The background-process runner of the Slicer modules (SSLCommonLib.processRunner), on real processes."""

import json
import sys
import textwrap
import time

import pytest

from process_tree import alive, survivors
from SSLCommonLib.processRunner import (
    ProcessCancelled,
    ProcessFailed,
    ProcessRunner,
    pythonModuleCommand,
)

# A child that reports progress as the engine does, and starts a grandchild (like a data-loader worker) so that
# Cancel has a process tree to kill.
CHILD = textwrap.dedent(
    """
    import json, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(sys.argv[1], "w") as f:
        f.write(str(grandchild.pid))
    def emit(**event):
        print(json.dumps(event), flush=True)
    steps = int(sys.argv[2])
    emit(event="start", total_steps=steps, device="cpu", note="test")
    print("a warning on stderr", file=sys.stderr, flush=True)
    print("plain text on stdout", flush=True)
    for step in range(1, steps + 1):
        emit(event="progress", phase="train", step=step, total=steps, loss=1.0 / step, lr=1e-3, val_dice=None,
             elapsed=0.01 * step, eta=0.01 * (steps - step))
        time.sleep(float(sys.argv[3]))
    if sys.argv[4] == "fail":
        emit(event="error", message="the data folder is empty")
        sys.exit(2)
    grandchild.kill()
    emit(event="done", model="/some/model")
    """
)



def _runner(tmp_path, steps, delay, outcome="ok", **callbacks):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    pidFile = tmp_path / "grandchild.pid"
    return ProcessRunner([sys.executable, str(script), str(pidFile), steps, delay, outcome], **callbacks), pidFile


def test_events_logs_and_result(tmp_path):
    events, logs, finished = [], [], []
    runner, _ = _runner(tmp_path, 5, 0.0, onEvent=events.append, onLog=logs.append, onFinished=finished.append)
    result = runner.start(autoPoll=False).waitForCompletion(pollInterval=0.02)
    assert result == {"event": "done", "model": "/some/model"}
    assert runner.status == "succeeded" and runner.returncode == 0
    assert [e["event"] for e in events] == ["start"] + ["progress"] * 5 + ["done"]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4, 5]
    assert "a warning on stderr" in logs and "plain text on stdout" in logs
    assert finished == [runner]  # reported exactly once
    assert runner.poll() is False


def test_failure_reports_the_engine_message(tmp_path):
    runner, pidFile = _runner(tmp_path, 2, 0.0, outcome="fail")
    with pytest.raises(ProcessFailed, match="the data folder is empty"):
        runner.waitForCompletion(pollInterval=0.02, timeout=60)
    assert runner.status == "failed" and runner.returncode == 2
    # The failed child left its grandchild running with our pipes open: the runner ends it instead of hanging.
    assert not alive(int(pidFile.read_text()))


def test_failure_without_event_uses_stderr(tmp_path):
    runner = ProcessRunner([sys.executable, "-c", "import sys; print('sslseg predict: error: no model', "
                                                  "file=sys.stderr); sys.exit(2)"])
    runner.start(autoPoll=False)
    assert runner.waitForCompletion(pollInterval=0.02, raiseOnError=False) is None
    assert runner.status == "failed"
    assert "sslseg predict: error: no model" in runner.errorMessage


def test_poll_does_not_block_and_cancel_kills_the_tree(tmp_path):
    progress, finished = [], []
    runner, pidFile = _runner(tmp_path, 1000, 0.05, onEvent=progress.append, onFinished=finished.append)
    runner.start(autoPoll=False)
    childPid = runner.pid
    deadline = time.monotonic() + 30
    while not (pidFile.exists() and pidFile.read_text() and len(progress) >= 3):
        began = time.monotonic()
        assert runner.poll() is True
        assert time.monotonic() - began < 0.5  # poll() returns at once while the child keeps running
        assert time.monotonic() < deadline, "the child did not report progress"
        time.sleep(0.02)
    grandchildPid = int(pidFile.read_text())
    assert alive(childPid) and alive(grandchildPid)

    runner.cancel(timeout=5)
    while runner.poll():
        time.sleep(0.02)
    assert runner.status == "cancelled"
    assert finished == [runner]
    assert not alive(childPid)
    assert not survivors([grandchildPid], timeout=5), "the grandchild survived Cancel"


def test_wait_raises_cancelled(tmp_path):
    runner, _ = _runner(tmp_path, 1000, 0.05)
    runner.start(autoPoll=False)
    runner.onEvent = lambda event: runner.cancel() if event.get("step") == 2 else None
    with pytest.raises(ProcessCancelled):
        runner.waitForCompletion(pollInterval=0.02)


def test_python_module_command_reaches_the_same_package(tmp_path):
    args, env = pythonModuleCommand("sslseg", ["--version"])
    runner = ProcessRunner(args, env=env, cwd=str(tmp_path))  # cwd outside the repository
    lines = []
    runner.onLog = lines.append
    runner.waitForCompletion(pollInterval=0.02)
    import sslseg

    assert any(line.strip() == f"sslseg {sslseg.__version__}" for line in lines), lines
    assert json.dumps(args)  # plain strings
