"""Fine-tuning: the three-phase schedule, the truly frozen encoder, a falling loss, the model folder, bad inputs.

Real short runs on CPU with the tiny ResEncT-test network on a few ../shared/data hippocampus cases."""

import json
import os

import numpy as np
import pytest
import torch

from sslseg.errors import UserError
from sslseg.finetuning import finetune
from sslseg.imageio import Geometry, read_image, write_image
from sslseg.model_folder import load_model, pack_model
from sslseg.networks import build_from_spec, spec_for, split_parameters
from sslseg.schedule import Schedule

NAMES = {1: "Anterior", 2: "Posterior"}


def hippocampus_files(root, count, start=0):
    images = sorted(os.listdir(os.path.join(root, "imagesTr")))[start:start + count]
    return ([os.path.join(root, "imagesTr", n) for n in images], [os.path.join(root, "labelsTr", n) for n in images])


# --- schedule ------------------------------------------------------------------------------------------------

def test_schedule_follows_the_three_phases():
    schedule = Schedule.from_fractions(120, 12_500 / 150_000, 12_500 / 150_000, 1e-3)
    assert (schedule.decoder_steps, schedule.full_steps) == (10, 10)
    phases = [schedule.phase(s) for s in range(120)]
    assert phases[:10] == ["decoder_warmup"] * 10 and phases[10:20] == ["full_warmup"] * 10
    assert set(phases[20:]) == {"poly"}
    lrs = np.array([schedule.lr(s) for s in range(120)])
    # phase 1: linear ramp to the max lr, encoder frozen only there
    assert np.allclose(lrs[:10], 1e-3 * np.arange(1, 11) / 10)
    assert [schedule.encoder_frozen(s) for s in (0, 9, 10, 50)] == [True, True, False, False]
    # phase 2: a second linear ramp from a small lr to the max
    assert lrs[10] == pytest.approx(1e-4) and np.all(np.diff(lrs[10:20]) > 0) and lrs[19] == pytest.approx(1e-3)
    # phase 3: PolyLR with exponent 0.9 from the max lr towards 0
    t = np.arange(100) / 100
    assert np.allclose(lrs[20:], 1e-3 * (1 - t) ** 0.9)
    assert np.all(np.diff(lrs[20:]) < 0) and lrs[-1] < 1e-4


def test_scratch_schedule_is_plain_poly():
    schedule = Schedule(50, 0, 0, 1e-2)
    assert {schedule.phase(s) for s in range(50)} == {"train"}
    assert schedule.lr(0) == pytest.approx(1e-2) and not schedule.encoder_frozen(0)
    with pytest.raises(ValueError):
        Schedule(10, 5, 5, 1e-3)


# --- a backbone in the nnssl format, written from a freshly built network -------------------------------------

@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    """A checkpoint in the format of MIC-DKFZ/nnssl, of ResEncT-test with random weights, read by the real loader."""
    spec = spec_for("ResEncT-test")
    torch.manual_seed(1)
    network = build_from_spec(spec, 1, 5)
    checkpoint = {
        "network_weights": network.state_dict(),
        "nnssl_adaptation_plan": {
            "architecture_plans": {"arch_class_name": "ResEncT-test", "arch_kwargs": spec["config"]},
            "pretrain_plan": {"spacing": [1.0, 1.0, 1.0], "normalization": "zscore", "patch_size": [16, 24, 16]},
            "pretrain_num_input_channels": 1,
            "recommended_downstream_patchsize": [16, 24, 16],
            "key_to_encoder": "encoder.stages",
            "key_to_stem": "encoder.stem",
            "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
        },
        "trainer_name": "SparkMAETrainer",
        "init_args": {},
    }
    path = tmp_path_factory.mktemp("backbone") / "checkpoint_final.pth"
    torch.save(checkpoint, path)
    return path, {k: v.clone() for k, v in network.state_dict().items()}


