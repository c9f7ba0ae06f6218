"""SSLSegmentation: fine-tune self-supervised pretrained 3D segmentation networks on a few segmentations from the
scene and segment new volumes. This file is the thin module shell; the work is in ``SSLSegmentationLib``.

Console::

    logic = slicer.util.getModuleLogic("SSLSegmentation")
    model = logic.finetune(backbone="ResEncL-OpenMind-S3D", trainingPairs=[(volumeNode, segmentationNode)],
                           waitForCompletion=True)      # preset by device: "quick" on a GPU, "cpu" without one
    segmentationNode = logic.segment(model, inputVolumeNode, uncertainty=True, waitForCompletion=True)
    ranking = logic.rankCandidates(model, folder="/data/unlabelled", waitForCompletion=True)  # most uncertain first
"""

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from SSLSegmentationLib.segmentationLogic import SSLSegmentationLogic  # noqa: F401 - re-exported for the console

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4
    def _(text):
        return text

    def translate(context, text):
        return text


class SSLSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SSL Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SSLSegmentation developers"]
        self.parent.helpText = _(
            "Fine-tune a self-supervised pretrained 3D network (MAE/S3D or Volume Fusion backbone) on a few volumes "
            "you segmented, then segment new volumes into editable segmentations. Training and segmentation run in "
            "a background process (GPU when available); corrected results can be added back to training. "
            "Every action is also a Python call: see the module's README.")
        self.parent.acknowledgementText = _(
            "Fine-tuning recipe: Wald et al., 'Revisiting MAE pre-training for 3D medical image segmentation' "
            "(MIC-DKFZ, nnssl). Volume Fusion: Wang et al., MIS-FM (arXiv 2306.16925). Networks from nnU-Net's "
            "dynamic-network-architectures; transforms and inference from MONAI. Pretrained weights keep their "
            "own licences.")


class SSLSegmentationWidget(ScriptedLoadableModuleWidget):
    """Shell: the panel lives in ``SSLSegmentationLib.widget``."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.impl = None
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from SSLSegmentationLib.widget import SSLSegmentationWidgetImpl

        self.impl = SSLSegmentationWidgetImpl(self)
        self.logic = self.impl.logic  # slicer.util.getModuleLogic("SSLSegmentation") returns this

    def cleanup(self):
        if self.impl:
            self.impl.cleanup()

    def enter(self):
        if self.impl:
            self.impl.enter()

    def exit(self):
        if self.impl:
            self.impl.exit()


class SSLSegmentationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test; ctest through slicer_add_python_unittest): a synthetic two-segment
    volume, a short fine-tuning run with the tiny test preset in the background process, then segmentation with
    its uncertainty map."""

    def setUp(self):
        # ctest runs this in a bare Slicer (--testing): the engine's packages (torch through the PyTorch extension,
        # MONAI, ...) are installed first, as the panel does at first use
        from SSLCommonLib.installLogic import installForSelfTest

        installForSelfTest("SSLSegmentation")
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_finetuneAndSegment()

    def _syntheticPair(self, name, seed):
        import numpy as np

        rng = np.random.default_rng(seed)
        z, y, x = np.mgrid[:32, :40, :32]
        centre = np.array([16, 20, 16]) + rng.integers(-3, 4, 3)
        inner = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < 36
        outer = (((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < 100) & ~inner
        image = (100.0 * inner + 50.0 * outer + rng.normal(0, 5, inner.shape)).astype(np.float32)
        volume = slicer.util.addVolumeFromArray(image, name=name)
        from SSLCommonLib import nodeBridge

        labels = [{"value": 1, "name": "Core", "color": [1, 0, 0]}, {"value": 2, "name": "Shell", "color": [0, 0, 1]}]
        segmentation = nodeBridge.labelArrayToSegmentationNode(inner * 1 + outer * 2, labels, volume, name + " seg")
        return volume, segmentation

    def test_finetuneAndSegment(self):
        import tempfile

        self.delayDisplay("Fine-tuning on synthetic volumes (tiny test network)")
        pairs = [self._syntheticPair(f"case{i}", i) for i in range(3)]
        testVolume, _ = self._syntheticPair("test", 10)
        logic = SSLSegmentationLogic(modelsFolder=tempfile.mkdtemp())
        model = logic.finetune(None, pairs, preset="test", device="cpu", steps=20, waitForCompletion=True)
        self.assertTrue(model in [m["path"] for m in logic.modelStore.listModels()])
        result = logic.segment(model, testVolume, device="cpu", uncertainty=True, waitForCompletion=True)
        segmentation = result.GetSegmentation()
        self.assertEqual([segmentation.GetNthSegment(i).GetName() for i in range(2)], ["Core", "Shell"])
        from SSLSegmentationLib.resultNodes import uncertaintyOf

        uncertainty, summary = uncertaintyOf(result)
        self.assertEqual(slicer.util.arrayFromVolume(uncertainty).shape, slicer.util.arrayFromVolume(testVolume).shape)
        self.assertIn("score", summary)
        self.delayDisplay("Test passed")
