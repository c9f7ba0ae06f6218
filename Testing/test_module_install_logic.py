"""Dependency install logic of the Slicer modules: the check runs on this venv's real package metadata (no network,
no GUI); installing goes through collaborators, here recorders or a real offline pip."""

import subprocess
import sys
import types

import pytest

from SSLCommonLib.installLogic import InstallError, InstallLogic, Requirement


def _forbidden(*args, **kwargs):
    raise AssertionError("must not be called")


class Recorder:
    def __init__(self, answer=True, effect=None):
        self.calls = []
        self.answer = answer
        self.effect = effect

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.effect:
            self.effect(*args, **kwargs)
        return self.answer


def _installFake(sitePath, distribution, version="1.0"):
    """What pip leaves behind: a .dist-info folder with METADATA, found by importlib.metadata on sys.path."""
    info = sitePath / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")


@pytest.fixture
def fakeSite(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def test_engine_requirements_are_satisfied_in_this_venv(monkeypatch):
    import socket

    def noNetwork(*args, **kwargs):
        raise AssertionError("the dependency check must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", noNetwork)
    monkeypatch.setattr(socket, "create_connection", noNetwork)
    logic = InstallLogic.forEngine("Test", pipInstall=_forbidden, confirm=_forbidden, installTorch=_forbidden,
                                   askRestart=_forbidden)
    assert logic.missing() == (False, [], [])
    assert logic.missingDescription() == ""
    assert logic.ensure() is True  # nothing to do: no dialog, no pip
    specs = {r.spec: r for r in logic.requirements}
    assert specs["dynamic-network-architectures>=0.4.4,<0.5"].noDeps
    assert not specs["monai>=1.4"].noDeps
    for host in ("torch", "SimpleITK", "requests", "numpy"):
        assert host in logic.hostPackages


def test_one_confirmation_lists_everything_and_decline_installs_nothing():
    requirements = [Requirement("sslseg_absent_a", "sslseg-absent-a>=1"),
                    Requirement("sslseg_absent_b", "sslseg-absent-b<0.5,>=0.4", noDeps=True),
                    Requirement("numpy", "numpy>=1.0")]  # installed: not listed
    confirm = Recorder(answer=False)
    logic = InstallLogic(requirements, torchRequirement=">=999", requester="Test", pipInstall=_forbidden,
                         confirm=confirm, installTorch=_forbidden, askRestart=_forbidden)
    torchMissing, toInstall, hostProblems = logic.missing()
    assert torchMissing and [r.spec for r in toInstall] == ["sslseg-absent-a>=1", "sslseg-absent-b<0.5,>=0.4"]
    assert hostProblems == []
    assert logic.ensure() is False
    (text,), _ = confirm.calls[0]
    assert len(confirm.calls) == 1
    for expected in ("torch>=999", "PyTorch extension", "sslseg-absent-a>=1", "sslseg-absent-b<0.5,>=0.4",
                     "without its dependencies"):
        assert expected in text
    assert "numpy" not in text


def test_install_order_no_deps_and_host_pins(fakeSite):
    seen = {}

    def pip(specs, noDeps, constraints, requester):
        with open(constraints) as stream:
            seen.setdefault("constraints", stream.read())
        seen.setdefault("calls", []).append((list(specs), noDeps))
        for spec in specs:
            _installFake(fakeSite, spec.split(">")[0].split("<")[0])

    torch = Recorder(effect=lambda requirement: _installFake(fakeSite, "torch", "999.0"))
    requirements = [Requirement("sslseg_fake_a", "sslseg-fake-a>=1"),
                    Requirement("sslseg_fake_b", "sslseg-fake-b>=0.5,<2", noDeps=True)]
    # a restart may be offered: the torch this test process loaded is not the (fake) one now installed
    logic = InstallLogic(requirements, torchRequirement=">=999", pipInstall=pip, confirm=Recorder(),
                         installTorch=torch, askRestart=Recorder())
    assert logic.ensure() is True
    assert torch.calls == [((">=999",), {})]
    assert seen["calls"] == [(["sslseg-fake-a>=1"], False), (["sslseg-fake-b>=0.5,<2"], True)]
    import numpy

    assert f"numpy=={numpy.__version__}" in seen["constraints"].splitlines()
    import importlib.metadata

    assert f"torch=={importlib.metadata.version('torch')}" in seen["constraints"].splitlines()
    assert logic.missing()[1] == []


def test_host_packages_are_never_reinstalled():
    logic = InstallLogic([Requirement("numpy", "numpy>=999"), Requirement("SimpleITK", "SimpleITK>=999")],
                         pipInstall=_forbidden, confirm=_forbidden, installTorch=_forbidden, askRestart=_forbidden)
    _, toInstall, hostProblems = logic.missing()
    assert toInstall == [] and [r.importName for r in hostProblems] == ["numpy", "SimpleITK"]
    with pytest.raises(InstallError, match="Slicer itself provides"):
        logic.ensure()


def test_restart_offered_when_an_imported_package_changed(fakeSite, monkeypatch):
    monkeypatch.setitem(sys.modules, "sslseg_fake_loaded", types.ModuleType("sslseg_fake_loaded"))
    restart = Recorder()
    logic = InstallLogic([Requirement("sslseg_fake_loaded", "sslseg-fake-loaded>=1")],
                         pipInstall=lambda specs, **kw: _installFake(fakeSite, "sslseg-fake-loaded"),
                         confirm=Recorder(), installTorch=_forbidden, askRestart=restart)
    assert logic.ensure() is True
    assert len(restart.calls) == 1 and "Restart Slicer" in restart.calls[0][0][0]


def test_offline_pip_failure_gives_a_clear_message(tmp_path):
    """A real pip run that cannot reach any index (--no-index): the error tells the user what to do."""
    empty = tmp_path / "wheels"
    empty.mkdir()

    def offlinePip(specs, noDeps, constraints, requester):
        args = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", str(empty),
                "--disable-pip-version-check", "-q", *(["--no-deps"] if noDeps else []), *specs]
        subprocess.run(args, check=True, capture_output=True, timeout=120)

    logic = InstallLogic([Requirement("sslseg_absent_c", "sslseg-absent-c>=1")], pipInstall=offlinePip,
                         confirm=Recorder(), installTorch=_forbidden, askRestart=_forbidden)
    with pytest.raises(InstallError) as error:
        logic.ensure()
    message = str(error.value)
    assert "no internet connection" in message and "sslseg-absent-c>=1" in message
    assert "--find-links" in message