def test_frozen_phase_keeps_every_encoder_tensor_bit_identical(tmp_path, hippocampus_dir, tiny_backbone):
    path, pretrained = tiny_backbone
    images, labels = hippocampus_files(hippocampus_dir, 3)
    seen = {}

    def watch(step, phase, loss, network, optimizer):
        encoder, decoder = split_parameters(network, spec_for("ResEncT-test"))
        optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if step == 1:
            seen["decoder_start"] = {n: p.detach().clone() for n, p in decoder}
        if phase == "decoder_warmup":
            # frozen = no gradient and not in the optimiser (stem included)
            assert all(not p.requires_grad and id(p) not in optimised for _, p in encoder)
            assert all(p.requires_grad and id(p) in optimised for _, p in decoder)
            seen["encoder_end"] = {n: p.detach().clone() for n, p in encoder}
            seen["decoder_end"] = {n: p.detach().clone() for n, p in decoder}
        elif phase == "full_warmup" and "full" not in seen:
            seen["full"] = all(p.requires_grad and id(p) in optimised for _, p in encoder)
            seen["encoder_moved"] = any(not torch.equal(p.detach(), seen["encoder_end"][n]) for n, p in encoder)

    finetune(str(path), images=images, labels=labels, label_names=NAMES, out=tmp_path / "model", preset="test",
             device="cpu", steps=12, val_cases=0, progress="none", step_callback=watch)
    encoder_end = seen["encoder_end"]
    assert any(n.startswith("encoder.stem.") for n in encoder_end)
    # every encoder tensor after the frozen phase equals the checkpoint's, bit for bit
    assert all(torch.equal(tensor, pretrained[name]) for name, tensor in encoder_end.items())
    # ... while the decoder has trained (steps 2 and 3 of the frozen phase changed it)
    assert any(not torch.equal(seen["decoder_end"][n], seen["decoder_start"][n]) for n in seen["decoder_end"])
    # and the encoder trains in the next phase
    assert seen["full"] and seen["encoder_moved"]
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["backbone"]["format"] == "nnssl" and meta["recipe"]["schedule"]["decoder_warmup_steps"] == 3


def test_loss_falls_and_model_folder_round_trips(tmp_path, hippocampus_dir):
    images, labels = hippocampus_files(hippocampus_dir, 6)
    losses = []
    out = finetune("none", images=images, labels=labels, label_names=NAMES, out=tmp_path / "model", preset="test",
                   device="cpu", steps=30, val_cases=2, progress="none",
                   step_callback=lambda loss, **_: losses.append(loss))
    assert len(losses) == 30
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.1
    assert sorted(os.listdir(out)) == ["model.json", "model.pt"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary sibling left

    meta = json.loads(open(os.path.join(out, "model.json")).read())
    assert meta["labels"][0]["name"] == "Anterior" and len(meta["labels"][1]["color"]) == 3
    assert meta["recipe"]["steps_run"] == 30 and meta["recipe"]["from_scratch"] is True
    assert len(meta["training"]["train_cases"]) == 4 and len(meta["training"]["val_cases"]) == 2
    assert set(meta["validation"]["dice"]) == {"Anterior", "Posterior"}
    assert meta["versions"]["torch"] and meta["preprocessing"]["normalization"] == "zscore"

    model = load_model(out)
    state = torch.load(os.path.join(out, "model.pt"), weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.network.state_dict().items())
    packed = pack_model(out, tmp_path / "hippo.sslmodel")
    again = load_model(packed)
    assert again.meta == model.meta
    assert all(torch.equal(a, b) for a, b in zip(again.network.state_dict().values(),
                                                   model.network.state_dict().values()))


def test_cancelled_run_leaves_nothing(tmp_path, hippocampus_dir):
    images, labels = hippocampus_files(hippocampus_dir, 3)

    def cancel(step, **_):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune("none", images=images, labels=labels, out=tmp_path / "model", preset="test", device="cpu",
                 steps=10, val_cases=0, progress="none", step_callback=cancel)
    assert os.listdir(tmp_path) == []


# --- bad input is refused before training --------------------------------------------------------------------

@pytest.fixture
def make_dataset(tmp_path):
    """A small dataset folder of real hippocampus crops, with one case spoilt by ``spoil(image, label, geometry)``."""

    def make(hippocampus_dir, spoil=None, cases=3, labels_json=None):
        root = tmp_path / "data"
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        images, label_files = hippocampus_files(hippocampus_dir, cases)
        for index, (image_path, label_path) in enumerate(zip(images, label_files)):
            image, geometry = read_image(image_path)
            label, _ = read_image(label_path)
            label_geometry = geometry
            if spoil and index == cases - 1:
                image, label, label_geometry = spoil(image, label, geometry)
            name = os.path.basename(image_path).replace(".nii.gz", ".nrrd")  # NRRD keeps NaN (ITK's NIfTI does not)
            write_image(image, geometry, root / "imagesTr" / name)
            write_image(label, label_geometry, root / "labelsTr" / name)
        meta = {"channel_names": {"0": "MRI"}, "labels": labels_json or {"background": 0, "Anterior": 1, "Posterior": 2},
                "file_ending": ".nrrd"}
        (root / "dataset.json").write_text(json.dumps(meta))
        return root

    return make


def _shifted(image, label, geometry):
    moved = Geometry(geometry.shape, geometry.spacing, tuple(o + 5 for o in geometry.origin), geometry.direction)
    return image, label, moved


def _unknown_label(image, label, geometry):
    label = label.copy()
    label[0, 0, 0] = 7
    return image, label, geometry


def _nan(image, label, geometry):
    image = image.astype(np.float32)
    image[2, 3, 4] = np.nan
    return image, label, geometry


@pytest.mark.parametrize("spoil, message", [
    (lambda i, l, g: (i, l[:-1], Geometry(l[:-1].shape, g.spacing, g.origin, g.direction)), "does not match"),
    (_shifted, "geometry"),
    (_unknown_label, r"value\(s\) \[7\]"),
    (lambda i, l, g: (i, np.zeros_like(l), g), "empty"),
    (_nan, "NaN"),
])
def test_bad_cases_are_refused_before_training(tmp_path, hippocampus_dir, make_dataset, spoil, message):
    root = make_dataset(hippocampus_dir, spoil)
    with pytest.raises(UserError, match=message):
        finetune("none", data=root, out=tmp_path / "model", preset="test", device="cpu", steps=2, progress="none")
    assert not (tmp_path / "model").exists()


def test_wrong_channel_count_unreadable_file_and_too_few_cases(tmp_path, hippocampus_dir, make_dataset):
    root = make_dataset(hippocampus_dir)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T1", "1": "T2"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="channel"):
        finetune("none", data=root, out=tmp_path / "m", preset="test", device="cpu", steps=2, progress="none")

    images, labels = hippocampus_files(hippocampus_dir, 3)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(open(images[0], "rb").read()[:200])
    with pytest.raises(UserError, match="broken.nii.gz"):
        finetune("none", images=[broken, *images[1:]], labels=labels, out=tmp_path / "m", preset="test",
                 device="cpu", steps=2, progress="none")
    with pytest.raises(UserError, match="too few cases for validation"):
        finetune("none", images=images, labels=labels, out=tmp_path / "m", preset="test", device="cpu", steps=2,
                 val_cases=3, progress="none")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an sslseg model"):
        finetune("none", images=images, labels=labels, out=tmp_path / "other", preset="test", device="cpu",
                 steps=2, progress="none")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "m").exists()


