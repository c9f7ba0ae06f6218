"""The module's parameters, saved with the scene: a typed ``@parameterNodeWrapper`` class like SSLSegmentation's
(``SSLCommonLib.parameterFields`` gives the stand-in outside Slicer). The ``.ui`` file's
``SlicerParameterName`` properties name fields of this class, and the ranges of the bound spin boxes equal the
``WithinRange`` validators (Slicer's GUI connector sets a spin box's range from them); both are checked by the tests.

Example (Slicer's Python console)::

    parameterNode = slicer.util.getModuleLogic("SSLPretrain").getParameterNode()
    parameterNode.method = "volf"
    parameterNode.steps = 0            # ValueError: WithinRange(1, 10000000)
    parameterNode.inputVolumes
"""

from typing import Annotated

from slicer import vtkMRMLScalarVolumeNode
from sslseg.networks import ARCHITECTURES as ENGINE_ARCHITECTURES
from sslseg.pretraining import METHODS

from SSLCommonLib.parameterFields import Choice, Default, WithinRange, parameterNodeWrapper
from SSLCommonLib.settings import DEVICES

# The engine's networks (sslseg.networks.ARCHITECTURES) offered in the panel: all but those made for tests only
# ("...-test"); the console's logic.pretrain(arch=...) takes every one of them.
ARCHITECTURES = tuple(name for name in ENGINE_ARCHITECTURES if not name.endswith("-test"))


@parameterNodeWrapper
class SSLPretrainParameterNode:
    """Parameters of the SSLPretrain module."""

    inputVolumes: list[vtkMRMLScalarVolumeNode]  # scene volumes to pretrain on
    useImageFolder: bool = False  # pretrain on the images of a folder instead of scene volumes
    imageFolder: str = ""  # folder of images (searched recursively) or a list file
    method: Annotated[str, Choice(METHODS), Default("s3d")]
    architecture: Annotated[str, Choice(ARCHITECTURES), Default("ResEncL")]  # ResEncL: the paper's (GPU)
    steps: Annotated[int, WithinRange(1, 10_000_000)] = 10000  # the paper: 250000
    batchSize: Annotated[int, WithinRange(1, 256)] = 2  # patches per step
    patchSize: Annotated[int, WithinRange(8, 512)] = 160  # cubic patch edge (a multiple of the total stride)
    spacing: Annotated[float, WithinRange(0.1, 10.0)] = 1.0  # isotropic target spacing in mm
    device: Annotated[str, Choice(DEVICES), Default("auto")]
    backboneName: str = ""  # empty: generated
    serverProcesses: Annotated[int, WithinRange(1, 64)] = 8  # GPUs per machine in the server command
    serverNodes: Annotated[int, WithinRange(1, 1024)] = 1  # machines in the server command


FIELD_NAMES = tuple(SSLPretrainParameterNode.__annotations__)
