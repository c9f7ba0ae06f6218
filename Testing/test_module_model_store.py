"""The models folder of the SSLSegmentation module (SSLSegmentationLib.modelStore) on real engine model folders."""

import os

import pytest

from sslseg.errors import UserError
from SSLSegmentationLib.modelStore import ModelStore, defaultModelsFolder

LABELS = [{"value": 1, "name": "Anterior", "color": [1.0, 0.0, 0.0]},
          {"value": 2, "name": "Posterior", "color": [0.0, 0.0, 1.0]}]


@pytest.fixture(scope="module")
def modelFolder(tmp_path_factory):
    """A real (untrained) model folder written by the engine: tiny ResEncT-test network."""
    from sslseg.model_folder import save_model
    from sslseg.networks import build_from_spec, spec_for

    spec = spec_for("ResEncT-test")
    network = build_from_spec(spec, 1, 3)
    meta = {"network": spec, "in_channels": 1, "channel_names": ["MRI"], "labels": LABELS,
            "preprocessing": {"spacing": [1.0, 1.0, 1.0], "normalization": "zscore"}, "patch_size": [16, 24, 16],
            "backbone": None, "validation": {"mean_dice": 0.5}}
    return save_model(tmp_path_factory.mktemp("engine") / "hippocampus", meta, network.state_dict())


def _copy(source, target):
    import shutil

    shutil.copytree(source, target)
    return str(target)


def test_default_folder_follows_sslseg_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    assert defaultModelsFolder() == str(tmp_path / "home" / "models")
    assert ModelStore().folder == str(tmp_path / "home" / "models")


def test_add_list_rename_delete(modelFolder, tmp_path):
    store = ModelStore(tmp_path / "models")
    assert store.listModels() == []  # the folder does not exist yet
    staged = _copy(modelFolder, tmp_path / "staged")
    path = store.addModel(staged, "hippocampus")
    assert not os.path.exists(staged)  # moved
    (model,) = store.listModels()
    assert model["name"] == "hippocampus" and model["path"] == path
    assert [l["name"] for l in model["labels"]] == ["Anterior", "Posterior"]
    assert model["backbone"] == "none (from scratch)" and model["mean_dice"] == 0.5 and model["size_mb"] > 0
    assert model["configuration"] == "3d"  # model.json without a plan: the 3D configuration
    # names: unique suggestions, refused duplicates and bad names
    assert store.uniqueName("hippocampus") == "hippocampus (2)"
    assert store.uniqueName("a/b:c") == "a-b-c"
    with pytest.raises(UserError, match="already exists"):
        store.addModel(_copy(modelFolder, tmp_path / "again"), "hippocampus")
    for bad in ("", ".hidden", "../escape", "a/b"):
        with pytest.raises(UserError, match="invalid model name"):
            store.renameModel("hippocampus", bad)
    # half-written and foreign folders are not models
    os.makedirs(os.path.join(store.folder, ".hippo.adding-1"))
    os.makedirs(os.path.join(store.folder, "notes"))
    assert store.modelNames() == ["hippocampus"]

    store.renameModel("hippocampus", "hippocampus v2")
    assert store.modelNames() == ["hippocampus v2"]
    with pytest.raises(UserError, match="no model named"):
        store.deleteModel("hippocampus")
    store.deleteModel("hippocampus v2")
    assert store.modelNames() == []
    assert not os.path.exists(os.path.join(store.folder, "hippocampus v2"))


def test_export_and_import_one_file(modelFolder, tmp_path):
    from sslseg.model_folder import load_model

    store = ModelStore(tmp_path / "models")
    store.addModel(modelFolder, "hippocampus", move=False)
    packed = store.exportModel("hippocampus", tmp_path / "shared" / "hippo")
    assert packed.endswith(".sslmodel") and os.path.isfile(packed)

    other = ModelStore(tmp_path / "elsewhere")
    imported = other.importModel(packed)
    assert os.path.basename(imported) == "hippo"
    loaded = load_model(imported)
    assert [l["name"] for l in loaded.labels] == ["Anterior", "Posterior"]
    assert other.importModel(packed).endswith("hippo (2)")  # a second import does not overwrite
    assert other.importModel(modelFolder, "from folder").endswith("from folder")
    assert other.modelNames() == ["from folder", "hippo", "hippo (2)"]

    broken = tmp_path / "broken.sslmodel"
    broken.write_bytes(open(packed, "rb").read()[:200])
    with pytest.raises(UserError):
        other.importModel(str(broken))
    assert other.modelNames() == ["from folder", "hippo", "hippo (2)"]
    assert not [name for name in os.listdir(other.folder) if name.startswith(".")]