def _replaceFake(sitePath, distribution, version):
    """What an upgrade leaves behind: the old .dist-info gone, the new one there."""
    for old in sitePath.glob(f"{distribution}-*.dist-info"):
        for member in old.iterdir():
            member.unlink()
        old.rmdir()
    _installFake(sitePath, distribution, version)


def test_too_old_torch_fails_the_check_and_offers_the_upgrade(fakeSite, monkeypatch):
    """A torch that is installed but older than the engine's floor (sslseg.requirements.TORCH_MINIMUM: the code uses
    torch.amp.GradScaler("cuda") and torch.serialization.safe_globals, both from 2.5) counts as missing: the one
    confirmation says it replaces the old one, the PyTorch extension installs the floor, and a restart is offered
    because the old torch is loaded. The installed version is simulated by package metadata ahead on sys.path."""
    import torch  # noqa: F401 - loaded, as in a Slicer session that used it

    from sslseg.requirements import TORCH_MINIMUM

    _installFake(fakeSite, "torch", "2.1.0")
    confirm, restart = Recorder(), Recorder()
    installTorch = Recorder(effect=lambda requirement: _replaceFake(fakeSite, "torch", TORCH_MINIMUM + ".0"))
    logic = InstallLogic.forEngine("Test", pipInstall=_forbidden, confirm=confirm, installTorch=installTorch,
                                   askRestart=restart)
    assert logic.torchRequirement == ">=" + TORCH_MINIMUM == ">=2.5"
    assert logic.missing() == (True, [], []) and logic.torchTooOld() == "2.1.0"
    description = logic.missingDescription()
    assert "torch>=2.5" in description and "PyTorch extension" in description and "2.1.0" in description
    assert logic.ensure() is True
    assert installTorch.calls == [((">=2.5",), {})]
    (text,), _ = confirm.calls[0]
    assert "2.1.0" in text and "torch>=2.5" in text
    assert len(restart.calls) == 1 and "torch>=2.5" in restart.calls[0][0][0]
    assert logic.missing() == (False, [], []) and logic.torchTooOld() is None


