"""The headless Slicer core harness itself: real logics wired like the application, slicer.util working on them."""

import os

import numpy as np
import pytest


def test_modules_and_scene_are_exposed(slicer_scene):
    import slicer

    assert slicer.mrmlScene is slicer_scene
    expected = {"volumes": "vtkSlicerVolumesLogic", "segmentations": "vtkSlicerSegmentationsModuleLogic",
                "colors": "vtkSlicerColorLogic", "subjecthierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
                "transforms": "vtkSlicerTransformLogic", "terminologies": "vtkSlicerTerminologiesModuleLogic"}
    for name, class_name in expected.items():
        logic = getattr(slicer.modules, name).logic()
        assert logic.GetClassName() == class_name
        assert logic.GetMRMLScene() is slicer_scene
        assert logic.GetMRMLApplicationLogic() is slicer.app.applicationLogic()
    assert slicer_scene.GetSubjectHierarchyNode() is not None
    # no GUI here: dialogs log instead of blocking
    assert slicer.app.testingEnabled()


def test_load_save_and_clean_scene(slicer_harness, hippocampus_dir, tmp_path):
    import slicer

    slicer_harness.clearScene()
    image = os.path.join(hippocampus_dir, "imagesTr", "hippocampus_006.nii.gz")
    label = os.path.join(hippocampus_dir, "labelsTr", "hippocampus_006.nii.gz")
    volume = slicer.util.loadVolume(image)
    labelmap = slicer.util.loadLabelVolume(label)
    assert volume.IsA("vtkMRMLScalarVolumeNode") and labelmap.IsA("vtkMRMLLabelMapVolumeNode")
    assert slicer.util.getNode("hippocampus_006") is volume
    # subject hierarchy items are created for new data nodes and go away with them
    sh = slicer.mrmlScene.GetSubjectHierarchyNode()
    item = sh.GetItemByDataNode(labelmap)
    assert item and sh.GetItemParent(item) == sh.GetSceneItemID()
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
    slicer.mrmlScene.RemoveNode(labelmap)
    assert not sh.GetItemByDataNode(labelmap)
    # saving goes through slicer.app.coreIOManager() like in Slicer
    path = str(tmp_path / "seg.seg.nrrd")
    assert slicer.util.saveNode(segmentation, path) and os.path.getsize(path) > 0
    assert slicer.util.saveNode(volume, str(tmp_path / "volume.nrrd"))
    with pytest.raises(RuntimeError, match="Failed to load"):
        slicer.util.loadVolume(str(tmp_path / "missing.nii.gz"))
    loaded = slicer.util.loadSegmentation(path)
    assert loaded.GetSegmentation().GetNumberOfSegments() == 2
    assert slicer_harness.userNodes()

    slicer_harness.clearScene()
    assert slicer_harness.userNodes() == []
    assert slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSelectionNode") is not None  # singletons come back
    assert np.array_equal(slicer.util.arrayFromVolume(slicer.util.loadVolume(image)).shape, (34, 52, 35))


def test_each_test_gets_a_clean_scene(slicer_harness, request):
    """The ``slicer_scene`` fixture removes what an earlier test left before the test and what the test leaves
    after it; checked within one test, so that it does not depend on which tests ran before."""
    import slicer

    slicer_harness.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "left by an earlier test")
    assert "left by an earlier test" in [node.GetName() for node in slicer_harness.userNodes()]

    def checkClean():  # registered before the fixture is set up, so it runs after the fixture's teardown
        left = [node.GetName() for node in slicer_harness.userNodes()]
        assert left == [], f"the slicer_scene fixture left {left}"

    request.addfinalizer(checkClean)
    scene = request.getfixturevalue("slicer_scene")
    assert scene is slicer.mrmlScene and slicer_harness.userNodes() == []
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "left by this test")
    assert slicer_harness.userNodes()
