"""The module's parameters, saved with the scene: a typed ``@parameterNodeWrapper`` class (Slicer's parameter nodes;
``parameterFields`` gives the stand-in outside Slicer). The ``.ui`` file's ``SlicerParameterName`` properties name
fields of this class (checked by the tests); "auto" choices are ``None``. Settings that belong to the user rather
than the scene (models folder, engine home, device) live in Slicer's settings instead (see ``settings``).

Example (Slicer's Python console)::

    parameterNode = slicer.util.getModuleLogic("SSLSegmentation").getParameterNode()
    parameterNode.preset = "cpu"          # None: chosen by device (presetForDevice)
    parameterNode.validationPercent = 20   # None: the engine's default
    parameterNode.trainingVolumes, parameterNode.trainingSegmentations
"""

from typing import Annotated, Optional

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from sslseg.presets import PRESETS

from SSLCommonLib.parameterFields import Choice, Default, WithinRange, parameterNodeWrapper
from SSLCommonLib.settings import DEVICES

DEFAULT_BACKBONE = "ResEncL-OpenMind-S3D"
PRESET_CHOICES = tuple(PRESETS)


@parameterNodeWrapper
class SSLSegmentationParameterNode:
    """Parameters of the SSLSegmentation module."""

    # fine-tuning
    backbone: Annotated[str, Default(DEFAULT_BACKBONE)]  # catalog name, checkpoint path, or "none" (from scratch)
    trainingVolumes: list[vtkMRMLScalarVolumeNode]
    trainingSegmentations: list[vtkMRMLSegmentationNode]  # the i-th belongs to the i-th training volume
    segmentNames: str = ""  # segments to learn, comma-separated; empty: all segments of the first pair
    validationPercent: Optional[Annotated[int, WithinRange(0, 50)]] = None  # None: the engine's default
    preset: Optional[Annotated[str, Choice(PRESET_CHOICES)]] = None  # None: by device ("cpu" / "quick")
    device: Annotated[str, Choice(DEVICES), Default("auto")]
    modelName: str = ""  # empty: generated
    continueFromModel: bool = False
    # segmentation
    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""  # name in the models folder
    tta: bool = False  # test-time mirroring (8x slower on CPU)
    uncertainty: bool = False  # also compute the uncertainty map
    writeInto: vtkMRMLSegmentationNode  # None: a new segmentation; else its segments of the model's names are replaced
    outputSegmentation: vtkMRMLSegmentationNode  # the last result
    uncertaintyVolume: vtkMRMLScalarVolumeNode  # the last result's uncertainty map
    # which case next
    candidateVolumes: list[vtkMRMLScalarVolumeNode]
    candidateFolder: str = ""  # a folder of images, used instead of scene volumes when set


FIELD_NAMES = tuple(SSLSegmentationParameterNode.__annotations__)