def test_gradient_checkpointing_gives_the_same_gradients_and_keys():
    """The memory-saving path used on small GPUs: same state_dict keys, same gradients (run here on CPU)."""
    from sslseg.finetuning.memory import enable_gradient_checkpointing

    torch.manual_seed(0)
    plain = build_from_spec(spec_for("ResEncT-test"), 1, 3)
    checkpointed = build_from_spec(spec_for("ResEncT-test"), 1, 3)
    checkpointed.load_state_dict(plain.state_dict())
    assert enable_gradient_checkpointing(checkpointed) > 0
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 1, 16, 24, 16)
    plain(x).square().mean().backward()
    checkpointed(x).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name


# --- continuing from a fine-tuned model (init_model) ---------------------------------------------------------

@pytest.fixture(scope="module")
def initial_model(tmp_path_factory, hippocampus_dir):
    """A fine-tuned model (4 steps from scratch) with its own patch, the starting point of the runs below."""
    images, labels = hippocampus_files(hippocampus_dir, 3)
    out = tmp_path_factory.mktemp("initial") / "hippo"
    finetune("none", images=images, labels=labels, label_names=NAMES, out=out, preset="test", device="cpu",
             steps=4, val_cases=0, patch_size=[16, 16, 16], progress="none")
    return out


def merged_labels(tmp_path, label_files):
    """The label files with both hippocampus parts as one label (value 1): one label where the model has two."""
    merged = []
    for path in label_files:
        label, geometry = read_image(path)
        target = tmp_path / os.path.basename(path).replace(".nii.gz", ".nrrd")
        write_image((label > 0).astype(np.uint8), geometry, target)
        merged.append(target)
    return merged


def encoder_equals(network_state, reference_state, spec):
    encoder_names = [n for n, _ in split_parameters(build_from_spec(spec, 1, 3), spec)[0]]
    return all(torch.equal(network_state[n], reference_state[n]) for n in encoder_names)


