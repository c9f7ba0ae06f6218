"""The engine runs where there is no Slicer: every module of ``sslseg`` imports with ``slicer``, ``vtk`` and ``qt``
made unimportable, and none of them gets imported on the way (a headless GPU server has none of them)."""

import json
import os
import subprocess
import sys
import textwrap

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(
    """
    import importlib, io, json, os, runpy, sys, traceback, contextlib

    BLOCKED = ("slicer", "slicer_core", "vtk", "vtkmodules", "qt", "ctk", "PythonQt", "mrml")
    attempts = []

    class BlockSlicer:
        # an environment without slicer-core / Slicer's Python: these imports fail like a missing package
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in BLOCKED:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)", name=name)
            return None

    sys.meta_path.insert(0, BlockSlicer())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]

    root = sys.argv[1]
    modules = []
    for directory, subdirectories, files in os.walk(os.path.join(root, "sslseg")):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(directory, name), root)[:-3]
                modules.append(relative.replace(os.sep, ".").removesuffix(".__init__"))

    report = {"modules": modules, "imported": [], "failed": {}}
    for module in modules:
        try:
            if module == "sslseg.__main__":
                # `python -m sslseg --version`: runs the CLI entry point instead of importing it
                sys.argv = ["sslseg", "--version"]
                with contextlib.redirect_stdout(io.StringIO()):
                    try:
                        runpy.run_module("sslseg", run_name="__main__")
                    except SystemExit as exit:
                        if exit.code not in (0, None):
                            raise
            else:
                importlib.import_module(module)
            report["imported"].append(module)
        except BaseException:
            report["failed"][module] = traceback.format_exc(limit=3)
    report["attempts"] = sorted(set(attempts))
    report["loaded"] = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
    print("REPORT " + json.dumps(report))
    """
)


def test_every_engine_module_imports_without_slicer_vtk_qt(tmp_path):
    environment = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", CHILD, REPO_ROOT], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("REPORT ")]
    assert line, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(line[-1][len("REPORT "):])

    # the walk found the package (no module skipped): a few known modules, and every module was tried
    assert {"sslseg", "sslseg.imageio", "sslseg.datasets", "sslseg.cli", "sslseg.__main__"} <= set(report["modules"])
    assert not report["failed"], "\n".join(f"{name}:\n{trace}" for name, trace in report["failed"].items())
    assert report["imported"] == report["modules"]
    # and nothing of Slicer, VTK or Qt was imported, not even attempted by our code paths
    assert report["loaded"] == []
    ours = [name for name in report["attempts"] if name.split(".")[0] in ("slicer", "vtk", "qt")]
    assert ours == [], (f"importing the engine tried to import {ours} (our code, or a library's optional import on "
                        "the way: the engine must not depend on them)")


def test_api_functions_stay_callable_after_their_module_is_imported():
    # a module named like the lazily exported function (once ``sslseg.finetune``) replaced the function with the
    # module when imported; CI once failed on exactly this import order. The functions now live in packages with
    # other names (sslseg.finetuning, sslseg.pretraining), and no module may take the functions' names again.
    code = textwrap.dedent(
        """
        import importlib.util, types
        import sslseg.finetuning, sslseg.finetuning.trainer, sslseg.pretraining, sslseg
        assert callable(sslseg.finetune) and callable(sslseg.pretrain)
        assert isinstance(sslseg.finetune, types.FunctionType) and isinstance(sslseg.pretrain, types.FunctionType)
        assert all(importlib.util.find_spec(f"sslseg.{name}") is None for name in ("finetune", "pretrain"))
        try:
            sslseg.finetune(out=None)
        except Exception as error:  # the function ran: it refuses a missing output folder
            print(type(error).__name__, error)
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "UserError" in result.stdout and "--out" in result.stdout
