"""The extension's Slicer settings (kept in Slicer's settings file, across sessions, under the extension's name
``SSLSegmentation/``; both modules read the same ones):

- ``SSLSegmentation/HomeFolder``: the engine's home: backbone cache and, unless set below, the models folder. It
  becomes ``SSLSEG_HOME`` for this Slicer and the background processes it starts.
- ``SSLSegmentation/ModelsFolder``: where fine-tuned models are kept.
- ``SSLSegmentation/Device``: ``auto``, ``cuda`` or ``cpu``, the device of new runs.

Console::

    from SSLCommonLib import settings
    settings.writeSetting("HomeFolder", "D:/sslseg")     # takes effect at once (and in later sessions)
    settings.readSetting("Device")

Outside Slicer (no ``qt``) nothing is stored and every setting reads as unset; tests pass their own store.
"""

from __future__ import annotations

import os

PREFIX = "SSLSegmentation/"
NAMES = ("HomeFolder", "ModelsFolder", "Device")
DEVICES = ("auto", "cuda", "cpu")


def _store(settings):
    """``settings`` (anything with ``value(key)``/``setValue(key, value)``, such as ``qt.QSettings``), or Slicer's
    settings, or None outside Slicer."""
    if settings is not None:
        return settings
    try:
        import qt

        return qt.QSettings()
    except (ImportError, AttributeError):
        return None


def readSlicerSetting(key, settings=None):
    """Any of Slicer's settings by its full key (e.g. ``Segmentations/DefaultTerminologyEntry``) as a string, or
    None when unset or outside Slicer."""
    store = _store(settings)
    value = store.value(key) if store is not None else None
    return str(value) if value not in (None, "") else None


def readSetting(name, settings=None):
    """The value of a setting of ``NAMES`` as a string, or None when unset."""
    if name not in NAMES:
        raise KeyError(f"unknown SSLSegmentation setting {name!r}; known: {', '.join(NAMES)}")
    return readSlicerSetting(PREFIX + name, settings)


def writeSetting(name, value, settings=None, environ=None):
    """Store a setting (None or "" clears it); ``HomeFolder`` applies to this process at once."""
    if name not in NAMES:
        raise KeyError(f"unknown SSLSegmentation setting {name!r}; known: {', '.join(NAMES)}")
    if name == "Device" and value not in (None, "") and value not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {value!r}")
    store = _store(settings)
    if store is None:
        raise RuntimeError("Slicer settings are only available inside Slicer")
    store.setValue(PREFIX + name, "" if value is None else str(value))
    if name == "HomeFolder":
        applyHomeFolder(settings=store, environ=environ)


def applyHomeFolder(settings=None, environ=None):
    """Make the ``HomeFolder`` setting, when set, the engine's ``SSLSEG_HOME`` (inherited by the background
    processes). Returns the engine home in use."""
    environ = os.environ if environ is None else environ
    home = readSetting("HomeFolder", settings)
    if home:
        environ["SSLSEG_HOME"] = os.path.abspath(os.path.expanduser(home))
    return os.path.abspath(os.path.expanduser(environ.get("SSLSEG_HOME") or os.path.join("~", ".sslseg")))


def defaultDevice(settings=None):
    """The ``Device`` setting, or ``auto``."""
    value = readSetting("Device", settings)
    return value if value in DEVICES else "auto"
