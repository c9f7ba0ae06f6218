"""Bad data and bad prediction requests, through the command line and the Python API: each is refused with one line
that names the problem, before any work; inputs stay byte-identical, the output folder is not created or changed,
and nothing is left half-written.

Real data: a few MSD Task04 Hippocampus cases copied into tmp_path and spoilt there. Prediction needs a model: one is
trained once per module (2 steps of the test preset, a few seconds on a CPU).
"""

import gzip
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

import sslseg
from bad_inputs import Untouched, assert_refused, assert_user_error, partial_files, run_cli
from sslseg.datasets import load_dataset
from sslseg.errors import UserError
from sslseg.imageio import Geometry, read_image, write_image
from sslseg.segfile import write_seg_nrrd

CASES = ("hippocampus_006", "hippocampus_007", "hippocampus_011")
LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}


# --- building blocks ---------------------------------------------------------------------------------------------

def copy_case(hippocampus_dir, case, image_to, label_to=None):
    shutil.copyfile(os.path.join(hippocampus_dir, "imagesTr", f"{case}.nii.gz"), image_to)
    if label_to is not None:
        shutil.copyfile(os.path.join(hippocampus_dir, "labelsTr", f"{case}.nii.gz"), label_to)


def make_dataset(root, hippocampus_dir, meta="nnunet"):
    """An nnU-Net v2 folder (``<case>_0000.nii.gz``) of 3 real cases; ``meta``: "nnunet" (dataset.json with
    channel_names), "msd" (MSD dataset.json with a training list and plain names) or None (no dataset.json)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in CASES:
        image = f"{case}.nii.gz" if meta == "msd" else f"{case}_0000.nii.gz"
        copy_case(hippocampus_dir, case, root / "imagesTr" / image, root / "labelsTr" / f"{case}.nii.gz")
    if meta == "nnunet":
        write_json(root, {"channel_names": {"0": "MRI"}, "labels": LABELS, "file_ending": ".nii.gz"})
    elif meta == "msd":
        write_json(root, {"name": "Hippocampus", "modality": {"0": "MRI"},
                          "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
                          "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                                       for c in CASES]})
    return root


def write_json(root, value):
    (root / "dataset.json").write_text(json.dumps(value))


def edit_json(root, **changes):
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    write_json(root, meta)


def spoil_voxels(path, value, index=(2, 3, 4)):
    """Rewrite an image as float32 with one voxel set to ``value`` (NaN, inf), keeping its geometry."""
    image = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[index] = value
    spoilt = sitk.GetImageFromArray(array)
    spoilt.CopyInformation(image)
    sitk.WriteImage(spoilt, str(path), True)


def finetune_cli(root, out):
    return run_cli("finetune", "--backbone", "none", "--data", root, "--out", out, "--preset", "test", "--steps", 2,
                   "--device", "cpu", "--val-cases", 0)


def finetune_api(root, out):
    return sslseg.finetune("none", data=root, out=out, preset="test", steps=2, device="cpu", val_cases=0,
                           progress="none")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, hippocampus_dir):
    root = make_dataset(tmp_path_factory.mktemp("train") / "data", hippocampus_dir, meta="nnunet")
    out = tmp_path_factory.mktemp("model") / "hippo"
    return finetune_api(root, out)


# --- bad datasets: dataset.json, the folder layout, the voxels ---------------------------------------------------

def _json_is_a_list(root):
    write_json(root, [{"labels": LABELS}])


def _json_not_utf8(root):
    (root / "dataset.json").write_bytes('{"name": "Hippocampus \xe9t\xe9", "labels": {}}'.encode("latin-1"))


def _json_invalid(root):
    (root / "dataset.json").write_text('{"labels": {"background": 0,}')


def _training_entry_without_label(root):
    edit_json(root, training=[{"image": f"./imagesTr/{CASES[0]}.nii.gz"}])


def _training_entry_not_an_object(root):
    edit_json(root, training=[f"./imagesTr/{CASES[0]}.nii.gz"])


def _training_not_a_list(root):
    edit_json(root, training={"image": "a", "label": "b"})


def _training_lists_missing_file(root):
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["label"] = "./labelsTr/nobody.nii.gz"
    write_json(root, meta)


def _label_value_not_a_number(root):
    edit_json(root, labels={"background": 0, "Anterior": "one", "Posterior": 2})


def _label_value_duplicate(root):
    edit_json(root, labels={"background": 0, "Anterior": 1, "Posterior": 1})


def _label_value_too_large(root):
    edit_json(root, labels={"background": 0, "Anterior": 300})


def _labels_a_list(root):
    edit_json(root, labels=["background", "Anterior", "Posterior"])


def _labels_region_based(root):
    edit_json(root, labels={"background": 0, "hippocampus": [1, 2]})


def _msd_label_name_not_text(root):
    edit_json(root, labels={"0": "background", "1": 1})


def _channel_names_keyed_by_name(root):
    edit_json(root, channel_names={"MRI": 0})


def _modality_keyed_by_name(root):
    edit_json(root, modality={"MRI": "0"})


def _channel_names_with_gap(root):
    edit_json(root, channel_names={"0": "T1", "2": "T2"})


def _file_ending_unknown(root):
    edit_json(root, file_ending=".png")


def _name_not_text(root):
    edit_json(root, name=["Hippocampus"])


def _extra_channel_without_json(root):
    (root / "dataset.json").unlink()
    for case in CASES:
        shutil.copyfile(root / "imagesTr" / f"{case}_0000.nii.gz", root / "imagesTr" / f"{case}_0001.nii.gz")


def _extra_channel_with_json(root):
    shutil.copyfile(root / "imagesTr" / f"{CASES[1]}_0000.nii.gz", root / "imagesTr" / f"{CASES[1]}_0001.nii.gz")


def _image_without_label(root):
    (root / "labelsTr" / f"{CASES[2]}.nii.gz").unlink()


def _image_without_label_no_json(root):
    (root / "dataset.json").unlink()
    (root / "labelsTr" / f"{CASES[0]}.nii.gz").unlink()


def _seg_nrrd_as_label(root):
    (root / "labelsTr" / f"{CASES[0]}.nii.gz").rename(root / "labelsTr" / f"{CASES[0]}.seg.nrrd")


def _nifti_image_with_nan(root):
    spoil_voxels(root / "imagesTr" / f"{CASES[1]}_0000.nii.gz", np.nan)


def _nifti_image_with_inf(root):
    spoil_voxels(root / "imagesTr" / f"{CASES[2]}_0000.nii.gz", -np.inf)


def _nifti_label_with_nan(root):
    spoil_voxels(root / "labelsTr" / f"{CASES[0]}.nii.gz", np.nan)


def _no_images_folder(root):
    shutil.rmtree(root / "imagesTr")


# (spoil, dataset layout, words the one-line message must contain)
BAD_DATASETS = {
    "json-is-a-list": (_json_is_a_list, "nnunet", ["dataset.json", "object"]),
    "json-not-utf8": (_json_not_utf8, "nnunet", ["dataset.json", "UTF-8"]),
    "json-invalid": (_json_invalid, "nnunet", ["dataset.json", "not valid JSON"]),
    "training-entry-without-label": (_training_entry_without_label, "msd", ['"training" entry 0', '"label"']),
    "training-entry-not-an-object": (_training_entry_not_an_object, "msd", ['"training" entry 0', "object"]),
    "training-not-a-list": (_training_not_a_list, "msd", ['"training"', "list"]),
    "training-lists-missing-file": (_training_lists_missing_file, "msd", ["do not exist", "nobody.nii.gz"]),
    "label-value-not-a-number": (_label_value_not_a_number, "nnunet", ['"labels"', "Anterior", "whole number"]),
    "label-value-duplicate": (_label_value_duplicate, "nnunet", ['"labels"', "value 1 twice"]),
    "label-value-300": (_label_value_too_large, "nnunet", ['"labels"', "at most 255"]),
    "labels-a-list": (_labels_a_list, "nnunet", ['"labels"', "object"]),
    "labels-region-based": (_labels_region_based, "nnunet", ['"labels"', "region"]),
    "msd-label-name-not-text": (_msd_label_name_not_text, "msd", ['"labels"', "name"]),
    "channel-names-keyed-by-name": (_channel_names_keyed_by_name, "nnunet", ['"channel_names"', "index", "MRI"]),
    "modality-keyed-by-name": (_modality_keyed_by_name, "msd", ['"modality"', "index"]),
    "channel-names-with-gap": (_channel_names_with_gap, "nnunet", ['"channel_names"', "0, 1, 2"]),
    "file-ending-png": (_file_ending_unknown, "nnunet", ['"file_ending"', ".png"]),
    "name-not-text": (_name_not_text, "nnunet", ['"name"', "text"]),
    "channels-without-json": (_extra_channel_without_json, "nnunet", ["_0001.nii.gz", "channel", "dataset.json"]),
    "undeclared-channel": (_extra_channel_with_json, "nnunet", [f"{CASES[1]}_0001.nii.gz", "1 channel"]),
    "image-without-label": (_image_without_label, "nnunet", ["without a label", f"{CASES[2]}_0000.nii.gz"]),
    "image-without-label-no-json": (_image_without_label_no_json, "nnunet", ["without a label", CASES[0]]),
    "seg-nrrd-as-label": (_seg_nrrd_as_label, "nnunet", ["Slicer segmentation", f"{CASES[0]}.seg.nrrd"]),
    "nifti-image-nan": (_nifti_image_with_nan, "nnunet", ["NaN", f"{CASES[1]}_0000.nii.gz"]),
    "nifti-image-inf": (_nifti_image_with_inf, "nnunet", ["infinite", f"{CASES[2]}_0000.nii.gz"]),
    "nifti-label-nan": (_nifti_label_with_nan, "nnunet", ["NaN", f"labelsTr{os.sep}{CASES[0]}.nii.gz"]),
    "no-imagesTr": (_no_images_folder, "nnunet", ["not a dataset folder", "imagesTr"]),
}


@pytest.fixture(params=sorted(BAD_DATASETS), ids=sorted(BAD_DATASETS))
def bad_dataset(request, tmp_path, hippocampus_dir):
    spoil, layout, words = BAD_DATASETS[request.param]
    root = make_dataset(tmp_path / "data", hippocampus_dir, meta=layout)
    spoil(root)
    return root, words


def test_bad_dataset_is_refused_by_the_api(bad_dataset, tmp_path):
    root, words = bad_dataset
    out = tmp_path / "model"
    with Untouched(root, out):
        assert_user_error(lambda: finetune_api(root, out), *words)


@pytest.mark.parametrize("bad_dataset", ["json-is-a-list", "json-not-utf8", "training-entry-without-label",
                                         "label-value-not-a-number", "label-value-duplicate",
                                         "channel-names-keyed-by-name", "channels-without-json",
                                         "image-without-label", "nifti-image-nan"], indirect=True)
def test_bad_dataset_is_refused_by_the_cli(bad_dataset, tmp_path):
    root, words = bad_dataset
    out = tmp_path / "model"
    with Untouched(root, out):
        assert_refused(finetune_cli(root, out), *words)


# --- what the dataset fixes still accept -------------------------------------------------------------------------

def test_nifti_nan_is_found_although_the_nifti_reader_zeroes_it(tmp_path, hippocampus_dir):
    """ITK reads NIfTI through the NIfTI reference library, whose reader sets non-finite floats to 0: the NaN is in
    the file, the array SimpleITK returns no longer shows it, and reading must still refuse the file."""
    path = tmp_path / "scan.nii.gz"
    copy_case(hippocampus_dir, CASES[0], path)
    spoil_voxels(path, np.nan)
    with gzip.open(path) as stream:
        raw = np.frombuffer(stream.read()[352:], np.float32)
    assert np.isnan(raw).sum() == 1  # the writer kept the NaN
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # the cause: the reader hid it
    assert_user_error(lambda: read_image(path), "scan.nii.gz", "1 NaN")
    clean = tmp_path / "clean.nii.gz"
    copy_case(hippocampus_dir, CASES[0], clean)
    spoil_voxels(clean, 5.0)
    assert read_image(clean)[0][2, 3, 4] == 5.0  # a float NIfTI without NaN reads as before


def test_good_layouts_still_load(tmp_path, hippocampus_dir):
    for meta in ("nnunet", "msd", None):
        root = make_dataset(tmp_path / str(meta), hippocampus_dir, meta=meta)
        (root / "imagesTr" / "._hidden_0000.nii.gz").write_bytes(b"\0\5\26\7")  # macOS resource forks are ignored
        dataset = load_dataset(root)
        assert [case.case_id for case in dataset.cases] == list(CASES)
        assert dataset.label_names == ({} if meta is None else {1: "Anterior", 2: "Posterior"})


# --- bad prediction requests -------------------------------------------------------------------------------------

@pytest.fixture
def scans(tmp_path, hippocampus_dir):
    folder = tmp_path / "scans"
    folder.mkdir()
    for case in CASES[:2]:
        copy_case(hippocampus_dir, case, folder / f"{case}.nii.gz")
    return folder


def _same_folder(scans, out):
    return [scans], scans, {}


def _symlink_to_input_in_output(scans, out):
    out.mkdir()
    (out / f"{CASES[0]}.nii.gz").symlink_to(scans / f"{CASES[0]}.nii.gz")
    return [scans], out, {}


def _hard_link_to_input_in_output(scans, out):
    out.mkdir()
    os.link(scans / f"{CASES[1]}.nii.gz", out / f"{CASES[1]}.nii.gz")
    return [scans], out, {}


def _nrrd_input_nrrd_output(scans, out):
    image, geometry = read_image(scans / f"{CASES[0]}.nii.gz")
    write_image(image, geometry, scans / "other.nrrd")
    return [scans / "other.nrrd"], scans, {"format": "nrrd"}


def _output_is_a_file(scans, out):
    out.write_text("my notes")
    return [scans], out, {}


def _output_below_a_file(scans, out):
    out.write_text("my notes")
    return [scans], out / "segmentations", {}


def _output_name_is_a_folder(scans, out):
    (out / f"{CASES[0]}.nii.gz").mkdir(parents=True)
    return [scans], out, {}


def _two_inputs_one_name(scans, out):
    image, geometry = read_image(scans / f"{CASES[1]}.nii.gz")
    write_image(image, geometry, scans / f"{CASES[1]}.nrrd")
    return [scans], out, {}


def _same_input_twice(scans, out):
    return [scans / f"{CASES[0]}.nii.gz", scans], out, {}


def _batch_size_zero(scans, out):
    return [scans], out, {"batch_size": 0}


def _batch_size_negative(scans, out):
    return [scans], out, {"batch_size": -3}


def _overlap_one(scans, out):
    return [scans], out, {"overlap": 1.0}


def _overlap_nan(scans, out):
    return [scans], out, {"overlap": float("nan")}


def _unknown_device(scans, out):
    return [scans], out, {"device": "gpu0"}


def _missing_input(scans, out):
    return [scans / "nobody.nii.gz"], out, {}


def _not_an_image(scans, out):
    (scans / "notes.txt").write_text("not a scan")
    return [scans / "notes.txt"], out, {}


def _empty_folder(scans, out):
    (scans / "empty").mkdir()
    return [scans / "empty"], out, {}


def _seg_nrrd_input(scans, out):
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 2, 3] = 1
    write_seg_nrrd(labels, Geometry(labels.shape), [{"value": 1, "name": "a"}], scans / "done.seg.nrrd")
    return [scans / "done.seg.nrrd"], out, {}


def _nifti_nan_input(scans, out):
    spoil_voxels(scans / f"{CASES[1]}.nii.gz", np.nan)
    return [scans], out, {}


def _truncated_input(scans, out):
    path = scans / f"{CASES[1]}.nii.gz"
    path.write_bytes(path.read_bytes()[:3000])
    return [scans], out, {}


def _two_channel_input(scans, out):
    array = np.zeros((6, 7, 8, 2), np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=True), str(scans / "two.mha"))
    return [scans / "two.mha"], out, {}


def _resampling_too_large(scans, out):
    array = np.ones((64, 64, 64), np.float32)
    write_image(array, Geometry(array.shape, (20.0, 20.0, 20.0)), scans / "coarse.nrrd")
    return [scans / "coarse.nrrd"], out, {}


# (make(scans, out) -> (inputs, output, options), words); options use the API's keywords
BAD_PREDICTIONS = {
    "output-is-the-input-folder": (_same_folder, ["would overwrite the input", f"{CASES[0]}.nii.gz"]),
    "output-symlink-to-input": (_symlink_to_input_in_output, ["would overwrite the input"]),
    "output-hard-link-to-input": (_hard_link_to_input_in_output, ["would overwrite the input", CASES[1]]),
    "nrrd-output-onto-nrrd-input": (_nrrd_input_nrrd_output, ["would overwrite the input", "other.nrrd"]),
    "output-is-an-existing-file": (_output_is_a_file, ["--output", "not a folder"]),
    "output-below-a-file": (_output_below_a_file, ["--output", "is a file"]),
    "output-name-is-a-folder": (_output_name_is_a_folder, ["existing folder", f"{CASES[0]}.nii.gz"]),
    "two-inputs-one-output-name": (_two_inputs_one_name, ["both be written as", CASES[1]]),
    "same-input-twice": (_same_input_twice, ["more than once", CASES[0]]),
    "batch-size-0": (_batch_size_zero, ["--batch-size", "at least 1"]),
    "batch-size-negative": (_batch_size_negative, ["--batch-size", "at least 1"]),
    "overlap-1": (_overlap_one, ["--overlap", "less than 1"]),
    "overlap-nan": (_overlap_nan, ["--overlap", "finite"]),
    "unknown-device": (_unknown_device, ["device", "gpu0"]),
    "missing-input": (_missing_input, ["not found", "nobody.nii.gz"]),
    "input-not-an-image": (_not_an_image, ["not an image file", "notes.txt"]),
    "input-empty-folder": (_empty_folder, ["no image files", "empty"]),
    "input-seg-nrrd": (_seg_nrrd_input, ["Slicer segmentation", "done.seg.nrrd"]),
    "input-nifti-nan": (_nifti_nan_input, ["NaN", f"{CASES[1]}.nii.gz"]),
    "input-truncated": (_truncated_input, ["truncated", f"{CASES[1]}.nii.gz"]),
    "input-two-channels": (_two_channel_input, ["channel", "two.mha"]),
    "input-resampling-too-large": (_resampling_too_large, ["coarse.nrrd", "voxels"]),
}

CLI_OPTIONS = {"batch_size": "--batch-size", "overlap": "--overlap", "device": "--device", "format": "--format"}


@pytest.fixture(params=sorted(BAD_PREDICTIONS), ids=sorted(BAD_PREDICTIONS))
def bad_prediction(request, scans, tmp_path):
    make, words = BAD_PREDICTIONS[request.param]
    inputs, output, options = make(scans, tmp_path / "out")
    return inputs, output, options, words


def _guarded(scans, output, model_dir):
    """Untouched over the inputs, the model and the output folder (or, when that is below a file, the file)."""
    watched = output if os.path.lexists(output) or not os.path.isfile(os.path.dirname(output)) else output.parent
    return Untouched(scans, model_dir, watched)


def test_bad_prediction_is_refused_by_the_api(bad_prediction, scans, model_dir):
    inputs, output, options, words = bad_prediction
    api = {("output_format" if k == "format" else "sw_batch_size" if k == "batch_size" else k): v
           for k, v in options.items()}
    with _guarded(scans, output, model_dir):
        assert_user_error(lambda: sslseg.predict(model_dir, inputs, output, progress="none", **api), *words)


def test_bad_prediction_is_refused_by_the_cli(bad_prediction, scans, model_dir):
    inputs, output, options, words = bad_prediction
    flags = [item for key, value in options.items() for item in (CLI_OPTIONS[key], value)]  # the last --device wins
    with _guarded(scans, output, model_dir):
        assert_refused(run_cli("predict", "--model", model_dir, "--input", *inputs, "--output", output,
                               "--device", "cpu", *flags), *words)


# --- the fixes, shown on the good path ---------------------------------------------------------------------------

def test_predict_into_the_input_folder_never_touches_the_scan(scans, model_dir, tmp_path):
    """The reported data loss: --input DIR --output DIR replaced the scan with its label map."""
    scan = scans / f"{CASES[0]}.nii.gz"
    before = scan.read_bytes()
    with pytest.raises(UserError, match="would overwrite the input"):
        sslseg.predict(model_dir, scans, scans, device="cpu", progress="none")
    assert_refused(run_cli("predict", "--model", model_dir, "--input", scans, "--output", scans, "--device", "cpu"),
                   "overwrite")
    assert scan.read_bytes() == before
    # into another folder, over the results of an earlier run (not inputs): written, and the scan unchanged
    out = tmp_path / "segmentations"
    out.mkdir()
    (out / f"{CASES[0]}.nii.gz").write_bytes(b"an earlier result")
    written = sslseg.predict(model_dir, scan, out, device="cpu", progress="none", seg_nrrd=True)
    assert sorted(os.path.basename(p) for p in written) == [f"{CASES[0]}.nii.gz", f"{CASES[0]}.seg.nrrd"]
    labels, geometry = read_image(out / f"{CASES[0]}.nii.gz")
    assert geometry.same_grid(read_image(scan)[1]) and set(np.unique(labels)) <= {0, 1, 2}
    assert scan.read_bytes() == before and not partial_files(out, scans)


def test_writers_leave_nothing_behind_when_they_fail(tmp_path):
    geometry = Geometry((4, 5, 6))
    labels = np.ones((4, 5, 6), np.uint8)
    for name, write in [("x.nii.gz", lambda p: write_image(labels, geometry, p)),
                        ("x.seg.nrrd", lambda p: write_seg_nrrd(labels, geometry, [{"value": 1, "name": "a"}], p))]:
        target = tmp_path / name
        target.mkdir()  # the final rename fails: a folder is in the way
        (target / "keep.txt").write_text("mine")
        with Untouched(tmp_path), pytest.raises(OSError):
            write(target)
    # a detached-header format would leave its data file under the temporary name: refused before writing
    with Untouched(tmp_path):
        assert_user_error(lambda: write_image(labels, geometry, tmp_path / "x.mhd"), "x.mhd", ".nrrd")
