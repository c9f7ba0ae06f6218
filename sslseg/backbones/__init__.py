"""Pretrained backbones: the catalog, the cache and downloads, and safe, faithful checkpoint loading.

- ``load_backbone(source, num_classes, in_channels=1)`` -> ``(network, LoadReport)``
- ``list_backbones()``, ``import_checkpoint(path, name=None)``, ``download_backbone(name, progress=None)``,
  ``inspect(source)``

Map of the package: ``api`` (the functions above), ``catalog`` (+ ``catalog.json``, the public checkpoints),
``cache`` and ``download`` (the local store), ``safe_load`` (weights-only reading), the format readers ``nnssl``
(ResEnc checkpoints) and ``misfm`` (FMUNet checkpoints), ``transfer`` (tensor copying by the network family's
weight layout, see ``sslseg.networks``) and ``report`` (``LoadReport``). See the README section "Backbones".

Example::

    import sslseg
    network, report = sslseg.load_backbone("ResEncL-OpenMind-S3D", num_classes=3)
    print(report.summary())
"""

from .api import import_checkpoint, inspect, list_backbones, load_backbone
from .download import download_backbone
from .report import LoadReport, PartCounts

__all__ = ["load_backbone", "list_backbones", "import_checkpoint", "download_backbone", "inspect", "LoadReport",
           "PartCounts"]