def test_init_model_continues_with_its_weights_plan_and_the_warmups(tmp_path, hippocampus_dir, initial_model):
    initial = load_model(initial_model)
    initial_state = initial.network.state_dict()
    spec = initial.meta["network"]
    images, labels = hippocampus_files(hippocampus_dir, 3, start=3)
    seen = {"phases": []}

    def watch(step, phase, loss, network, optimizer):
        encoder, _ = split_parameters(network, spec)
        optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
        state = {n: p.detach() for n, p in network.state_dict().items()}
        seen["phases"].append(phase)
        if step == 1:  # after the first optimiser step the encoder still holds the initial model's weights
            seen["first_step_encoder_equal"] = encoder_equals(state, initial_state, spec)
            seen["lr"] = optimizer.param_groups[0]["lr"]
        if phase == "decoder_warmup":
            assert all(not p.requires_grad and id(p) not in optimised for _, p in encoder)
            seen["warmup_end_encoder_equal"] = encoder_equals(state, initial_state, spec)
        elif phase == "full_warmup" and "full" not in seen:
            seen["full"] = all(p.requires_grad and id(p) in optimised for _, p in encoder)

    out = finetune(images=images, labels=labels, label_names=NAMES, out=tmp_path / "continued", preset="test",
                   device="cpu", steps=8, val_cases=0, progress="none", step_callback=watch, init_model=initial_model)
    assert seen["first_step_encoder_equal"] and seen["warmup_end_encoder_equal"] and seen["full"]
    # the recipe's warm-ups (decoder first, lr ramping from max_lr / decoder steps), not the scratch recipe
    assert seen["phases"][:2] == ["decoder_warmup"] * 2 and "full_warmup" in seen["phases"]
    assert seen["lr"] == pytest.approx(1e-2 / 2)
    meta = json.loads((tmp_path / "continued" / "model.json").read_text())
    assert meta["recipe"]["from_scratch"] is False and meta["recipe"]["schedule"]["decoder_warmup_steps"] == 2
    # the initial model's plan: its patch (not the preset's choice for these data) and its preprocessing
    assert meta["patch_size"] == [16, 16, 16] and meta["preprocessing"] == initial.meta["preprocessing"]
    assert meta["initial_model"]["path"] == str(initial_model) and meta["initial_model"]["head"] == "kept"
    assert meta["network"] == spec and load_model(out).labels == initial.labels


def test_init_model_replaces_the_head_when_the_label_count_differs(tmp_path, hippocampus_dir, initial_model):
    from sslseg.finetuning.start import from_model
    from sslseg.networks import layout_of
    from sslseg.progress import Reporter

    initial = load_model(initial_model)
    layout = layout_of(initial.meta["network"])
    start = from_model(initial, num_classes=2, in_channels=1, reporter=Reporter("none"))
    state, initial_state = start.network.state_dict(), initial.network.state_dict()
    head = [n for n in state if layout.part_of(n) == "head"]
    assert head and all(state[n].shape[0] == 2 for n in head if n.endswith("weight"))
    # every other tensor, decoder included, is the model's
    assert all(torch.equal(state[n], initial_state[n]) for n in state if n not in head)

    images, labels = hippocampus_files(hippocampus_dir, 3, start=3)
    out = finetune(images=images, labels=merged_labels(tmp_path, labels), label_names={1: "Hippocampus"},
                   out=tmp_path / "merged", preset="test", device="cpu", steps=3, val_cases=0, progress="none",
                   init_model=initial_model)
    model = load_model(out)
    assert [label["name"] for label in model.labels] == ["Hippocampus"]
    assert model.meta["initial_model"]["head"] == "replaced"


def test_init_model_is_refused_with_a_backbone_or_when_missing(tmp_path, hippocampus_dir, initial_model,
                                                              tiny_backbone):
    images, labels = hippocampus_files(hippocampus_dir, 3)
    with pytest.raises(UserError, match="either --backbone or --init-model") as error:
        finetune(str(tiny_backbone[0]), images=images, labels=labels, out=tmp_path / "m", preset="test",
                 device="cpu", steps=2, progress="none", init_model=initial_model)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="--init-model"):
        finetune(images=images, labels=labels, out=tmp_path / "m", preset="test", device="cpu", steps=2,
                 progress="none", init_model=tmp_path / "no-such-model")
    assert not (tmp_path / "m").exists()


# --- planning from the data in a real run --------------------------------------------------------------------

@pytest.fixture(scope="module")
def thick_slice_cases(tmp_path_factory, hippocampus_dir):
    """Five hippocampus cases resampled to 5 mm along z (about 7 slices of 1 x 1 mm): thick-slice data."""
    from sslseg.imageio import resample_to_grid
    from sslseg.preprocessing import resampled_geometry

    root = tmp_path_factory.mktemp("thick")
    images, labels = hippocampus_files(hippocampus_dir, 5)
    written = ([], [])
    for image_path, label_path in zip(images, labels):
        image, geometry = read_image(image_path)
        label, _ = read_image(label_path)
        thick = resampled_geometry(geometry, [1.0, 1.0, 5.0])
        name = os.path.basename(image_path)
        for array, is_label, folder in ((image, False, written[0]), (label, True, written[1])):
            resampled = resample_to_grid(array.astype(np.float32), geometry, thick, is_label=is_label)
            path = root / ("label_" if is_label else "image_") / name
            path.parent.mkdir(exist_ok=True)
            write_image(resampled.astype(np.uint8) if is_label else resampled, thick, path)
            folder.append(path)
    return written


