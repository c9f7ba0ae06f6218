"""The models folder: fine-tuned models kept across Slicer sessions. Each model is an engine model folder
(``model.json`` + ``model.pt``, see ``sslseg.model_folder``) named after the model.

Default folder: the Slicer setting ``SSLSegmentation/ModelsFolder`` when set, else ``$SSLSEG_HOME/models``
(``SSLSEG_HOME`` defaults to ``~/.sslseg``, the engine's home, where backbones are cached too).

Every change is atomic: a model appears under its name only when complete (``addModel`` and ``importModel`` stage
into a hidden sibling first), so an interrupted copy never shows up as a model. Only a model's own files
(``model.json`` and ``model.pt``, regular files) are ever copied in, and a model is loaded (checked) before it is
added: a symbolic link in a model folder could otherwise bring any file of the computer into the models folder.

Example (Slicer's Python console)::

    from SSLSegmentationLib.modelStore import ModelStore
    store = ModelStore()
    [m["name"] for m in store.listModels()]
    store.renameModel("hippocampus", "hippocampus-v1")
    store.exportModel("hippocampus-v1", "/tmp/hippocampus-v1.sslmodel")   # one file to share
    store.importModel("/tmp/hippocampus-v1.sslmodel", "hippocampus-copy")
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time

from sslseg.errors import UserError

from SSLCommonLib.settings import readSetting

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,99}$")


def engineHome():
    return os.path.abspath(os.path.expanduser(os.environ.get("SSLSEG_HOME") or os.path.join("~", ".sslseg")))


def defaultModelsFolder(settings=None):
    """The ``ModelsFolder`` Slicer setting where set (inside Slicer), else ``$SSLSEG_HOME/models``."""
    value = readSetting("ModelsFolder", settings)
    if value:
        return os.path.abspath(os.path.expanduser(value))
    return os.path.join(engineHome(), "models")


def checkModelName(name):
    name = str(name).strip() if name is not None else ""
    if not _NAME.match(name) or name.endswith((".", " ")):
        raise UserError(f"invalid model name {name!r}: use letters, digits, spaces and . _ - + ( ) (at most 100 "
                        "characters, not starting with a dot)")
    return name


def suggestModelName(base):
    """A valid name from free text (e.g. a volume or backbone name)."""
    cleaned = re.sub(r"[^A-Za-z0-9 ._()+-]+", "-", str(base)).strip(" .-_") or "model"
    return cleaned[:100]


class ModelStore:
    def __init__(self, folder=None):
        self.folder = os.path.abspath(os.path.expanduser(os.fspath(folder))) if folder else defaultModelsFolder()

    def modelPath(self, name):
        return os.path.join(self.folder, checkModelName(name))

    def _existing(self, name):
        from sslseg.model_folder import MODEL_JSON

        path = self.modelPath(name)
        if not os.path.isfile(os.path.join(path, MODEL_JSON)):
            raise UserError(f"no model named {name!r} in {self.folder}")
        return path

    def _staging(self, name, what):
        return os.path.join(self.folder, f".{name}.{what}-{os.getpid()}-{int(time.time() * 1000)}")

    def uniqueName(self, base):
        base = suggestModelName(base)
        name, index = base, 2
        while os.path.exists(os.path.join(self.folder, name)):
            name = f"{base} ({index})"
            index += 1
        return name

    def listModels(self):
        """``[{"name", "path", "created", "backbone", "labels", "mean_dice", "configuration", "size_mb"}]`` sorted by
        name (``configuration``: "2d" slice-wise or "3d", as model.json's plan records it); folders without a valid
        ``model.json`` (half-written, foreign) are left out."""
        from sslseg.model_folder import read_model_meta

        models = []
        if not os.path.isdir(self.folder):
            return models
        for name in sorted(os.listdir(self.folder), key=str.lower):
            path = os.path.join(self.folder, name)
            if name.startswith(".") or not os.path.isdir(path):
                continue
            try:
                meta = read_model_meta(path)
            except UserError:
                continue
            size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
                       if os.path.isfile(os.path.join(path, f)))
            models.append({
                "name": name,
                "path": path,
                "created": meta.get("created"),
                "backbone": (meta.get("backbone") or {}).get("name") or "none (from scratch)",
                "labels": meta.get("labels", []),
                "mean_dice": (meta.get("validation") or {}).get("mean_dice"),
                "configuration": (meta.get("plan") or {}).get("configuration") or "3d",
                "size_mb": round(size / 1e6, 1),
            })
        return models

    def modelNames(self):
        return [model["name"] for model in self.listModels()]

    def addModel(self, sourceFolder, name, move=True):
        """Put a finished model folder into the store under ``name`` (a unique name is NOT invented: an existing
        name is refused). Staged as a hidden sibling, then renamed into place. Returns the new path.

        ``move``: the source folder is renamed (same disk) or copied and then removed. Whatever fails, the source
        folder keeps the model: it is never removed before the model is in place."""
        from sslseg.model_folder import MODEL_JSON

        name = checkModelName(name)
        target = os.path.join(self.folder, name)
        if os.path.exists(target):
            raise UserError(f"a model named {name!r} already exists in {self.folder}")
        if not os.path.isfile(os.path.join(sourceFolder, MODEL_JSON)):
            raise UserError(f"{sourceFolder} is not a model folder (no {MODEL_JSON})")
        os.makedirs(self.folder, exist_ok=True)
        staging = self._staging(name, "adding")
        renamed = move and _renameIfSameDisk(sourceFolder, staging)
        try:
            if not renamed:
                copyModelFiles(sourceFolder, staging)
            os.rename(staging, target)
        except BaseException:
            if renamed:
                _renameBack(staging, sourceFolder)
            else:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        if move and not renamed:
            shutil.rmtree(sourceFolder, ignore_errors=True)
        return target

    def renameModel(self, name, newName):
        source = self._existing(name)
        newName = checkModelName(newName)
        target = os.path.join(self.folder, newName)
        if newName == name:
            return source
        if os.path.exists(target):
            raise UserError(f"a model named {newName!r} already exists")
        os.rename(source, target)
        return target

    def deleteModel(self, name):
        path = self._existing(name)
        # rename first so that a partly deleted folder never looks like a model
        trash = self._staging(os.path.basename(path), "deleting")
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def exportModel(self, name, filePath):
        """One ``.sslmodel`` file (the engine's packed format; ``sslseg predict --model FILE`` reads it)."""
        from sslseg.model_folder import PACKED_SUFFIX, pack_model

        filePath = os.fspath(filePath)
        if not filePath.lower().endswith(PACKED_SUFFIX):
            filePath += PACKED_SUFFIX
        os.makedirs(os.path.dirname(os.path.abspath(filePath)), exist_ok=True)
        return pack_model(self._existing(name), filePath)

    def importModel(self, filePath, name=None):
        """Add a model from a ``.sslmodel`` file or a model folder. Only ``model.json`` and ``model.pt`` are copied
        (a symbolic link is refused), and the copy is loaded (safely) before it is added, so a damaged or foreign
        model is refused and nothing is added. Returns the new model's path."""
        from sslseg.model_folder import PACKED_SUFFIX, load_model, unpack_model

        filePath = os.fspath(filePath)
        base = os.path.basename(filePath.rstrip("/\\"))
        if base.lower().endswith(PACKED_SUFFIX):
            base = base[: -len(PACKED_SUFFIX)]
        name = checkModelName(name) if name else self.uniqueName(base)
        if os.path.exists(os.path.join(self.folder, name)):
            raise UserError(f"a model named {name!r} already exists")
        if os.path.isdir(filePath):
            checkModelFiles(filePath)  # before anything is created
        os.makedirs(self.folder, exist_ok=True)
        staging = self._staging(name, "importing")
        try:
            if os.path.isdir(filePath):
                copyModelFiles(filePath, staging)
                load_model(staging)  # the copy is what gets added: check the copy
            else:
                unpack_model(filePath, staging)  # checks the archive before writing
            return self.addModel(staging, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def checkModelFiles(folder):
    """The paths of a model folder's own files (``model.json``, ``model.pt``); UserError when one is missing, not a
    regular file, or a symbolic link (which could point at any file of the computer)."""
    from sslseg.model_folder import MODEL_JSON, WEIGHTS

    paths = []
    for fileName in (MODEL_JSON, WEIGHTS):
        path = os.path.join(os.fspath(folder), fileName)
        if os.path.islink(path):
            raise UserError(f"{folder}: {fileName} is a symbolic link; a model folder must hold its own files")
        if not os.path.isfile(path):
            raise UserError(f"{folder} is not a model folder: {fileName} is missing or not a regular file")
        paths.append(path)
    return paths


def copyModelFiles(source, target):
    """Copy a model folder's own files (see ``checkModelFiles``) into the new folder ``target``; nothing else."""
    from sslseg.atomic import copy_file_atomic

    paths = checkModelFiles(source)
    os.makedirs(target)
    for path in paths:
        copy_file_atomic(path, os.path.join(target, os.path.basename(path)))
    return target


def _renameIfSameDisk(source, target):
    """Rename ``source`` to ``target``; False (nothing changed) when they are on different disks."""
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno == errno.EXDEV:
            return False
        raise
    return True


def _renameBack(staging, source):
    try:
        os.rename(staging, source)
    except OSError:
        logging.error("SSLSegmentation: the model could not be moved back to %s; it is at %s", source, staging)
