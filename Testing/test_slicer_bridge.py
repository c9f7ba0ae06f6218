"""The MRML <-> engine bridge (SSLCommonLib.nodeBridge) on real slicer-core nodes and real hippocampus data."""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from sslseg.errors import UserError
from sslseg.imageio import Geometry, read_image

CASE = "hippocampus_006"
LABELS = [
    {"value": 1, "name": "Anterior", "color": [0.9, 0.2, 0.1]},
    {"value": 2, "name": "Posterior", "color": [0.1, 0.5, 0.95]},
]


@pytest.fixture
def bridge(slicer_scene):
    from SSLCommonLib import nodeBridge

    return nodeBridge


def _paths(hippocampus_dir, case=CASE):
    return (os.path.join(hippocampus_dir, "imagesTr", f"{case}.nii.gz"),
            os.path.join(hippocampus_dir, "labelsTr", f"{case}.nii.gz"))


def _assert_same_geometry(a: Geometry, b: Geometry, atol=1e-5):
    assert tuple(a.shape) == tuple(b.shape)
    assert np.allclose(a.spacing, b.spacing, atol=atol)
    assert np.allclose(a.origin, b.origin, atol=atol)
    assert np.allclose(a.direction, b.direction, atol=atol)


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


# ---- volumes --------------------------------------------------------------------------------------------------
def test_nifti_volume_matches_simpleitk(bridge, hippocampus_dir):
    import slicer

    image_path, _ = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    array, geometry = bridge.volumeToArray(volume)
    expected, expected_geometry = read_image(image_path)
    assert array.dtype == expected.dtype and np.array_equal(array, expected)
    _assert_same_geometry(geometry, expected_geometry, atol=1e-6)
    # the IJK-to-RAS matrix Slicer computed is the LPS geometry with x and y negated
    ras = np.diag([-1, -1, 1, 1]) @ expected_geometry.index_to_physical()
    assert np.allclose(bridge.volumeIJKToWorldMatrix(volume), ras, atol=1e-6)


def test_oblique_volume_matches_simpleitk(bridge, hippocampus_dir, tmp_path):
    import slicer

    image_path, _ = _paths(hippocampus_dir)
    image = sitk.ReadImage(image_path)
    image.SetDirection(tuple(_rotation([1, 2, 3], 27).ravel()))
    image.SetOrigin((12.5, -40.25, 7.0))
    image.SetSpacing((0.9, 1.1, 1.7))
    oblique = str(tmp_path / "oblique.nii.gz")
    sitk.WriteImage(image, oblique)

    volume = slicer.util.loadVolume(oblique)
    array, geometry = bridge.volumeToArray(volume)
    expected, expected_geometry = read_image(oblique)
    assert np.array_equal(array, expected)
    _assert_same_geometry(geometry, expected_geometry, atol=1e-5)
    # and through a file for the engine: the geometry survives exactly
    written = bridge.writeVolume(volume, tmp_path / "engine" / "case_0000.nii.gz")
    again, again_geometry = read_image(written)
    assert np.array_equal(again, expected)
    _assert_same_geometry(again_geometry, expected_geometry, atol=1e-5)


def test_parent_linear_transform_is_hardened_into_geometry(bridge, hippocampus_dir):
    import slicer

    image_path, _ = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    plain_array, plain_geometry = bridge.volumeToArray(volume)

    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tilt")
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation([0, 1, 1], 33)
    matrix[:3, 3] = [5.0, -7.5, 20.0]
    slicer.util.updateTransformMatrixFromArray(transform, matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())

    array, geometry = bridge.volumeToArray(volume)
    assert np.array_equal(array, plain_array)  # no resampling, only the grid moves
    # Slicer's own hardening of a clone gives the same grid
    clone = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, volume, "hardened")
    clone.SetAndObserveTransformNodeID(transform.GetID())
    slicer.vtkSlicerTransformLogic.hardenTransform(clone)
    assert clone.GetParentTransformNode() is None
    _, hardened_geometry = bridge.volumeToArray(clone)
    _assert_same_geometry(geometry, hardened_geometry, atol=1e-5)
    # and it is the transform applied to the plain grid (in RAS)
    ras_plain = np.diag([-1, -1, 1, 1]) @ plain_geometry.index_to_physical()
    ras = np.diag([-1, -1, 1, 1]) @ geometry.index_to_physical()
    assert np.allclose(ras, matrix @ ras_plain, atol=1e-5)
    assert volume.GetParentTransformNode() is transform  # the input keeps its transform


