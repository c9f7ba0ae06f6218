"""Faithful loading: nnssl (ResEnc) and MIS-FM (FMUNet) checkpoints built with the published key layouts; the
loaded network's tensors are compared with the checkpoint's."""

import json

import pytest
import torch

from sslseg.backbones import load_backbone
from sslseg.errors import UserError
from test_backbones_support import adaptation_plan, misfm_state, resenc_state, sparkify, write_nnssl


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSLSEG_BACKBONE_MIRROR", raising=False)


def _encoder_keys(state):
    return [k for k in state if k.startswith("encoder.")]


def test_nnssl_small_preset_loads_every_encoder_tensor(tmp_path):
    state = resenc_state("ResEncS-cpu")
    path = write_nnssl(tmp_path / "ck", state, adaptation_plan("ResEncS-cpu"))
    network, report = load_backbone(path, num_classes=4)
    loaded = network.state_dict()
    for key in _encoder_keys(state):
        assert torch.equal(loaded[key], state[key]), key
    # aliases inside the network agree too (decoder.encoder.* is the same module)
    assert torch.equal(loaded["decoder.encoder.stem.convs.0.conv.weight"], state["encoder.stem.convs.0.conv.weight"])
    assert report.stem.loaded == report.stem.total > 0
    assert report.encoder.loaded == report.encoder.total > 0
    assert report.encoder.missing == report.encoder.mismatched == report.encoder.unexpected == 0
    assert report.decoder.loaded == 0 and report.decoder.skipped == report.decoder.total
    # new head with the target number of classes
    assert loaded["decoder.seg_layers.0.weight"].shape[0] == 4
    assert report.spec == {"family": "ResEnc", "name": "ResEncS-cpu", "config": report.spec["config"]}
    assert report.spec["config"]["features_per_stage"] == [24, 48, 96, 192]
    assert report.plan["spacing"] == [1.0, 1.0, 1.0] and report.plan["patch_size"] == [64, 64, 64]
    assert report.plan["normalization"] == "zscore" and report.plan["method"] == "MAE"
    assert report.quirks["sparse_converted"]["used"] == "identical"
    as_dict = report.to_dict()
    assert json.loads(json.dumps(as_dict))["parts"]["encoder"]["loaded"] == report.encoder.loaded
    assert "encoder (with stem) loaded: 100.0 %" in report.summary()
    out = network(torch.zeros(1, 1, 16, 16, 16))
    assert out.shape == (1, 4, 16, 16, 16)


def test_plan_from_json_beside_file_and_decoder_on_request(tmp_path):
    state = resenc_state("ResEncT-test", num_classes=1)
    path = write_nnssl(tmp_path / "ck", state, adaptation_plan("ResEncT-test", spacing_zyx=(3.0, 2.0, 1.0)),
                       plan_in_dict=False, plan_file=True)
    network, report = load_backbone(path, num_classes=1, load_decoder=True)
    loaded = network.state_dict()
    for key in state:
        if key.startswith(("decoder.stages.", "decoder.transpconvs.")):
            assert torch.equal(loaded[key], state[key]), key
    assert report.decoder.loaded == report.decoder.total
    assert report.head.loaded == 0            # always a new head
    assert not torch.equal(loaded["decoder.seg_layers.0.weight"], state["decoder.seg_layers.0.weight"])
    assert report.plan["spacing"] == [1.0, 2.0, 3.0]   # nnssl array order (z, y, x) -> x, y, z
    assert any("adaptation_plan.json" in note for note in report.notes)


