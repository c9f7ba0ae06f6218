"""Bad inputs to `sslseg models` and the backbones API: each is refused with one line that names the problem, the
inputs stay byte-identical, nothing is registered (the backbone list is unchanged) and no `.partial` file is left
under $SSLSEG_HOME. Mirror downloads come from a local HTTP server on 127.0.0.1 only (SSLSEG_BACKBONE_MIRROR)."""

import json
import os

import pytest
import torch

from bad_inputs import Untouched, assert_refused, assert_user_error, partial_files, run_cli
from sslseg.backbones import download_backbone, import_checkpoint, inspect, list_backbones, load_backbone
from test_backbones_download import ERROR_PAGE, _Server
from test_backbones_support import adaptation_plan, misfm_state, resenc_state, write_nnssl


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An engine home that already holds one imported backbone, "existing"."""
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSLSEG_BACKBONE_MIRROR", raising=False)
    path = write_nnssl(tmp_path / "registered" / "run", resenc_state(seed=3), adaptation_plan(), plan_file=True)
    assert import_checkpoint(path, name="existing") == "existing"
    return tmp_path / "home"


@pytest.fixture
def inputs(tmp_path):
    """The user's files: good and bad checkpoints, plans and folders (paths by key)."""
    root = tmp_path / "inputs"
    plan = adaptation_plan()
    paths = {
        "good": write_nnssl(root / "good", resenc_state(seed=0), plan, plan_file=True),
        "other": write_nnssl(root / "other", resenc_state(seed=1), plan),
        "encoderless": write_nnssl(root / "encoderless",
                                   {k: v for k, v in resenc_state().items() if "stages" not in k}, plan),
        "badplan": write_nnssl(root / "badplan", resenc_state(seed=2)),
        "evil": write_nnssl(root / "evil", resenc_state(), plan, extra={"init_args": _Payload(tmp_path / "pwned")}),
    }
    (root / "badplan" / "adaptation_plan.json").write_text("{not json")
    paths["badplan"] = os.path.dirname(paths["badplan"])
    (root / "notes.txt").write_text("weights are on the shared drive\n")
    (root / "page.html").write_bytes(ERROR_PAGE)
    data = open(paths["good"], "rb").read()
    (root / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save({"model_state_dict": misfm_state(), "iteration": 1}, root / "fmunet.pt")
    (root / "empty").mkdir()
    paths.update({key: str(root / name) for key, name in (("notes", "notes.txt"), ("page", "page.html"),
                                                           ("truncated", "truncated.pth"), ("misfm", "fmunet.pt"),
                                                           ("empty", "empty"), ("missing", "missing.pth"))})
    paths["root"] = str(root)
    return paths


def _refused_without_trace(home, inputs, refuse):
    """Run ``refuse()`` (which asserts the refusal) and check that nothing changed or was registered."""
    listed = list_backbones()
    with Untouched(inputs["root"], home):
        refuse()
    assert list_backbones() == listed
    assert not partial_files(home)


# (id, CLI arguments with {key} placeholders for the inputs, words of the one error line)
CLI_CASES = [
    ("download-unknown", ["models", "download", "no-such-backbone"], ["unknown backbone", "no-such-backbone"]),
    ("download-manual-only", ["models", "download", "MISFM-FMUNet-AbdomenCT1K"],
     ["cannot be downloaded automatically", "sslseg models import"]),
    ("download-imported-name", ["models", "download", "existing"], ["unknown backbone", "existing"]),
    ("import-missing-file", ["models", "import", "{missing}"], ["not found", "missing.pth"]),
    ("import-folder-without-checkpoint", ["models", "import", "{empty}"], ["no checkpoint_final.pth", "empty"]),
    ("import-text-file", ["models", "import", "{notes}"], ["not a PyTorch checkpoint", "notes.txt"]),
    ("import-name-escapes", ["models", "import", "{good}", "--name", "../escape"], ["invalid backbone name"]),
    ("import-pickled-code", ["models", "import", "{evil}", "--name", "evil"],
     ["not a file this program can trust", "system"]),
    ("import-over-existing", ["models", "import", "{other}", "--name", "existing"], ["already exists", "existing"]),
    ("import-not-the-published-file", ["models", "import", "{other}", "--name", "ResEncL-OpenMind-MAE"],
     ["not the published ResEncL-OpenMind-MAE"]),
    ("import-unreadable-plan", ["models", "import", "{badplan}"], ["adaptation_plan.json", "not valid JSON"]),
    ("inspect-unknown", ["models", "inspect", "no-such-backbone"], ["unknown backbone"]),
    ("inspect-zero-classes", ["models", "inspect", "existing", "--num-classes", "0"], ["--num-classes", "at least 1"]),
    ("inspect-huge-channels", ["models", "inspect", "existing", "--in-channels", "100000"],
     ["--in-channels", "at most"]),
    ("unknown-action-option", ["models", "import", "{good}", "--nmae", "x"], ["unrecognized arguments"]),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_cli_bad_input_is_refused(home, inputs, tmp_path, case):
    _, arguments, words = case

    def refuse():
        result = run_cli(*[argument.format(**inputs) for argument in arguments])
        line = assert_refused(result, *words)
        assert ".partial" not in line

    _refused_without_trace(home, inputs, refuse)
    assert not (tmp_path / "pwned").exists()


# (id, call(inputs), words of the UserError)
API_CASES = [
    ("download-unsupported-manual", lambda p: download_backbone("MISFM-PCTNet-CT10k"),
     ["cannot be downloaded automatically"]),
    ("import-error-page-as-catalog-file", lambda p: import_checkpoint(p["page"], name="ResEncL-OpenMind-S3D"),
     ["not a PyTorch checkpoint", "page.html"]),
    ("import-bad-name", lambda p: import_checkpoint(p["good"], name="bad name!"), ["invalid backbone name"]),
    ("import-wrong-format-for-catalog-name", lambda p: import_checkpoint(p["good"], name="MISFM-FMUNet-AbdomenCT1K"),
     ["nnssl checkpoint", "misfm"]),
    ("import-misfm-as-nnssl-name", lambda p: import_checkpoint(p["misfm"], name="ResEncL-OpenMind-VF"),
     ["misfm checkpoint", "nnssl"]),
    ("import-unsupported-catalog-name", lambda p: import_checkpoint(p["misfm"], name="MISFM-PCTNet-CT10k"),
     ["not supported yet"]),
    ("import-truncated", lambda p: import_checkpoint(p["truncated"]), ["truncated or corrupt", "truncated.pth"]),
    ("import-encoder-does-not-load", lambda p: import_checkpoint(p["encoderless"], name="x"),
     ["of the encoder loaded", "encoderless"]),
    ("import-broken-over-existing", lambda p: import_checkpoint(p["encoderless"], name="existing", overwrite=True),
     ["of the encoder loaded"]),
    ("import-pickled-code", lambda p: import_checkpoint(p["evil"]), ["not a file this program can trust"]),
    ("load-zero-classes", lambda p: load_backbone("existing", num_classes=0), ["num_classes", "at least 1"]),
    ("inspect-missing-file", lambda p: inspect(p["missing"]), ["not found"]),
]


@pytest.mark.parametrize("case", API_CASES, ids=[case[0] for case in API_CASES])
def test_api_bad_input_is_refused(home, inputs, tmp_path, case):
    _, call, words = case

    def refuse():
        message = assert_user_error(lambda: call(inputs), *words)
        assert ".partial" not in message

    _refused_without_trace(home, inputs, refuse)
    assert not (tmp_path / "pwned").exists()


def _mirror(server, monkeypatch, name, tmp_path, checkpoint=None, plan=None):
    """Publish ``name`` on the local mirror: a real plan and checkpoint unless replaced."""
    real = write_nnssl(tmp_path / "published", resenc_state(), adaptation_plan(), plan_in_dict=False, plan_file=True)
    real_plan = open(os.path.join(os.path.dirname(real), "adaptation_plan.json"), "rb").read()
    for file_name, content, default in (("checkpoint_final.pth", checkpoint, open(real, "rb").read()),
                                        ("adaptation_plan.json", plan, real_plan)):
        if content != b"":             # b"": not on the mirror at all (404)
            server.files[f"/mirror/{name}/{file_name}"] = default if content is None else content
    monkeypatch.setenv("SSLSEG_BACKBONE_MIRROR", server.url + "/mirror")


def _evil_bytes(tmp_path):
    path = write_nnssl(tmp_path / "evil-served", resenc_state(), adaptation_plan(),
                       extra={"init_args": _Payload(tmp_path / "pwned")})
    return open(path, "rb").read()


def _misfm_bytes(tmp_path):
    torch.save({"model_state_dict": misfm_state()}, tmp_path / "served.pt")
    return (tmp_path / "served.pt").read_bytes()


# (id, backbone, checkpoint served (None: real, b"": absent), plan served, through the CLI?, words)
MIRROR_CASES = [
    ("error-page-for-both", "ResEncL-OpenMind-S3D", ERROR_PAGE, ERROR_PAGE, True, ["not valid JSON"]),
    ("error-page-for-checkpoint", "ResEncL-OpenMind-S3D", ERROR_PAGE, None, True,
     ["not a checkpoint", "error page", "nothing was registered"]),
    ("json-that-is-not-a-plan", "ResEncL-OpenMind-VF", None, b'{"error": "not found"}', False,
     ["not an adaptation plan", "architecture_plans"]),
    ("pickled-code-served", "ResEncL-OpenMind-VF", "evil", None, True, ["not a file this program can trust"]),
    ("misfm-file-for-nnssl-entry", "ResEncL-OpenMind-S3D", "misfm", None, False, ["misfm checkpoint", "nnssl"]),
    ("checkpoint-absent-from-mirror", "ResEncL-OpenMind-VF", b"", None, False,
     ["could not download", "sslseg models import"]),
]


@pytest.mark.parametrize("case", MIRROR_CASES, ids=[case[0] for case in MIRROR_CASES])
def test_mirror_download_of_a_bad_file_is_refused(home, inputs, server, monkeypatch, tmp_path, case):
    _, name, checkpoint, plan, cli, words = case
    if isinstance(checkpoint, str):
        checkpoint = {"evil": _evil_bytes, "misfm": _misfm_bytes}[checkpoint](tmp_path)
    _mirror(server, monkeypatch, name, tmp_path, checkpoint, plan)

    def refuse():
        if cli:
            result = run_cli("models", "download", name, "--progress", "json")
            assert_refused(result, *words)
            events = [json.loads(line) for line in result.stdout.splitlines()]
            assert events[-1]["event"] == "error" and words[0] in events[-1]["message"]
        else:
            assert_user_error(lambda: download_backbone(name), *words)

    _refused_without_trace(home, inputs, refuse)
    assert not os.path.exists(os.path.join(str(home), "backbones", name))
    assert not (tmp_path / "pwned").exists()



def test_a_mirror_setting_that_is_not_a_url_is_refused(home, inputs):
    def refuse():
        result = run_cli("models", "download", "ResEncL-OpenMind-S3D",
                         env={"SSLSEG_BACKBONE_MIRROR": "models.example.org/sslseg"})
        assert_refused(result, "SSLSEG_BACKBONE_MIRROR", "models.example.org/sslseg")

    _refused_without_trace(home, inputs, refuse)
