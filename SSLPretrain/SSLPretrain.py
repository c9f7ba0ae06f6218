"""SSLPretrain: pretrain a self-supervised backbone (S3D / MAE masked autoencoding or Volume Fusion) on a site's own
unlabelled volumes; the result joins the backbone list of the SSLSegmentation module. This file is the thin module
shell; the work is in ``SSLPretrainLib`` (and the shared parts in the library ``SSLCommonLib``).

Console::

    logic = slicer.util.getModuleLogic("SSLPretrain")
    name = logic.pretrain(method="s3d", volumeNodes=[getNode("MRHead")], arch="ResEncS-cpu", steps=500, patch=64,
                          backboneName="my-s3d", waitForCompletion=True)
    slicer.util.getModuleLogic("SSLSegmentation").finetune(backbone=name, trainingPairs=pairs, preset="cpu")
    print(logic.serverCommand(method="s3d", imageFolder="/data/unlabelled", processes=8))   # torchrun ...
"""

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from SSLPretrainLib.pretrainLogic import SSLPretrainLogic  # noqa: F401 - re-exported for the console

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4
    def _(text):
        return text

    def translate(context, text):
        return text


class SSLPretrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SSL Pretrain")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        # the shared code is the library SSLCommonLib (not a module): nothing to load first
        self.parent.dependencies = []
        self.parent.contributors = ["SSLSegmentation developers"]
        self.parent.helpText = _(
            "Pretrain a 3D segmentation backbone on your own unlabelled volumes with self-supervised learning: S3D "
            "(sparse masked autoencoder), MAE (its dense variant) or Volume Fusion. Choose volumes from the scene or "
            "a folder of images; training runs in a background process (GPU when available) with a live loss chart "
            "and Cancel. The finished backbone appears in the SSL Segmentation module's backbone list. Large runs "
            "go to a GPU server: the 'Run on a server' box shows the equivalent torchrun command. Every action is "
            "also a Python call: see the module's README.")
        self.parent.acknowledgementText = _(
            "S3D: Wald et al., 'Revisiting MAE pre-training for 3D medical image segmentation' (MIC-DKFZ, nnssl). "
            "Volume Fusion: Wang et al., MIS-FM (arXiv 2306.16925) and PyMIC. Networks from nnU-Net's "
            "dynamic-network-architectures; transforms from MONAI.")


class SSLPretrainWidget(ScriptedLoadableModuleWidget):
    """Shell: the panel lives in ``SSLPretrainLib.widget``."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.impl = None
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from SSLPretrainLib.widget import SSLPretrainWidgetImpl

        self.impl = SSLPretrainWidgetImpl(self)
        self.logic = self.impl.logic  # slicer.util.getModuleLogic("SSLPretrain") returns this

    def cleanup(self):
        if self.impl:
            self.impl.cleanup()

    def enter(self):
        if self.impl:
            self.impl.enter()

    def exit(self):
        if self.impl:
            self.impl.exit()


class SSLPretrainTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test; ctest through slicer_add_python_unittest): two synthetic volumes, a
    short S3D pretraining with the tiny test network in the background process, then the backbone is in the list.
    The backbone cache is a temporary folder (SSLSEG_HOME), so the user's backbones are not touched."""

    def setUp(self):
        # ctest runs this in a bare Slicer (--testing): the engine's packages (torch through the PyTorch extension,
        # MONAI, ...) are installed first, as the panel does at first use
        from SSLCommonLib.installLogic import installForSelfTest

        installForSelfTest("SSLPretrain")
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_pretrainRegistersBackbone()

    def test_pretrainRegistersBackbone(self):
        import os
        import tempfile

        import numpy as np

        self.delayDisplay("Pretraining on synthetic volumes (tiny test network)")
        rng = np.random.default_rng(0)
        z, y, x = np.mgrid[:32, :40, :32]
        volumes = []
        for index in range(2):
            blob = ((z - 16) ** 2 + (y - 20 + 4 * index) ** 2 + (x - 16) ** 2) < 80
            image = (100.0 * blob + rng.normal(0, 10, blob.shape)).astype(np.float32)
            volumes.append(slicer.util.addVolumeFromArray(image, name=f"unlabelled{index}"))
        before = [slicer.util.arrayFromVolume(v).copy() for v in volumes]

        previousHome = os.environ.get("SSLSEG_HOME")
        os.environ["SSLSEG_HOME"] = tempfile.mkdtemp(prefix="SSLPretrainTest-")  # the child process inherits it
        try:
            logic = SSLPretrainLogic()
            name = logic.pretrain("s3d", volumeNodes=volumes, arch="ResEncT-test", steps=6, batch=2, patch=16,
                                  device="cpu", backboneName="slicer-self-test", waitForCompletion=True)
            self.assertEqual(name, "slicer-self-test")
            self.assertIn(name, [entry["name"] for entry in logic.listBackbones()])
            for volume, array in zip(volumes, before):
                self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(volume), array))
        finally:
            if previousHome is None:
                os.environ.pop("SSLSEG_HOME", None)
            else:
                os.environ["SSLSEG_HOME"] = previousHome
        self.delayDisplay("Test passed")