class _PyTorchUtilsStandIn:
    """The PyTorch extension's module (``PyTorchUtils``, absent outside Slicer): ``torchInstalled`` and an
    ``installTorch`` that 'installs' ``installs`` as package metadata, recording its arguments."""

    def __init__(self, site, installs):
        calls = self.calls = []

        class PyTorchUtilsLogic:
            @staticmethod
            def torchInstalled():
                return True

            def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
                calls.append(torchVersionRequirement)
                _replaceFake(site, "torch", installs)
                return types.ModuleType("torch")

        self.PyTorchUtilsLogic = PyTorchUtilsLogic


def test_pytorch_extension_upgrades_a_too_old_torch(fakeSite, monkeypatch):
    from SSLCommonLib.installLogic import installTorchWithPyTorchUtils

    standIn = _PyTorchUtilsStandIn(fakeSite, installs="2.6.0")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", standIn)
    installTorchWithPyTorchUtils(">=2.5")  # the venv's own torch satisfies it: nothing is installed
    assert standIn.calls == []
    _installFake(fakeSite, "torch", "2.1.0")
    installTorchWithPyTorchUtils(">=2.5")  # installed but too old: upgraded, not skipped
    assert standIn.calls == [">=2.5"]

    # an upgrade that still does not satisfy the floor is an error that says what to do
    _replaceFake(fakeSite, "torch", "2.1.0")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", _PyTorchUtilsStandIn(fakeSite, installs="2.4.1"))
    with pytest.raises(InstallError, match=r"installed torch 2\.4\.1, but this extension needs torch>=2\.5"):
        installTorchWithPyTorchUtils(">=2.5")


def _installFakeWithDependencies(sitePath, distribution, requires, version="1.0"):
    _installFake(sitePath, distribution, version)
    info = sitePath / f"{distribution.replace('-', '_')}-{version}.dist-info"
    with open(info / "METADATA", "a") as stream:
        stream.write("".join(f"Requires-Dist: {line}\n" for line in requires))


def test_the_whole_install_is_verified(fakeSite):
    """pip_ensure's skip_packages installed each package and dependency on its own with --no-deps and only logged
    the failures: a package without its dependencies then looked installed. Now what was installed is verified with
    its declared dependencies (and theirs), whatever pip reported."""
    def pipWithoutADependency(specs, noDeps, constraints, requester):
        _installFakeWithDependencies(fakeSite, "sslseg-fake-top", [
            "sslseg-fake-middle>=2", "sslseg-fake-windows-only; sys_platform == 'nonexistent'",
            "sslseg-fake-extra-only; extra == 'gpu'"])
        _installFakeWithDependencies(fakeSite, "sslseg-fake-middle", ["sslseg-fake-leaf<1"], version="2.1")
        _installFake(fakeSite, "sslseg-fake-leaf", "1.5")  # present, but outside its range

    logic = InstallLogic([Requirement("sslseg_fake_top", "sslseg-fake-top>=1")], requester="Test",
                         pipInstall=pipWithoutADependency, confirm=Recorder(), installTorch=_forbidden,
                         askRestart=_forbidden)
    with pytest.raises(InstallError) as error:
        logic.ensure()
    message = str(error.value)
    assert "sslseg-fake-leaf<1 needed by sslseg-fake-middle (1.5)" in message
    assert "windows-only" not in message and "extra-only" not in message  # markers that do not apply here
    # complete once the dependency is right; a no-deps requirement's declared dependencies are not asked for
    (fakeSite / "sslseg_fake_leaf-1.5.dist-info" / "METADATA").unlink()
    (fakeSite / "sslseg_fake_leaf-1.5.dist-info").rmdir()
    _installFake(fakeSite, "sslseg-fake-leaf", "0.9")
    assert logic.verify(installed=logic.requirements) == []
    noDeps = Requirement("sslseg_fake_nodeps", "sslseg-fake-nodeps", noDeps=True)
    _installFakeWithDependencies(fakeSite, "sslseg-fake-nodeps", ["sslseg-fake-absent"])
    assert InstallLogic([noDeps], requester="Test").verify(installed=[noDeps]) == []


