"""Pretrained backbones: the catalog, the cache and downloads, and safe, faithful checkpoint loading.

- ``load_backbone(source, num_classes, in_channels=1)`` -> ``(network, LoadReport)``
- ``list_backbones()``, ``import_checkpoint(path, name=None)``, ``download_backbone(name, progress=None)``,
  ``inspect(source)``

Importing this package also registers the MIS-FM ``FMUNet`` network family with ``sslseg.networks`` (cheaply: the
network code and torch are imported only when an FMUNet is built). See the README section "Backbones".

Example::

    import sslseg
    network, report = sslseg.load_backbone("ResEncL-OpenMind-S3D", num_classes=3)
    print(report.summary())
"""

from . import misfm as _misfm  # noqa: F401  (registers the FMUNet family)
from .api import import_checkpoint, inspect, list_backbones, load_backbone
from .download import download_backbone
from .report import LoadReport, PartCounts

__all__ = ["load_backbone", "list_backbones", "import_checkpoint", "download_backbone", "inspect", "LoadReport",
           "PartCounts"]