def test_non_linear_transform_is_refused(bridge, hippocampus_dir):
    import slicer
    import vtk

    image_path, _ = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    points_from, points_to = vtk.vtkPoints(), vtk.vtkPoints()
    for p in [(0, 0, 0), (30, 0, 0), (0, 30, 0), (0, 0, 30), (15, 15, 15)]:
        points_from.InsertNextPoint(p)
        points_to.InsertNextPoint(p[0] + (3 if p == (15, 15, 15) else 0), p[1], p[2])
    spline = vtk.vtkThinPlateSplineTransform()
    spline.SetSourceLandmarks(points_from)
    spline.SetTargetLandmarks(points_to)
    spline.SetBasisToR()
    warp = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warp.SetAndObserveTransformToParent(spline)
    volume.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(UserError, match="non-linear transform"):
        bridge.volumeToArray(volume)


# ---- segmentations --------------------------------------------------------------------------------------------
def _study_with_volume(slicer, volume):
    sh = slicer.mrmlScene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient A")
    study = sh.CreateStudyItem(patient, "Study 1")
    sh.SetItemParent(sh.GetItemByDataNode(volume), study)
    return sh, study


def test_label_array_segmentation_round_trip_is_exact(bridge, hippocampus_dir):
    import slicer

    image_path, label_path = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    labels, _ = read_image(label_path)
    assert set(np.unique(labels)) == {0, 1, 2}
    sh, study = _study_with_volume(slicer, volume)
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()

    node = bridge.labelArrayToSegmentationNode(labels, LABELS, volume, name="Prediction")
    assert node.IsA("vtkMRMLSegmentationNode") and node.GetName() == "Prediction"
    # a new node and its display node only: the temporary labelmap and its helpers are gone
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before + 2
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(2)] == ["Anterior", "Posterior"]
    for i, entry in enumerate(LABELS):
        assert np.allclose(segmentation.GetNthSegment(i).GetColor(), entry["color"], atol=1e-6)
    # reference geometry is the volume's
    reference = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(
        segmentation.GetConversionParameter("Reference image geometry"), reference)
    assert reference.GetDimensions() == volume.GetImageData().GetDimensions()

    back, back_labels = bridge.segmentationToLabelArray(node, volume)
    assert np.array_equal(back, labels)
    assert [(e["value"], e["name"]) for e in back_labels] == [(1, "Anterior"), (2, "Posterior")]
    assert np.allclose([e["color"] for e in back_labels], [e["color"] for e in LABELS], atol=1e-6)
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before + 2

    # chosen segments, in the chosen order
    only, only_labels = bridge.segmentationToLabelArray(node, volume, ["Posterior", "Anterior"])
    assert np.array_equal(only, np.select([labels == 2, labels == 1], [1, 2], 0))
    assert [e["name"] for e in only_labels] == ["Posterior", "Anterior"]
    with pytest.raises(UserError, match="no segment named 'Hippocampus'.*'Anterior', 'Posterior'"):
        bridge.segmentationToLabelArray(node, volume, ["Hippocampus"])


def test_sparse_values_empty_segments_and_unknown_values(bridge, hippocampus_dir):
    import slicer

    image_path, label_path = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    labels, _ = read_image(label_path)
    sparse = np.where(labels == 2, 7, labels).astype(np.uint8)  # values 1 and 7
    entries = [{"value": 7, "name": "Posterior"}, {"value": 1, "name": "Anterior"}, {"value": 3, "name": "Empty"}]
    node = bridge.labelArrayToSegmentationNode(sparse, entries, volume)
    back, back_labels = bridge.segmentationToLabelArray(node, volume)
    # values come back as 1..N in list order
    assert [e["name"] for e in back_labels] == ["Posterior", "Anterior", "Empty"]
    assert np.array_equal(back, np.select([sparse == 7, sparse == 1], [1, 2], 0))

    count = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(UserError, match=r"values \[2\]"):
        bridge.labelArrayToSegmentationNode(labels, [{"value": 1, "name": "Anterior"}], volume)
    with pytest.raises(UserError, match="does not match"):
        bridge.labelArrayToSegmentationNode(labels[:-1], LABELS, volume)
    assert slicer.mrmlScene.GetNumberOfNodes() == count  # failed calls add nothing