def test_a_replaced_host_package_fails_the_verification(fakeSite):
    import numpy

    def pipThatUpgradesNumpy(specs, noDeps, constraints, requester):
        _installFake(fakeSite, "sslseg-fake-x")
        _installFake(fakeSite, "numpy", "999.0")  # what the constraints file is there to prevent

    logic = InstallLogic([Requirement("sslseg_fake_x", "sslseg-fake-x")], requester="Test",
                         pipInstall=pipThatUpgradesNumpy, confirm=Recorder(), installTorch=_forbidden,
                         askRestart=_forbidden)
    with pytest.raises(InstallError, match=f"Slicer's numpy {numpy.__version__} was replaced by 999.0"):
        logic.ensure()


def test_slicer_pip_ensure_gets_the_constraints_and_no_skip_packages(monkeypatch, tmp_path):
    """Inside Slicer: Slicer's pip_ensure (its signature as in Slicer's slicer/packaging.py) is called once with the
    constraints file, no skip_packages, and also under --testing; --no-deps packages go through pip_install."""
    import slicer

    from SSLCommonLib import installLogic

    calls = []

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):
        calls.append(("pip_ensure", [str(r) for r in requirements], constraints, skip_packages, prompt_install,
                      prompt_restart, requester, skip_in_testing))

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda args: calls.append(("pip_install", args)))
    installLogic.slicerPipInstall(["monai>=1.4", "einops"], constraints="c.txt", requester="SSLSegmentation")
    installLogic.slicerPipInstall(["dynamic-network-architectures>=0.4.4,<0.5"], noDeps=True, constraints="c.txt")
    assert calls == [("pip_ensure", ["monai>=1.4", "einops"], "c.txt", None, False, False, "SSLSegmentation", False),
                     ("pip_install", ["--no-deps", "-c", "c.txt", "dynamic-network-architectures>=0.4.4,<0.5"])]
    # no slicer.packaging (Slicer before it): pip_install with the constraints
    monkeypatch.delitem(sys.modules, "slicer.packaging")
    monkeypatch.delattr(slicer, "packaging")
    calls.clear()
    installLogic.slicerPipInstall(["einops"], constraints="c.txt")
    assert calls == [("pip_install", ["-c", "c.txt", "einops"])]


def test_self_test_installs_without_questions_and_cannot_restart(fakeSite):
    """ctest runs the modules' self-tests in a bare Slicer (--testing): installForSelfTest installs the engine's
    packages without a dialog; a replaced package that is loaded cannot be used before a restart, which a test
    cannot do, so it fails with what to do."""
    import torch  # noqa: F401 - loaded, as in a Slicer session that used it

    from SSLCommonLib.installLogic import installForSelfTest

    assert installForSelfTest("SSLSegmentation", pipInstall=_forbidden, confirm=_forbidden,
                              installTorch=_forbidden) is True  # everything there: nothing done
    _installFake(fakeSite, "torch", "2.1.0")
    upgrade = Recorder(effect=lambda requirement: _replaceFake(fakeSite, "torch", "2.6.0"))
    with pytest.raises(InstallError, match="A self-test cannot restart Slicer: run the test again"):
        installForSelfTest("SSLSegmentation", pipInstall=_forbidden, confirm=_forbidden, installTorch=upgrade)
    assert upgrade.calls == [((">=2.5",), {})]  # no confirmation asked: installed straight away
