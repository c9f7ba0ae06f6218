"""Fine-tuning a segmentation network with the low-data recipe of Wald et al. ("Revisiting MAE pre-training for 3D
medical image segmentation", CVPR 2025), or from scratch with nnU-Net's defaults (Isensee et al., Nature Methods
2021). ``sslseg.finetune(...)`` / ``sslseg finetune`` run it.

Map of the package (in the order a run uses it):

- ``options``: every user option checked in one place, before any data is read (``check_finetune_options``);
- ``data``: reading and checking the cases, the label table, the train/validation split, the in-memory
  ``PreparedCase`` and the ``PatchSampler`` with its MONAI augmentation;
- ``start``: where a run starts: a fresh network, a pretrained backbone, or a fine-tuned model (``init_model``);
- ``planning``: spacing, normalisation, patch and batch as a small ``Plan`` (``make_plan``);
- ``memory``: fitting a step into GPU memory (gradient checkpointing, then batch, then patch);
- ``loss``: Dice + cross-entropy with deep supervision;
- ``budget``: the time limit (``TimeBudget``: calibration, per-step estimate, validation cost, rescaling);
- ``evaluation``: validation Dice during training;
- ``trainer``: ``FineTuner`` and its variants (``ScratchTrainer``, ``ModelTuner``), whose ``run()`` is a short list
  of named steps, and ``finetune()``.

Importing the package is cheap (no torch): ``finetune`` and the trainers load on first use.

Example::

    from sslseg.finetuning import finetune
    model_dir = finetune("ResEncL-OpenMind-S3D", data="Task04_Hippocampus", out="models/hippo", preset="quick")
"""

__all__ = ["finetune", "FineTuner", "ScratchTrainer", "ModelTuner"]


def __getattr__(name):
    if name in __all__:  # PEP 562: the trainer (and torch) only when asked for
        from sslseg.finetuning import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'sslseg.finetuning' has no attribute {name!r}")
