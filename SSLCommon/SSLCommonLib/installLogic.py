"""Python dependencies at first use: find what is missing (offline, no GUI), ask once, install, offer a restart.

Generic (the SSLSegmentation and SSLPretrain modules both use it). Rules that keep Slicer's own Python healthy:

- torch comes from the PyTorch extension (``PyTorchUtils.PyTorchUtilsLogic().installTorch``), which picks the CUDA
  build that matches the driver; pip never installs or upgrades it. A torch older than the engine needs
  (``sslseg.requirements.TORCH_MINIMUM``) counts as missing: the PyTorch extension installs a newer one, then
  Slicer restarts;
- packages the host already provides (torch, SimpleITK, requests, numpy) are never reinstalled: they are pinned to
  their installed versions with a pip constraints file, which pip honours for every package it resolves, so the
  dependency tree is installed in one resolution (no per-package ``--no-deps`` install whose failures are only
  logged, as ``pip_ensure``'s ``skip_packages`` does);
- ``--no-deps`` packages (dynamic-network-architectures: its metadata pulls timm, torchvision and a second torch)
  are installed without their dependencies;
- ONE confirmation lists every package (torch included) before anything is installed;
- after installing, the whole install is verified (:meth:`InstallLogic.verify`): every requirement at an accepted
  version, the declared dependencies of what was installed (and theirs), and the host packages at the versions they
  had. Anything wrong is an InstallError naming it.

The check (:meth:`InstallLogic.missing`) reads installed package metadata only: no network, no subprocess, no GUI.
Installing goes through collaborators passed in (``pipInstall``, ``confirm``, ``installTorch``, ``askRestart``), so
tests and console scripts can run the same logic without Slicer's dialogs. Inside Slicer, the defaults use
``slicer.packaging.pip_ensure`` where the release has it, else ``slicer.util.pip_install``.

Example (Slicer's Python console)::

    from SSLCommonLib.installLogic import InstallLogic
    logic = InstallLogic.forEngine("SSLSegmentation")
    logic.missingDescription()      # "" when everything is installed
    logic.ensure()                  # asks once, installs, may offer a restart; returns True when ready
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass

DEFAULT_HOST_PACKAGES = ("torch", "SimpleITK", "requests", "numpy")

OFFLINE_HELP = (
    "Python packages could not be installed: pip could not download them (no internet connection, or a proxy "
    "blocks the Python package index). Connect and try again, or install them by hand: on a connected computer "
    "run `pip download --no-deps {requirements} -d wheels`, copy the folder, and in Slicer's Python console run "
    "`slicer.util.pip_install('--no-index --find-links /path/to/wheels {requirements}')`."
)


class InstallError(RuntimeError):
    """Installing failed or is impossible here; the message says what the user can do."""


@dataclass
class Requirement:
    """One package: ``importName`` (what ``import`` uses), ``spec`` (pip requirement string), ``noDeps``."""

    importName: str
    spec: str
    noDeps: bool = False

    @property
    def distribution(self):
        return re.split(r"[<>=!~;\[ ]", self.spec, maxsplit=1)[0].strip()

    @property
    def specifier(self):
        return self.spec[len(self.distribution):].split(";", 1)[0].strip()


def installedVersion(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def isSatisfied(requirement: Requirement):
    """Installed and at an acceptable version (from package metadata; nothing is imported, nothing downloaded)."""
    version = installedVersion(requirement.distribution)
    if version is None:
        # Some hosts ship packages without pip metadata: an importable module counts as installed.
        try:
            found = importlib.util.find_spec(requirement.importName) is not None
        except (ImportError, ValueError):  # e.g. a module object without a spec in sys.modules
            found = False
        return found and not requirement.specifier
    if not requirement.specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return Version(version) in SpecifierSet(requirement.specifier)
    except ImportError:  # without `packaging`, presence is all we can check
        return True
    except Exception:  # an unparsable local version string: do not force a reinstall over it
        return True


def unmetDependencies(distributions):
    """``["name>=x needed by dist (absent)", ...]``: the declared dependencies of the installed ``distributions``,
    and theirs recursively, that are absent or outside their version range (package metadata only; markers are
    evaluated for this Python, without extras)."""
    from packaging.requirements import InvalidRequirement
    from packaging.requirements import Requirement as Declared
    from packaging.utils import canonicalize_name

    unmet, seen, todo = [], set(), list(distributions)
    while todo:
        distribution = todo.pop()
        if canonicalize_name(distribution) in seen:
            continue
        seen.add(canonicalize_name(distribution))
        try:
            declared = importlib.metadata.requires(distribution) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in declared:
            try:
                requirement = Declared(text)
            except InvalidRequirement:
                continue
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            version = installedVersion(requirement.name)
            if version is None or not requirement.specifier.contains(version, prereleases=True):
                unmet.append(f"{requirement.name}{requirement.specifier} needed by {distribution} "
                             f"({version or 'absent'})")
            else:
                todo.append(requirement.name)
    return unmet


class InstallLogic:
    """What to install and how. ``requirements``: list of :class:`Requirement`; ``torchRequirement``: e.g.
    ``">=2.1"`` (None: torch not needed); ``hostPackages``: never installed by pip here."""

    def __init__(self, requirements, torchRequirement=None, hostPackages=DEFAULT_HOST_PACKAGES,
                 requester="Slicer module", pipInstall=None, confirm=None, installTorch=None, askRestart=None):
        self.requirements = list(requirements)
        self.torchRequirement = torchRequirement
        self.hostPackages = tuple(hostPackages)
        self.requester = requester
        self.pipInstall = pipInstall or slicerPipInstall
        self.confirm = confirm or slicerConfirm
        self.installTorch = installTorch or installTorchWithPyTorchUtils
        self.askRestart = askRestart or slicerAskRestart

    @classmethod
    def forEngine(cls, requester, **collaborators):
        """The packages the ``sslseg`` engine needs (``sslseg/requirements.py``)."""
        from sslseg import requirements as engine

        items = [Requirement(name, spec) for name, spec in engine.REQUIREMENTS.items()]
        items += [Requirement(name, spec, noDeps=True) for name, spec in engine.NO_DEPS_REQUIREMENTS.items()]
        hostPackages = tuple(dict.fromkeys(DEFAULT_HOST_PACKAGES + tuple(engine.PROVIDED_BY_SLICER)))
        # the engine's floor (sslseg.requirements.TORCH_MINIMUM), the one place it is set
        return cls(items, torchRequirement=">=" + engine.TORCH_MINIMUM, hostPackages=hostPackages,
                   requester=requester, **collaborators)

    # -- checking (offline, no GUI) --

    def _isHost(self, requirement):
        names = {name.lower() for name in self.hostPackages}
        return requirement.distribution.lower() in names or requirement.importName.lower() in names

    def torchMissing(self):
        """True when torch is absent or older than ``torchRequirement`` (read from package metadata)."""
        if self.torchRequirement is None:
            return False
        return not isSatisfied(Requirement("torch", "torch" + self.torchRequirement))

    def torchTooOld(self):
        """The installed torch version when torch is present but does not satisfy ``torchRequirement``, else None:
        the PyTorch extension then installs a newer build over it (and Slicer restarts)."""
        version = installedVersion("torch")
        return version if version is not None and self.torchMissing() else None

    def missing(self):
        """``(torchMissing, toInstall, hostProblems)``: torch needed from the PyTorch extension; requirements pip
        will install; host packages that are absent or too old (pip will not touch them: the message says so)."""
        toInstall, hostProblems = [], []
        for requirement in self.requirements:
            if isSatisfied(requirement):
                continue
            (hostProblems if self._isHost(requirement) else toInstall).append(requirement)
        return self.torchMissing(), toInstall, hostProblems

    def missingDescription(self):
        """One line per missing package; empty when everything is installed."""
        torchMissing, toInstall, hostProblems = self.missing()
        lines = []
        if torchMissing:
            old = self.torchTooOld()
            lines.append(f"torch{self.torchRequirement} (through the PyTorch extension, the build for your GPU"
                         + (f"; replaces the installed torch {old}, too old for this extension)" if old else ")"))
        for requirement in toInstall:
            lines.append(requirement.spec + ("  (without its dependencies)" if requirement.noDeps else ""))
        for requirement in hostProblems:
            version = installedVersion(requirement.distribution)
            lines.append(f"{requirement.spec}: Slicer's own copy is {version or 'missing'} and is not replaced")
        return "\n".join(lines)

    # -- installing --

    def ensure(self, askConfirmation=True):
        """Make every package available. Returns True when ready (nothing was missing, or it was installed),
        False when the user declined. Raises InstallError with an actionable message on failure."""
        torchMissing, toInstall, hostProblems = self.missing()
        if hostProblems:
            problems = ", ".join(f"{r.spec} (installed: {installedVersion(r.distribution) or 'none'})"
                                 for r in hostProblems)
            raise InstallError(f"{self.requester} needs {problems}, which Slicer itself provides and which is not "
                               "reinstalled here (that could break Slicer). Use a newer Slicer release.")
        if not torchMissing and not toInstall:
            return True
        if askConfirmation:
            text = (f"{self.requester} needs these Python packages, which will be downloaded and installed now "
                    f"(a few minutes; several GB for torch with CUDA):\n\n{self.missingDescription()}\n\nInstall them?")
            if not self.confirm(text):
                logging.info("%s: installation of Python packages declined", self.requester)
                return False
        importedBefore = set(sys.modules)
        hostVersions = self._hostVersions()
        if torchMissing:
            self.installTorch(self.torchRequirement)
        normal = [r.spec for r in toInstall if not r.noDeps]
        noDeps = [r.spec for r in toInstall if r.noDeps]
        constraints = self._writeHostConstraints()
        try:
            if normal:
                self._pip(normal, noDeps=False, constraints=constraints)
            if noDeps:
                self._pip(noDeps, noDeps=True, constraints=constraints)
        finally:
            if constraints:
                os.remove(constraints)
        importlib.invalidate_caches()
        problems = self.verify(installed=toInstall, hostVersions=hostVersions)
        if problems:
            raise InstallError(f"{self.requester}: after installing, the Python packages are not complete: "
                               f"{'; '.join(problems)}. Nothing else was changed; see the Python console's log.")
        # A package that was already imported keeps its old version in memory until Slicer restarts.
        replaced = [r.spec for r in toInstall if r.importName in importedBefore]
        loadedTorch = sys.modules.get("torch") if torchMissing and "torch" in importedBefore else None
        if loadedTorch is not None and installedVersion("torch") != str(getattr(loadedTorch, "__version__", "")):
            replaced.insert(0, "torch" + self.torchRequirement)  # the torch in memory is not the one now installed
        if replaced:
            self.askRestart(f"{', '.join(replaced)} were updated while an older version was loaded. Restart "
                            "Slicer to use the new version.")
        return True

    def verify(self, installed=(), hostVersions=None):
        """What is wrong with the install, one phrase each (empty when all is well): requirements (and torch) not
        at an accepted version; unmet declared dependencies of the ``installed`` requirements that were installed
        with theirs (and of those, recursively); host packages whose version changed from ``hostVersions``."""
        problems = [f"{r.spec} is not installed" + (f" ({installedVersion(r.distribution)} is)"
                                                     if installedVersion(r.distribution) else "")
                    for r in self.requirements if not self._isHost(r) and not isSatisfied(r)]
        if self.torchMissing():
            problems.append(f"torch{self.torchRequirement} is not installed")
        problems += unmetDependencies([r.distribution for r in installed if not r.noDeps])
        for name, version in (hostVersions or {}).items():
            if installedVersion(name) != version:
                problems.append(f"Slicer's {name} {version} was replaced by {installedVersion(name) or 'nothing'}")
        return problems

    def _hostVersions(self):
        """``{host package: installed version}`` (what the constraints file pins; torch is left to installTorch)."""
        versions = {name: installedVersion(name) for name in dict.fromkeys(self.hostPackages) if name != "torch"}
        return {name: version for name, version in versions.items() if version}

    def _pip(self, specs, noDeps, constraints):
        try:
            self.pipInstall(specs, noDeps=noDeps, constraints=constraints, requester=self.requester)
        except InstallError:
            raise
        except Exception as error:  # CalledProcessError, RuntimeError from Slicer's pip helpers, OSError
            quoted = " ".join(f'"{s}"' if any(c in s for c in "<>") else s for s in specs)
            raise InstallError(OFFLINE_HELP.format(requirements=quoted) + f"\n\nDetails: {error}") from error

    def _writeHostConstraints(self):
        """A pip constraints file pinning the host packages at their installed versions (so that no dependency
        of ours upgrades Slicer's torch, SimpleITK, requests or numpy); None when none is installed."""
        lines = []
        for name in dict.fromkeys(self.hostPackages + ("torch",)):
            version = installedVersion(name)
            if version:
                lines.append(f"{name}=={version}")
        if not lines:
            return None
        handle, path = tempfile.mkstemp(prefix="host-constraints-", suffix=".txt")
        with os.fdopen(handle, "w") as stream:
            stream.write("\n".join(lines) + "\n")
        return path


def installForSelfTest(requester, **collaborators):
    """Make the engine's packages available for a module's self-test (``Slicer --testing``, as ctest runs it through
    ``slicer_add_python_unittest``): installed without questions, as the panel would after its one confirmation.
    Slicer cannot restart inside a test: when a package loaded in an older version was replaced, InstallError says to
    run the test again. Returns True (ready)."""
    def refuseRestart(text):
        raise InstallError(f"{text} A self-test cannot restart Slicer: run the test again.")

    collaborators.setdefault("askRestart", refuseRestart)
    return InstallLogic.forEngine(requester, **collaborators).ensure(askConfirmation=False)


# --- the default collaborators (inside Slicer) --------------------------------------------------------------------


# the keywords of slicer.packaging.pip_ensure this module passes (Slicer's Base/Python/slicer/packaging.py)
_PIP_ENSURE_KEYWORDS = ("constraints", "prompt_install", "prompt_restart", "requester", "skip_in_testing")


def _pipEnsure():
    """Slicer's ``slicer.packaging.pip_ensure`` where the release has it with the keywords used here, else None."""
    import inspect

    try:
        from slicer.packaging import pip_ensure
    except ImportError:
        return None
    try:
        parameters = inspect.signature(pip_ensure).parameters
    except (TypeError, ValueError):
        return None
    return pip_ensure if all(name in parameters for name in _PIP_ENSURE_KEYWORDS) else None


def slicerPipInstall(specs, noDeps=False, constraints=None, requester=None):
    """Install with Slicer's helpers: ``pip_ensure`` where available, else ``slicer.util.pip_install``; both with
    the constraints file that pins the host's packages. ``--no-deps`` packages always go through ``pip_install``.
    ``skip_packages`` is not used: it makes pip_ensure install each package and dependency on its own with
    ``--no-deps`` and only log failures, while the constraints already keep Slicer's packages; the whole install
    is then verified (``InstallLogic.verify``). Installs also under ``--testing`` (the module self-tests need the
    engine's packages)."""
    import slicer

    pipEnsure = _pipEnsure()
    if pipEnsure is not None and not noDeps:
        from packaging.requirements import Requirement as PackagingRequirement

        pipEnsure([PackagingRequirement(s) for s in specs], constraints=constraints, prompt_install=False,
                  prompt_restart=False, requester=requester, skip_in_testing=False)
        return
    options = (["--no-deps"] if noDeps else []) + (["-c", constraints] if constraints else [])
    # A list of arguments (accepted by every Slicer 5 release): no shell quoting of "<" in specifiers needed.
    slicer.util.pip_install(options + list(specs))


def slicerConfirm(text):
    import slicer

    return bool(slicer.util.confirmOkCancelDisplay(text, windowTitle="Install Python packages"))


def slicerAskRestart(text):
    import slicer

    if slicer.util.confirmYesNoDisplay(text + "\n\nRestart now?", windowTitle="Restart Slicer"):
        slicer.util.restart()


def installTorchWithPyTorchUtils(versionRequirement=None):
    """torch through the PyTorch extension (it chooses the CUDA build for the installed driver)."""
    try:
        import PyTorchUtils
    except ImportError:
        raise InstallError("torch is missing and the PyTorch extension is not installed. Install 'PyTorch' from "
                           "the Extensions Manager, restart Slicer, and try again.") from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    torchRequirement = Requirement("torch", "torch" + (versionRequirement or ""))
    if torchLogic.torchInstalled() and isSatisfied(torchRequirement):
        return
    # absent, or present but older than needed: installTorch runs light-the-torch with the requirement, which
    # installs a satisfying build for the driver over the old one
    try:
        torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=versionRequirement)
    except Exception as error:
        raise InstallError(OFFLINE_HELP.format(requirements="torch") + f"\n\nDetails: {error}") from error
    if torch is None:
        raise InstallError("torch was not installed (see the PyTorch extension's message in the log).")
    importlib.invalidate_caches()
    if not isSatisfied(torchRequirement):
        raise InstallError(f"the PyTorch extension installed torch {installedVersion('torch')}, but this extension "
                           f"needs torch{versionRequirement}. In the PyTorch Utils module, uninstall torch, restart "
                           f"Slicer and install it again with the version requirement '{versionRequirement}'.")
