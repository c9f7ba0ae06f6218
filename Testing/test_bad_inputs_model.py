"""Bad fine-tuning options and bad model files: each is refused with one line that names the problem, before any
work, leaving every input byte-identical and nothing half-written (no model folder at --out, no ``.partial``).

Real files throughout: a model fine-tuned for two steps on copied hippocampus cases, then garbled, tampered with
or packed into hostile archives; the CLI runs in subprocesses (``python -m sslseg``)."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import zipfile

import pytest
import torch

import sslseg
from conftest import copy_dataset_subset
from bad_inputs import Untouched, assert_refused, assert_user_error, partial_files, run_cli
from sslseg.finetuning.options import check_finetune_options
from sslseg.model_folder import (MAX_META_BYTES, load_model, pack_model, read_model_meta, save_model,
                                 unpack_model)

CASES = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory, hippocampus_dir):
    """A copy of six hippocampus cases with their own dataset.json (the tests must never touch the shared data)."""
    root = tmp_path_factory.mktemp("inputs") / "hippocampus"
    copy_dataset_subset(hippocampus_dir, root, CASES)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory, data):
    """A real model folder (two training steps of the test preset on the CPU)."""
    out = tmp_path_factory.mktemp("engine") / "hippocampus"
    return sslseg.finetune("none", data=str(data), out=str(out), preset="test", steps=2, device="cpu", val_cases=0,
                           progress="none")


def _image(data):
    return sorted((data / "imagesTr").iterdir())[0]


def _nothing_written(tmp_path, out):
    assert not os.path.lexists(out), f"{out} was written"
    assert not partial_files(tmp_path), partial_files(tmp_path)


# --- fine-tuning options, through the CLI --------------------------------------------------------------------

def _label_info(tmp_path, content):
    path = tmp_path / "labels.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


BAD_OPTIONS = [
    (["--patch", "0", "0", "0"], ["--patch"]),
    (["--patch", "100000", "100000", "100000"], ["--patch", "too large"]),
    (["--seed", "-1"], ["--seed"]),
    (["--max-lr", "-1"], ["--max-lr"]),
    (["--max-lr", "0"], ["--max-lr"]),
    (["--max-lr", "nan"], ["--max-lr", "finite"]),
    (["--time-limit", "-5"], ["--time-limit"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--steps", "0"], ["--steps"]),
    (["--val-cases", "-1"], ["--val-cases"]),
    (["--max-memory-gb", "0"], ["--max-memory-gb"]),
    (["--device", "gpu0"], ["device", "gpu0"]),
    (["--label-info", [{"value": 300, "name": "Big"}]], ["--label-info", "300"]),
    (["--label-info", [{"value": "one", "name": "A"}]], ["--label-info", "one"]),
    (["--label-info", [{"value": 0, "name": "Background"}]], ["--label-info", "background"]),
    (["--label-info", [{"value": 1, "name": "A"}, {"value": 1, "name": "B"}]], ["--label-info", "more than once"]),
    (["--label-info", [{"value": 1, "name": 7}]], ["--label-info", "name"]),
    (["--label-info", [{"value": 1, "name": "A", "color": [1, 2, 3]}]], ["--label-info", "color"]),
    (["--label-info", [{"value": 1, "name": "A", "color": "red"}]], ["--label-info", "color"]),
    (["--label-info", {"1": "Anterior"}], ["--label-info", "list"]),
    (["--label-info", b"[{\"value\": 1, \"name\": \"\xe9\"}]"], ["--label-info", "UTF-8"]),
    (["--label-info", b"[{\"value\": 1,"], ["--label-info", "JSON"]),
    (["--label-info", [{"value": 1, "name": "A\nB"}]], ["--label-info", "one line"]),
]


@pytest.mark.parametrize("extra, words", BAD_OPTIONS, ids=[" ".join(map(str, a))[:40] for a, _ in BAD_OPTIONS])
def test_bad_finetune_option_is_refused_before_any_work(tmp_path, data, extra, words):
    if extra[0] == "--label-info":
        extra = ["--label-info", _label_info(tmp_path, extra[1])]
    out = tmp_path / "model"
    with Untouched(data, tmp_path):
        result = run_cli("finetune", "--data", data, "--out", out, "--preset", "test", "--device", "cpu", *extra)
    assert_refused(result, *words)
    _nothing_written(tmp_path, out)


def _bad_destinations(tmp_path, data, model):
    shutil.copytree(model, tmp_path / "existing-model")
    (tmp_path / "notes.txt").write_text("a user's file")
    return {
        "out is a file": (["--out", tmp_path / "notes.txt"], ["--out", "file"]),
        "out is the data folder": (["--out", data], ["--out", "not an sslseg model"]),
        "out below a file": (["--out", tmp_path / "notes.txt" / "model"], ["--out", "cannot be created"]),
        "pack is a folder": (["--pack", tmp_path], ["--pack", "folder"]),
        "pack inside out": (["--pack", tmp_path / "model" / "m.sslmodel"], ["--pack", "inside the model folder"]),
        "pack inside an existing model": (["--out", tmp_path / "existing-model", "--pack",
                                           tmp_path / "existing-model" / "m.sslmodel"], ["--pack", "inside"]),
        "pack without parent": (["--pack", tmp_path / "no" / "m.sslmodel"], ["--pack", "does not exist"]),
        "pack over a scan": (["--pack", _image(data)], ["--pack", "not a packed sslseg model"]),
        "pack over a text file": (["--pack", tmp_path / "notes.txt"], ["--pack", "not a packed sslseg model"]),
        "init model missing": (["--init-model", tmp_path / "absent"], ["--init-model", "not found"]),
        "init model not a model": (["--init-model", data], ["--init-model", "not a model folder"]),
    }


@pytest.mark.parametrize("case", ["out is a file", "out is the data folder", "out below a file", "pack is a folder",
                                  "pack inside out", "pack inside an existing model", "pack without parent",
                                  "pack over a scan", "pack over a text file", "init model missing",
                                  "init model not a model"])
def test_bad_destination_is_refused_before_training(tmp_path, data, model, case):
    extra, words = _bad_destinations(tmp_path, data, model)[case]
    args = ["finetune", "--data", data, "--out", tmp_path / "model", "--preset", "test", "--device", "cpu",
            "--steps", "2", "--val-cases", "0", "--progress", "json", *extra]
    with Untouched(data, tmp_path):
        result = run_cli(*args)
    assert_refused(result, *words)
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["event"] == "error" and not [e for e in events if e["event"] in ("start", "progress")]
    assert not os.path.lexists(tmp_path / "model")


def test_options_api_refuses_and_normalises(tmp_path):
    out = tmp_path / "model"
    assert_user_error(lambda: check_finetune_options(out=out, time_limit=-5), "--time-limit")
    assert_user_error(lambda: check_finetune_options(out=out, optimizer="adam"), "--optimizer", "adam")
    assert_user_error(lambda: check_finetune_options(out=out, steps=2.5), "--steps", "whole number")
    assert_user_error(lambda: check_finetune_options(out=out, label_info=[{"value": 1, "colour": [1, 0, 0]}]),
                      "--label-info", "colour")
    assert_user_error(lambda: check_finetune_options(out=None), "--out")
    options = check_finetune_options(out=out, time_limit=0, patch_size=(16, 16, 16), device="CPU",
                                     label_info=[{"value": 2, "name": "B", "color": [0, 1, 0]}])
    assert options.time_limit == 0.0 and options.patch_size == [16, 16, 16] and options.device == "cpu"
    assert options.label_info == [{"value": 2, "name": "B", "color": [0.0, 1.0, 0.0]}]
    assert options.out == str(out) and not out.exists()


# --- model.json, in model folders and .sslmodel files --------------------------------------------------------

def _zip(path, members, symlinks=()):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = ((stat.S_IFLNK | 0o777) if name in symlinks else (stat.S_IFREG | 0o644)) << 16
            archive.writestr(info, content)
    return path


def _garbled(tmp_path, model, change):
    """A copy of the model folder with model.json changed (a function of the parsed dict, or raw bytes), and the
    same packed as a .sslmodel."""
    folder = tmp_path / "garbled"
    shutil.copytree(model, folder)
    meta = json.loads((folder / "model.json").read_text())
    if not isinstance(change, bytes):
        change(meta)
    raw = change if isinstance(change, bytes) else json.dumps(meta).encode()
    (folder / "model.json").write_bytes(raw)
    packed = _zip(tmp_path / "garbled.sslmodel", {"model.json": raw, "model.pt": (folder / "model.pt").read_bytes()})
    return folder, packed


def _set(path, value):
    def change(meta):
        *parents, last = path.split(".")
        target = meta
        for key in parents:
            target = target[key]
        target[last] = value
    return change


GARBLED = {
    "labels not a list": (_set("labels", "Anterior"), ["labels", "list"]),
    "label value 300": (lambda m: m["labels"][0].update(value=300), ["labels", "300"]),
    "label value text": (lambda m: m["labels"][0].update(value="1"), ["labels", "value"]),
    "label colour": (lambda m: m["labels"][0].update(color=[0.5, 0.5]), ["labels", "color"]),
    "in_channels text": (_set("in_channels", "1"), ["in_channels"]),
    "in_channels zero": (_set("in_channels", 0), ["in_channels"]),
    "patch two sizes": (_set("patch_size", [16, 16]), ["patch_size"]),
    "patch zero": (_set("patch_size", [0, 16, 16]), ["patch_size"]),
    "patch huge": (_set("patch_size", [100000, 100000, 100000]), ["patch_size", "too large"]),
    "network text": (_set("network", "ResEncL"), ["network"]),
    "network config": (_set("network.config", [1, 2]), ["network.config"]),
    "network unbuildable": (_set("network.config", {"n_stages": "many"}), ["network"]),
    "spacing negative": (_set("preprocessing.spacing", [1.0, -1.0, 1.0]), ["spacing"]),
    "spacing text": (_set("preprocessing.spacing", "1mm"), ["spacing"]),
    "normalisation": (_set("preprocessing.normalization", "minmax"), ["normalization", "minmax"]),
    "preprocessing list": (_set("preprocessing", [1]), ["preprocessing"]),
    "format": (_set("format", "something-else/2"), ["not an sslseg model"]),
    "missing labels": (lambda m: m.pop("labels"), ["lacks", "labels"]),
    "top level list": (b"[1, 2, 3]", ["model.json", "object"]),
    "not UTF-8": ('{"format": "sslseg-model/1", "note": "caf\xe9"}'.encode("latin-1"), ["UTF-8"]),
    "not JSON": (b"{\"format\": ", ["JSON"]),
}


@pytest.mark.parametrize("case", sorted(GARBLED))
def test_garbled_model_json_is_one_line_for_folders_and_packed_files(tmp_path, model, case):
    change, words = GARBLED[case]
    folder, packed = _garbled(tmp_path, model, change)
    with Untouched(tmp_path):
        for path in (folder, packed):
            assert_user_error(lambda: load_model(path), *words)
            if case != "network unbuildable":  # read_model_meta checks the fields only: it never imports torch
                assert_user_error(lambda: read_model_meta(path), *words)
            assert str(path) in assert_user_error(lambda: load_model(path))
        assert_user_error(lambda: unpack_model(packed, tmp_path / "unpacked"), *words)
        assert_user_error(lambda: pack_model(folder, tmp_path / "again.sslmodel"), *words)
    assert not os.path.lexists(tmp_path / "unpacked") and not os.path.lexists(tmp_path / "again.sslmodel")


def test_garbled_model_is_refused_by_predict_cli(tmp_path, data, model):
    folder, packed = _garbled(tmp_path, model, _set("labels", {"1": "Anterior"}))
    for path in (folder, packed):
        with Untouched(tmp_path, data):
            result = run_cli("predict", "--model", path, "--input", _image(data), "--output", tmp_path / "out",
                             "--device", "cpu")
        assert_refused(result, "labels")
        _nothing_written(tmp_path, tmp_path / "out")


def test_read_model_meta_does_not_need_the_weights(tmp_path, model):
    folder = tmp_path / "meta-only"
    shutil.copytree(model, folder)
    (folder / "model.pt").write_bytes(b"not read")
    assert read_model_meta(folder)["labels"][0]["name"] == "Anterior"
    assert read_model_meta(pack_model(model, tmp_path / "m.sslmodel"))["in_channels"] == 1
    assert_user_error(lambda: load_model(folder), "model.pt", "not a model this program can trust")


# --- weights and archives ------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs code that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _tampered(tmp_path, model):
    folder = tmp_path / "tampered"
    shutil.copytree(model, folder)
    state = torch.load(folder / "model.pt", weights_only=True)
    torch.save({**state, "extra": _Payload(tmp_path / "pwned")}, folder / "model.pt")
    packed = _zip(tmp_path / "tampered.sslmodel", {name: (folder / name).read_bytes()
                                                   for name in ("model.json", "model.pt")})
    return folder, packed


def test_tampered_weights_are_refused_without_unsafe_advice(tmp_path, data, model):
    folder, packed = _tampered(tmp_path, model)
    with Untouched(tmp_path, data):
        for path in (folder, packed):
            assert_user_error(lambda: load_model(path), "not a model this program can trust")
            result = run_cli("predict", "--model", path, "--input", _image(data), "--output", tmp_path / "out",
                             "--device", "cpu")
            assert_refused(result, "not a model this program can trust")
        assert_user_error(lambda: unpack_model(packed, tmp_path / "unpacked"), "trust")
    assert not (tmp_path / "pwned").exists()
    _nothing_written(tmp_path, tmp_path / "unpacked")


def test_weights_that_do_not_fit_the_architecture(tmp_path, model):
    folder = tmp_path / "misfit"
    shutil.copytree(model, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["labels"].append({"value": 3, "name": "Extra", "color": [0, 1, 0]})  # one more output class
    (folder / "model.json").write_text(json.dumps(meta))
    with Untouched(tmp_path):
        assert_user_error(lambda: load_model(folder), "weights do not fit", "shape")


def _members(model):
    return {name: open(os.path.join(model, name), "rb").read() for name in ("model.json", "model.pt")}


ARCHIVES = {
    "symlink weights": (lambda m: {**m, "model.pt": b"/etc/passwd"}, ("model.pt",), ["symbolic link"]),
    "symlink json": (lambda m: {**m, "model.json": b"../../model.json"}, ("model.json",), ["symbolic link"]),
    "extra member": (lambda m: {**m, "README.txt": b"hello"}, (), ["exactly", "README.txt"]),
    "traversal member": (lambda m: {**m, "../evil.py": b"print(1)"}, (), ["exactly"]),
    "missing weights": (lambda m: {"model.json": m["model.json"]}, (), ["exactly", "model.pt"]),
    "json bomb": (lambda m: {**m, "model.json": m["model.json"][:-1] + b" " * (MAX_META_BYTES + 10) + b"}"}, (),
                  ["model.json", "declares", "allowed"]),
    "empty archive": (lambda m: {}, (), ["exactly", "nothing"]),
}


@pytest.mark.parametrize("case", sorted(ARCHIVES))
def test_hostile_archive_is_refused_before_reading(tmp_path, model, case):
    change, symlinks, words = ARCHIVES[case]
    packed = _zip(tmp_path / "hostile.sslmodel", change(_members(model)), symlinks)
    with Untouched(tmp_path):
        assert_user_error(lambda: load_model(packed), *words)
        assert_user_error(lambda: read_model_meta(packed), *words)
        assert_user_error(lambda: unpack_model(packed, tmp_path / "unpacked"), *words)
    _nothing_written(tmp_path, tmp_path / "unpacked")


def _declare_size(path, name: str, size: int):
    """Rewrite the uncompressed size that the local header and the central directory declare for ``name``."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info, position = archive.getinfo(name), archive.start_dir
    field = size.to_bytes(4, "little")
    raw[info.header_offset + 22: info.header_offset + 26] = field
    while raw[position:position + 4] == b"PK\x01\x02":  # central directory entries, one after another
        lengths = [int.from_bytes(raw[position + k: position + k + 2], "little") for k in (28, 30, 32)]
        if raw[position + 46: position + 46 + lengths[0]] == name.encode():
            raw[position + 24: position + 28] = field
        position += 46 + sum(lengths)
    path.write_bytes(bytes(raw))