def test_s3d_checkpoint_takes_all_modules_tensors(tmp_path):
    state, trained = sparkify(resenc_state("ResEncT-test"))
    path = write_nnssl(tmp_path / "s3d", state, adaptation_plan("ResEncT-test"), trainer="EffSparkMAETrainer")
    network, report = load_backbone(path, num_classes=2)
    loaded = network.state_dict()
    checked = 0
    for key, value in trained.items():
        if key.startswith("encoder."):
            assert torch.equal(loaded[key], value), key          # conv.* name now holds the all_modules tensor
            assert not torch.equal(loaded[key], state[key])       # ... not the stale conv.* copy
            checked += 1
    assert checked > 10
    assert report.quirks["sparse_converted"]["used"] == "all_modules"
    assert report.quirks["sparse_converted"]["differing_tensors"] == checked
    assert report.plan["method"] == "S3D"
    assert report.encoder.loaded == report.encoder.total
    assert "all_modules" in report.summary()


def test_multichannel_stem_replicated_and_divided(tmp_path):
    state = resenc_state("ResEncT-test")
    path = write_nnssl(tmp_path / "ck", state, adaptation_plan("ResEncT-test"))
    network, report = load_backbone(path, num_classes=2, in_channels=3)
    weight = network.state_dict()["encoder.stem.convs.0.conv.weight"]
    source = state["encoder.stem.convs.0.conv.weight"]
    assert weight.shape[1] == 3
    for channel in range(3):
        assert torch.allclose(weight[:, channel:channel + 1], source / 3)
    assert report.stem.adapted == 1 and report.stem.loaded == report.stem.total
    # a channel-replicated image gives the single-channel response of the pretrained stem
    image = torch.randn(1, 1, 8, 8, 8)
    conv = torch.nn.functional.conv3d
    assert torch.allclose(conv(image.repeat(1, 3, 1, 1, 1), weight, padding=1), conv(image, source, padding=1),
                          atol=1e-5)


def test_prefixed_and_bare_state_dicts(tmp_path):
    state = resenc_state("ResEncT-test")
    prefixed = {f"module._orig_mod.{k}": v for k, v in state.items()}
    path = write_nnssl(tmp_path / "ddp", prefixed, adaptation_plan("ResEncT-test"))
    network, report = load_backbone(path, num_classes=2)
    assert torch.equal(network.state_dict()["encoder.stages.2.blocks.0.conv2.conv.weight"],
                       state["encoder.stages.2.blocks.0.conv2.conv.weight"])
    bare = tmp_path / "bare"
    bare.mkdir()
    torch.save(state, bare / "weights.pth")
    (bare / "adaptation_plan.json").write_text(json.dumps(adaptation_plan("ResEncT-test")))
    _, report = load_backbone(str(bare / "weights.pth"), num_classes=2)
    assert report.encoder.loaded == report.encoder.total


def test_wrong_architecture_fails_loudly(tmp_path):
    # weights of the tiny preset, plan claiming the small one: shapes disagree everywhere
    path = write_nnssl(tmp_path / "wrong", resenc_state("ResEncT-test"), adaptation_plan("ResEncS-cpu"))
    with pytest.raises(UserError, match="of the encoder loaded"):
        load_backbone(path, num_classes=2)
    # an encoder that is mostly absent
    partial = {k: v for k, v in resenc_state("ResEncT-test").items() if "stages.2" not in k}
    path = write_nnssl(tmp_path / "partial", partial, adaptation_plan("ResEncT-test"))
    with pytest.raises(UserError, match="refusing"):
        load_backbone(path, num_classes=2)
    # no plan at all
    path = write_nnssl(tmp_path / "noplan", resenc_state("ResEncT-test"), None)
    with pytest.raises(UserError, match="adaptation plan"):
        load_backbone(path, num_classes=2)
    # an architecture sslseg does not build
    plan = adaptation_plan("ResEncT-test", kwargs=False)
    plan["architecture_plans"]["arch_class_name"] = "PrimusM"
    path = write_nnssl(tmp_path / "primus", resenc_state("ResEncT-test"), plan)
    with pytest.raises(UserError, match="not supported"):
        load_backbone(path, num_classes=2)


