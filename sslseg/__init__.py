"""sslseg: the engine of the SSLSegmentation 3D Slicer extension.

Self-supervised pretrained 3D segmentation backbones (MAE/S3D, Volume Fusion), fine-tuned with a low-data recipe,
and fast sliding-window inference. Pure Python (torch, MONAI, SimpleITK, numpy): it never imports ``slicer``,
``qt`` or ``vtk``, so the same code runs headless on a GPU server and inside Slicer.

The public API is imported lazily so that ``import sslseg`` stays cheap (no torch import) for the CLI's
``--help`` and for Slicer's dependency checks::

    import sslseg
    network, report = sslseg.load_backbone("ResEncL-OpenMind-S3D", num_classes=3)
"""

__version__ = "0.1.0"

# name -> (module, attribute); resolved on first access (PEP 562)
_LAZY = {
    "read_image": ("sslseg.imageio", "read_image"),
    "write_image": ("sslseg.imageio", "write_image"),
    "Geometry": ("sslseg.imageio", "Geometry"),
    "load_dataset": ("sslseg.datasets", "load_dataset"),
    "build_network": ("sslseg.networks", "build_network"),
    "load_backbone": ("sslseg.backbones", "load_backbone"),
    "finetune": ("sslseg.finetuning", "finetune"),
    "predict": ("sslseg.inference", "predict"),
    "load_model": ("sslseg.model_folder", "load_model"),
    "pretrain": ("sslseg.pretraining", "pretrain"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sslseg' has no attribute {name!r}")
