"""The extension's Slicer settings, on a real QSettings store (PySide6's; inside Slicer it is Slicer's own)."""

import os

import pytest

QtCore = pytest.importorskip("PySide6.QtCore", reason="PySide6 (a test extra) gives a real QSettings outside Slicer")

from SSLCommonLib import settings  # noqa: E402
from SSLSegmentationLib.modelStore import defaultModelsFolder  # noqa: E402


@pytest.fixture
def store(tmp_path):
    return QtCore.QSettings(str(tmp_path / "slicer.ini"), QtCore.QSettings.IniFormat)


def test_settings_persist_in_the_settings_file(store, tmp_path):
    settings.writeSetting("ModelsFolder", str(tmp_path / "models"), settings=store)
    settings.writeSetting("Device", "cpu", settings=store)
    store.sync()
    reopened = QtCore.QSettings(str(tmp_path / "slicer.ini"), QtCore.QSettings.IniFormat)  # a later session
    assert settings.readSetting("ModelsFolder", reopened) == str(tmp_path / "models")
    assert settings.defaultDevice(reopened) == "cpu"
    settings.writeSetting("Device", None, settings=reopened)
    assert settings.defaultDevice(reopened) == "auto"


def test_home_folder_becomes_the_engine_home_of_this_process_and_its_children(store, tmp_path):
    environ = {"SSLSEG_HOME": str(tmp_path / "before")}
    assert settings.applyHomeFolder(settings=store, environ=environ) == str(tmp_path / "before")  # unset: kept
    settings.writeSetting("HomeFolder", str(tmp_path / "home"), settings=store, environ=environ)
    assert environ["SSLSEG_HOME"] == str(tmp_path / "home")
    assert settings.applyHomeFolder(settings=store, environ={}) == str(tmp_path / "home")


def test_models_folder_setting_wins_over_the_engine_home(store, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    assert defaultModelsFolder(store) == os.path.join(str(tmp_path / "home"), "models")
    settings.writeSetting("ModelsFolder", "~/my-models", settings=store)
    assert defaultModelsFolder(store) == os.path.expanduser("~/my-models")


def test_bad_names_and_values_are_refused(store):
    with pytest.raises(KeyError):
        settings.readSetting("CacheDir", store)
    with pytest.raises(ValueError):
        settings.writeSetting("Device", "tpu", settings=store)
    assert settings.readSetting("Device", store) is None


def test_outside_slicer_nothing_is_stored():
    assert settings.readSetting("HomeFolder") is None
    assert settings.defaultDevice() == "auto"
    with pytest.raises(RuntimeError):
        settings.writeSetting("Device", "cpu")