def test_overlapping_segments_later_wins(bridge, hippocampus_dir):
    import slicer

    image_path, _ = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    shape = tuple(reversed(volume.GetImageData().GetDimensions()))
    first = np.zeros(shape, np.uint8)
    first[5:20, 10:30, 10:25] = 1
    second = np.zeros(shape, np.uint8)
    second[15:30, 20:40, 5:20] = 1
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for name, mask in (("first", first), ("second", second)):
        segment_id = node.GetSegmentation().AddEmptySegment(name, name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segment_id, volume)
    label_array, _ = bridge.segmentationToLabelArray(node, volume, ["first", "second"])
    assert np.array_equal(label_array, np.where(second == 1, 2, first))
    reversed_array, _ = bridge.segmentationToLabelArray(node, volume, ["second", "first"])
    assert np.array_equal(reversed_array, np.where(first == 1, 2, second))


def test_transformed_reference_round_trip(bridge, hippocampus_dir):
    import slicer

    image_path, label_path = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    labels, _ = read_image(label_path)
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation([1, 0, 1], 20)
    matrix[:3, 3] = [3, 4, 5]
    slicer.util.updateTransformMatrixFromArray(transform, matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    node = bridge.labelArrayToSegmentationNode(labels, LABELS, volume)
    assert node.GetTransformNodeID() == transform.GetID()  # shown where the volume is
    back, _ = bridge.segmentationToLabelArray(node, volume)
    assert np.array_equal(back, labels)


def test_seg_nrrd_written_and_read_back_agrees(bridge, hippocampus_dir, tmp_path):
    import slicer
    import slicerio

    image_path, label_path = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    labels, label_geometry = read_image(label_path)
    node = bridge.labelArrayToSegmentationNode(labels, LABELS, volume, name="Truth")
    path = str(tmp_path / "truth.seg.nrrd")
    assert slicer.util.saveNode(node, path)

    loaded = slicer.util.loadSegmentation(path, {"name": "Loaded"})
    assert loaded is not node and loaded.GetName() == "Loaded"
    back, back_labels = bridge.segmentationToLabelArray(loaded, volume)
    assert np.array_equal(back, labels)
    assert [e["name"] for e in back_labels] == ["Anterior", "Posterior"]
    assert np.allclose([e["color"] for e in back_labels], [e["color"] for e in LABELS], atol=1e-5)

    # an independent reader (slicerio) sees the same names, colours, voxels and geometry
    segmentation = slicerio.read_segmentation(path)
    names = [segment["name"] for segment in segmentation["segments"]]
    assert names == ["Anterior", "Posterior"]
    for segment, entry in zip(segmentation["segments"], LABELS):
        assert np.allclose(segment["color"], entry["color"], atol=1e-5)
    extracted = slicerio.extract_segments(segmentation, [("Anterior", 1), ("Posterior", 2)])
    voxels = extracted["voxels"]  # i, j, k order
    ijk_to_lps = np.asarray(extracted["ijkToLPS"])
    # place the file's (possibly cropped) grid into the reference grid
    reference = label_geometry.index_to_physical()
    offset = np.linalg.solve(reference, ijk_to_lps)
    assert np.allclose(offset[:3, :3], np.eye(3), atol=1e-5)
    start = np.round(offset[:3, 3]).astype(int)
    full = np.zeros(tuple(reversed(label_geometry.shape)), np.uint8)
    full[start[0]:start[0] + voxels.shape[0], start[1]:start[1] + voxels.shape[1],
         start[2]:start[2] + voxels.shape[2]] = voxels
    assert np.array_equal(full.transpose(2, 1, 0), labels)


def test_write_labels_for_the_engine(bridge, hippocampus_dir, tmp_path):
    import slicer

    image_path, label_path = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    labels, label_geometry = read_image(label_path)
    node = bridge.labelArrayToSegmentationNode(labels, LABELS, volume)
    written = bridge.writeLabels(node, volume, tmp_path / "labelsTr" / f"{CASE}.nii.gz", ["Posterior"])
    assert [e["name"] for e in written] == ["Posterior"]
    back, back_geometry = read_image(tmp_path / "labelsTr" / f"{CASE}.nii.gz")
    assert np.array_equal(back, (labels == 2).astype(np.uint8))
    _assert_same_geometry(back_geometry, label_geometry, atol=1e-6)


# ---- inputs are never modified --------------------------------------------------------------------------------
def _volume_state(slicer, volume):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return (np.array(slicer.util.arrayFromVolume(volume), copy=True), slicer.util.arrayFromVTKMatrix(matrix),
            volume.GetTransformNodeID(), volume.GetName())


def _segmentation_state(slicer, node):
    segmentation = node.GetSegmentation()
    state = {"source": segmentation.GetSourceRepresentationName(), "transform": node.GetTransformNodeID(),
             "reference": segmentation.GetConversionParameter("Reference image geometry")}
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        segment_id = segmentation.GetNthSegmentID(i)
        representations = []
        segment.GetContainedRepresentationNames(representations)
        state[segment_id] = (segment.GetName(), tuple(segment.GetColor()), tuple(sorted(representations)))
        if "Binary labelmap" in representations:
            state[segment_id + " voxels"] = np.array(
                slicer.util.arrayFromSegmentInternalBinaryLabelmap(node, segment_id), copy=True)
    return state


def _same(a, b):
    assert a.keys() == b.keys() if isinstance(a, dict) else len(a) == len(b)
    for key in (a if isinstance(a, dict) else range(len(a))):
        if isinstance(a[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_bridge_never_modifies_inputs(bridge, hippocampus_dir, tmp_path):
    import slicer

    image_path, label_path = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    slicer.util.updateTransformMatrixFromArray(transform, np.diag([1.0, 1.0, 1.0, 1.0]) + np.eye(4, k=3) * 2)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    labels, _ = read_image(label_path)
    segmentation = bridge.labelArrayToSegmentationNode(labels, LABELS, volume, name="User's annotation")
    # a second annotation whose source representation is a closed surface (as after importing a model): the
    # export must not add a labelmap representation to it
    surface = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surface annotation")
    surface.GetSegmentation().DeepCopy(segmentation.GetSegmentation())
    surface.SetAndObserveTransformNodeID(transform.GetID())
    surface.CreateClosedSurfaceRepresentation()
    surface.GetSegmentation().SetSourceRepresentationName("Closed surface")
    surface.GetSegmentation().RemoveRepresentation("Binary labelmap")
    volume_before = _volume_state(slicer, volume)
    segmentation_before = _segmentation_state(slicer, segmentation)
    surface_before = _segmentation_state(slicer, surface)
    assert "Binary labelmap" not in surface_before[surface.GetSegmentation().GetNthSegmentID(0)][2]
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()

    bridge.volumeToArray(volume)[0][:] = 0  # the array is a copy
    bridge.writeVolume(volume, tmp_path / "v.nii.gz")
    bridge.segmentationToLabelArray(segmentation, volume)[0][:] = 9
    bridge.writeLabels(segmentation, volume, tmp_path / "l.nii.gz", ["Anterior"])
    from_surface, _ = bridge.segmentationToLabelArray(surface, volume)
    assert (from_surface > 0).sum() > 0.5 * (labels > 0).sum()  # the surface was really rasterised
    with pytest.raises(UserError):
        bridge.segmentationToLabelArray(segmentation, volume, ["missing"])
    created = bridge.labelArrayToSegmentationNode(labels, LABELS, volume)

    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before + 2  # only the created node and its display node
    _same(_volume_state(slicer, volume), volume_before)
    _same(_segmentation_state(slicer, segmentation), segmentation_before)
    _same(_segmentation_state(slicer, surface), surface_before)
    assert created is not segmentation


def test_segmentation_in_world_space_onto_transformed_volume(bridge, hippocampus_dir):
    """The user moved the volume with a transform and annotated in world space (segmentation not transformed):
    the labels still come out on the volume's own voxel grid."""
    import slicer

    image_path, label_path = _paths(hippocampus_dir)
    volume = slicer.util.loadVolume(image_path)
    labels, _ = read_image(label_path)
    node = bridge.labelArrayToSegmentationNode(labels, LABELS, volume)
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation([0, 0, 1], 90)  # a quarter turn keeps voxel centres on voxel centres
    matrix[:3, 3] = [4.0, -3.0, 2.0]
    slicer.util.updateTransformMatrixFromArray(transform, matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    node.SetAndObserveTransformNodeID(transform.GetID())
    node.HardenTransform()  # the annotation now lives in world coordinates
    assert node.GetTransformNodeID() is None
    back, _ = bridge.segmentationToLabelArray(node, volume)
    assert np.array_equal(back, labels)