def test_archive_whose_header_lies_about_size_is_refused(tmp_path, model):
    """A member that inflates to more than its header declares (a zip bomb hiding from the size check) is read
    only up to the declared size and then fails its checksum: refused, never read whole."""
    packed = _zip(tmp_path / "liar.sslmodel", _members(model))
    _declare_size(packed, "model.pt", 100)
    with zipfile.ZipFile(packed) as archive:
        assert archive.getinfo("model.pt").file_size == 100
    with Untouched(tmp_path):
        assert_user_error(lambda: load_model(packed), str(packed), "not a packed sslseg model")


def test_not_a_zip_and_symlinked_folder_member(tmp_path, model):
    junk = tmp_path / "junk.sslmodel"
    junk.write_bytes(b"\x00" * 1000)
    folder = tmp_path / "linked"
    shutil.copytree(model, folder)
    os.remove(folder / "model.pt")
    os.symlink(os.path.join(model, "model.pt"), folder / "model.pt")
    with Untouched(tmp_path):
        assert_user_error(lambda: load_model(junk), "not a packed sslseg model")
        assert_user_error(lambda: load_model(folder), "model.pt", "symbolic link")
        assert_user_error(lambda: load_model(tmp_path / "absent"), "not found")


# --- writing: nothing half-written ---------------------------------------------------------------------------