@pytest.fixture(scope="module")
def resencl_checkpoint(tmp_path_factory):
    """A full ResEnc-L checkpoint as published (plan names "ResEncL", arch_kwargs null), fp16 to save time/disk."""
    folder = tmp_path_factory.mktemp("resencl")
    state = resenc_state("ResEncL", dtype=torch.float16)
    plan = adaptation_plan("ResEncL", kwargs=False, patch=(160, 160, 160))
    path = write_nnssl(folder, state, plan, plan_in_dict=False, plan_file=True)
    return path, state


def test_full_resencl_layout_loads_completely(resencl_checkpoint):
    path, state = resencl_checkpoint
    network, report = load_backbone(path, num_classes=3)
    loaded = network.state_dict()
    for key in _encoder_keys(state):
        assert torch.equal(loaded[key], state[key].float()), key
    assert report.spec["name"] == "ResEncL"
    assert report.spec["config"]["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert report.encoder_fraction() == 1.0
    assert report.encoder.unexpected == report.stem.unexpected == 0
    assert 100e6 < report.parameters < 105e6
    assert report.plan["patch_size"] == [160, 160, 160]


def test_misfm_fmunet_loads_published_layout(tmp_path):
    state = misfm_state()
    path = tmp_path / "fmunet_abk1k_volf.pt"
    torch.save({"iteration": 100000, "valid_pred": 0.9, "model_state_dict": state,
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    network, report = load_backbone(str(path), num_classes=3)
    loaded = network.state_dict()
    ours = set(loaded)
    published = set(state)
    # every tensor of sslseg's FMUNet has its published name (head level 0 only, deep supervision off)
    assert ours <= published
    assert published - ours == {k for k in published if k.startswith(("out_layers.1.", "out_layers.2.",
                                                                        "out_layers.3."))}
    for key in ours:
        if key.startswith("out_layers."):
            continue
        assert torch.equal(loaded[key], state[key]), key
    assert loaded["out_layers.0.2.weight"].shape[0] == 3
    assert report.format == "misfm" and report.spec["family"] == "FMUNet"
    assert report.spec["config"]["feature_chns"] == [4, 8, 16, 32, 64]
    assert report.encoder.loaded == report.encoder.total and report.decoder.loaded == report.decoder.total
    assert report.head.loaded == 0 and report.head.skipped == 4 + 12   # out_layers.0 (4 tensors) + out_layers.1-3 (12)
    assert network(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_fmunet_family_builds_through_networks(tmp_path):
    from sslseg.networks import build_from_spec, split_parameters

    spec = {"family": "FMUNet", "name": "FMUNet", "config": {"feature_chns": [4, 8, 16], "dropout": 0.0,
                                                             "depth": 1}}
    network = build_from_spec(spec, in_channels=2, num_classes=3)
    encoder, decoder = split_parameters(network, spec)
    assert {n.split(".")[0] for n, _ in encoder} == {"project", "encoder"}
    assert {n.split(".")[0] for n, _ in decoder} == {"decoder", "out_layers"}
    assert network(torch.zeros(1, 2, 8, 8, 8)).shape == (1, 3, 8, 8, 8)


def test_pctnet_is_refused_clearly(tmp_path):
    path = tmp_path / "pctnet_ct10k_volf.pt"
    # PCT-Net's published layout (MIS-FM net/pct_net.py): embeddings.*, pyramid_ct.* (Swin blocks), pred_heads.*
    torch.save({"model_state_dict": {"embeddings.0.proj.weight": torch.zeros(24, 1, 3, 3, 3),
                                     "pyramid_ct.convtrans_e2.conv.conv_conv.0.weight": torch.zeros(128),
                                     "pred_heads.0.out_conv0.conv.2.weight": torch.zeros(5, 24, 1, 1, 1)}}, path)
    with pytest.raises(UserError, match="PCT-Net .*not supported yet"):
        load_backbone(str(path), num_classes=2)
    with pytest.raises(UserError, match="not supported yet"):
        load_backbone("MISFM-PCTNet-CT10k", num_classes=2)