def test_thick_slice_data_get_an_in_plane_network_that_trains_and_predicts(tmp_path, thick_slice_cases):
    from sslseg.inference import predict

    images, labels = thick_slice_cases
    losses = []
    out = finetune("none", images=images, labels=labels, label_names=NAMES, out=tmp_path / "model", preset="test",
                   device="cpu", steps=16, val_cases=1, progress="none",
                   step_callback=lambda loss, **_: losses.append(loss))
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    plan, config = meta["plan"], meta["network"]["config"]
    assert plan["anisotropy_axis"] == "z" and plan["spacing"][2] == pytest.approx(5.0)
    assert config["kernel_sizes"][0] == [1, 3, 3] and config["strides"][1] == [1, 2, 2]
    assert meta["patch_size"] == plan["patch_size"] and plan["patch_size"][0] >= 6  # (about) every slice
    assert plan["reasons"] and meta["recipe"]["augmentation"]["rotation"].startswith("in-plane")
    assert np.isfinite(losses).all() and len(losses) == 16
    written = predict(out, [str(images[0])], tmp_path / "predicted")
    predicted, geometry = read_image(written[0])
    source, source_geometry = read_image(images[0])
    assert predicted.shape == source.shape and geometry.same_grid(source_geometry)


def test_plan_and_terminology_reach_model_json(tmp_path, hippocampus_dir):
    from sslseg.model_folder import TERMINOLOGY_EXAMPLE

    images, labels = hippocampus_files(hippocampus_dir, 3)
    label_info = [{"value": 1, "name": "Anterior", "terminology": TERMINOLOGY_EXAMPLE},
                  {"value": 2, "name": "Posterior"}]
    finetune("none", images=images, labels=labels, label_info=label_info, out=tmp_path / "model", preset="test",
             device="cpu", steps=2, val_cases=0, progress="none")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["labels"][0]["terminology"] == TERMINOLOGY_EXAMPLE and "terminology" not in meta["labels"][1]
    plan = meta["plan"]
    assert plan["spacing"] == [1.0, 1.0, 1.0] and plan["anisotropy_axis"] is None
    assert plan["patch_size"] == meta["patch_size"] == [16, 24, 16] and plan["batch_size"] == 2
    assert plan["kernel_sizes"] == meta["network"]["config"]["kernel_sizes"]
    assert any(reason.startswith("normalisation zscore") for reason in plan["reasons"])
    assert meta["recipe"]["augmentation"]["rotation"] == "3D"


def test_small_folders_train_on_every_case_by_default():
    from sslseg.finetuning.data import MIN_CASES_FOR_VALIDATION, default_val_cases, split_cases

    assert [default_val_cases(n) for n in (1, 5, 10, MIN_CASES_FOR_VALIDATION - 1)] == [0, 0, 0, 0]
    assert [default_val_cases(n) for n in (MIN_CASES_FOR_VALIDATION, 49, 200)] == [4, 9, 10]
    ids = [f"c{i:02d}" for i in range(MIN_CASES_FOR_VALIDATION)]
    train, val = split_cases(ids, None, seed=0)
    assert len(val) == 4 and sorted(train + val) == ids and not set(train) & set(val)
    assert split_cases(ids[:10], None, seed=0) == (ids[:10], [])
    assert split_cases(ids[:10], 3, seed=0)[1] != []  # an explicit hold-out is still honoured


def test_a_run_without_a_hold_out_says_so_and_keeps_the_last_weights(tmp_path, hippocampus_dir):
    import io

    from sslseg.progress import Reporter

    images, labels = hippocampus_files(hippocampus_dir, 5)
    stream = io.StringIO()
    out = finetune("none", images=images, labels=labels, label_names=NAMES, out=tmp_path / "model", preset="test",
                   device="cpu", steps=2, progress=Reporter("json", stream=stream))
    logs = [json.loads(line).get("message", "") for line in stream.getvalue().splitlines()]
    assert any(m.startswith("no validation cases: below 20 labelled cases every case trains") for m in logs)
    meta = json.loads(open(os.path.join(out, "model.json")).read())
    assert len(meta["training"]["train_cases"]) == 5 and meta["training"]["val_cases"] == []
    assert meta["validation"]["note"] == "the last weights are kept"