def test_pack_and_save_refuse_bad_targets_and_leave_nothing(tmp_path, data, model):
    (tmp_path / "scan.nii.gz").write_bytes(_image(data).read_bytes())
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("mine")
    loaded = load_model(model)
    with Untouched(tmp_path, model):
        assert_user_error(lambda: pack_model(model, tmp_path / "folder"), "folder")
        assert_user_error(lambda: pack_model(model, tmp_path / "scan.nii.gz"), "not a packed sslseg model")
        assert_user_error(lambda: pack_model(model, os.path.join(model, "inside.sslmodel")), "inside")
        assert_user_error(lambda: save_model(tmp_path / "folder", loaded.meta, loaded.network.state_dict()),
                          "not an sslseg model")
        assert_user_error(lambda: save_model(tmp_path / "new", {**loaded.meta, "patch_size": [0, 1, 1]},
                                             loaded.network.state_dict()), "patch_size")
        with pytest.raises(AttributeError):  # a failure while writing: the hidden folder is removed
            save_model(tmp_path / "new", loaded.meta, {"weight": object()})
    assert not os.path.lexists(tmp_path / "new")


def test_model_replaced_in_place_and_packed_round_trip(tmp_path, model):
    target = tmp_path / "model"
    shutil.copytree(model, target)
    loaded = load_model(target)
    save_model(target, loaded.meta, loaded.network.state_dict())  # a model folder at --out is replaced
    assert sorted(os.listdir(tmp_path)) == ["model"]
    packed = pack_model(target, tmp_path / "m.sslmodel")
    unpacked = unpack_model(packed, tmp_path / "unpacked")
    assert load_model(unpacked).meta == loaded.meta
    assert not partial_files(tmp_path)


# --- SIGTERM (Cancel in Slicer) ------------------------------------------------------------------------------

def test_sigterm_cancels_finetune_cleanly(tmp_path, data):
    out = tmp_path / "model"
    process = subprocess.Popen(
        [sys.executable, "-m", "sslseg", "finetune", "--data", str(data), "--out", str(out), "--preset", "test",
         "--device", "cpu", "--steps", "400", "--val-cases", "0", "--progress", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        events = []
        for line in process.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "progress":
                break
        assert events and events[-1]["event"] == "progress", events
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr[-2000:]
    assert "cancelled" in stderr and "Traceback" not in stderr
    assert json.loads(stdout.splitlines()[-1]) == {"event": "error", "message": "cancelled"}
    _nothing_written(tmp_path, out)
    assert os.listdir(tmp_path) == []
