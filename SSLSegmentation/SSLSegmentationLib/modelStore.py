"""The models folder: fine-tuned models kept across Slicer sessions. Each model is an engine model folder
(``model.json`` + ``model.pt``, see ``sslseg.model_folder``) named after the model.

Default folder: the Slicer setting ``SSLSegmentation/ModelsFolder`` when set, else ``$SSLSEG_HOME/models``
(``SSLSEG_HOME`` defaults to ``~/.sslseg``, the engine's home, where backbones are cached too).

Every change is atomic: a model appears under its name only when complete (``addModel`` and ``importModel`` stage
into a hidden sibling first), so an interrupted copy never shows up as a model.

Example (Slicer's Python console)::

    from SSLSegmentationLib.modelStore import ModelStore
    store = ModelStore()
    [m["name"] for m in store.listModels()]
    store.renameModel("hippocampus", "hippocampus-v1")
    store.exportModel("hippocampus-v1", "/tmp/hippocampus-v1.sslmodel")   # one file to share
    store.importModel("/tmp/hippocampus-v1.sslmodel", "hippocampus-copy")
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

from sslseg.errors import UserError

from .settings import readSetting

MODEL_JSON = "model.json"
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
        path = self.modelPath(name)
        if not os.path.isfile(os.path.join(path, MODEL_JSON)):
            raise UserError(f"no model named {name!r} in {self.folder}")
        return path

    def uniqueName(self, base):
        base = suggestModelName(base)
        name, index = base, 2
        while os.path.exists(os.path.join(self.folder, name)):
            name = f"{base} ({index})"
            index += 1
        return name

    def listModels(self):
        """``[{"name", "path", "created", "backbone", "labels", "mean_dice", "size_mb"}]`` sorted by name; folders
        without a readable ``model.json`` (half-written, foreign) are left out."""
        models = []
        if not os.path.isdir(self.folder):
            return models
        for name in sorted(os.listdir(self.folder), key=str.lower):
            path = os.path.join(self.folder, name)
            if name.startswith(".") or not os.path.isfile(os.path.join(path, MODEL_JSON)):
                continue
            try:
                with open(os.path.join(path, MODEL_JSON), encoding="utf-8") as stream:
                    meta = json.load(stream)
            except (OSError, json.JSONDecodeError):
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
                "size_mb": round(size / 1e6, 1),
            })
        return models

    def modelNames(self):
        return [model["name"] for model in self.listModels()]

    def addModel(self, sourceFolder, name, move=True):
        """Put a finished model folder into the store under ``name`` (a unique name is NOT invented: an existing
        name is refused). Staged as a hidden sibling, then renamed into place. Returns the new path."""
        name = checkModelName(name)
        target = os.path.join(self.folder, name)
        if os.path.exists(target):
            raise UserError(f"a model named {name!r} already exists in {self.folder}")
        if not os.path.isfile(os.path.join(sourceFolder, MODEL_JSON)):
            raise UserError(f"{sourceFolder} is not a model folder (no {MODEL_JSON})")
        os.makedirs(self.folder, exist_ok=True)
        staging = os.path.join(self.folder, f".{name}.adding-{os.getpid()}-{int(time.time() * 1000)}")
        try:
            if move:
                shutil.move(os.fspath(sourceFolder), staging)  # a rename on the same disk, a copy otherwise
            else:
                shutil.copytree(sourceFolder, staging)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
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
        trash = os.path.join(self.folder, f".{os.path.basename(path)}.deleting-{os.getpid()}")
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
        """Add a model from a ``.sslmodel`` file or a model folder; it is loaded first (safely), so a damaged file
        is refused and nothing is added. Returns the new model's path."""
        from sslseg.model_folder import PACKED_SUFFIX, load_model, unpack_model

        filePath = os.fspath(filePath)
        base = os.path.basename(filePath.rstrip("/\\"))
        if base.lower().endswith(PACKED_SUFFIX):
            base = base[: -len(PACKED_SUFFIX)]
        name = checkModelName(name) if name else self.uniqueName(base)
        if os.path.exists(os.path.join(self.folder, name)):
            raise UserError(f"a model named {name!r} already exists")
        os.makedirs(self.folder, exist_ok=True)
        staging = os.path.join(self.folder, f".{name}.importing-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            if os.path.isdir(filePath):
                load_model(filePath)
                shutil.copytree(filePath, staging)
            else:
                unpack_model(filePath, staging)
            return self.addModel(staging, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
