"""Backbones: weights from a file or the torch cache (never downloaded), cross-modality init, heads, BN."""
from __future__ import annotations

import pytest
import torch

from trainer.config import load_config
from trainer.errors import WeightsError
from trainer.models import (batchnorms, build_model, cross_modality_weight, param_groups, replace_first_conv,
                            set_train_mode)


def test_cross_modality_arithmetic():
    w = torch.tensor([[1.0, 2.0, 6.0], [-3.0, 0.0, 0.0]]).view(2, 3, 1, 1)
    out = cross_modality_weight(w, 4)
    assert out.shape == (2, 4, 1, 1)
    assert out[0].flatten().tolist() == [3.0, 3.0, 3.0, 3.0]
    assert out[1].flatten().tolist() == [-1.0, -1.0, -1.0, -1.0]
    w3 = torch.randn(5, 3, 3, 7, 7)  # a 3D stem: (O, 3, t, kh, kw)
    out3 = cross_modality_weight(w3, 2)
    assert out3.shape == (5, 2, 3, 7, 7) and torch.allclose(out3[:, 1], w3.mean(dim=1))


@pytest.fixture(scope="module")
def fake_resnet18(tmp_path_factory):
    """A randomly initialised torchvision resnet18 state dict saved like torchvision's weight file."""
    from torchvision.models import resnet18

    torch.manual_seed(123)
    state = resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(state, path)
    return path, state


def test_flow_net_from_a_weights_file_uses_cross_modality_init(fake_resnet18):
    path, state = fake_resnet18
    cfg = load_config("temporal", overrides={"arch": "resnet18", "pretrained": str(path), "flow_length": 3})
    model, init = build_model(cfg, num_classes=7)
    note = init["note"]
    conv1 = model.conv1.weight.detach()
    assert conv1.shape == (64, 6, 7, 7)
    mean = state["conv1.weight"].mean(dim=1)
    for c in range(6):  # every one of the 2L channels holds the RGB mean, not rescaled
        assert torch.equal(conv1[:, c], mean)
    assert torch.equal(model.layer3[1].conv2.weight.detach(), state["layer3.1.conv2.weight"])
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])
    assert "cross-modality" in note and str(path) in note
    head = model.fc[1]
    assert head.out_features == 7 and model.fc[0].p == 0.7  # temporal preset dropout
    assert head.weight.std().item() < 0.01 and head.bias.abs().max().item() == 0.0


def test_rgb_net_from_a_weights_file_keeps_conv1(fake_resnet18):
    path, state = fake_resnet18
    cfg = load_config("spatial", overrides={"arch": "resnet18", "pretrained": str(path)})
    model, _ = build_model(cfg, num_classes=3)
    assert torch.equal(model.conv1.weight.detach(), state["conv1.weight"])
    assert model.fc[0].p == 0.8


def test_imagenet_is_looked_up_in_the_torch_cache_and_never_downloaded(fake_resnet18, tmp_path, monkeypatch):
    path, state = fake_resnet18
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = load_config("temporal", overrides={"arch": "resnet18", "flow_length": 2, "pretrained": "imagenet"})
    auto = cfg.replace(pretrained="auto")
    assert "random initialisation" in build_model(auto, 4)[1]["note"]  # auto: absent weights are not an error
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsError, match="never downloads") as err:
        build_model(cfg, 4)
    assert str(expected) in str(err.value) and "pretrained=none" in str(err.value)
    expected.parent.mkdir(parents=True)
    expected.write_bytes(path.read_bytes())
    for c in (cfg, auto):
        model, init = build_model(c, 4)
        assert str(expected) in init["note"]
        assert torch.equal(model.conv1.weight[:, 3].detach(), state["conv1.weight"].mean(dim=1))


def test_weights_of_another_backbone_are_refused(fake_resnet18, tmp_path):
    path, _ = fake_resnet18
    cfg = load_config("temporal", overrides={"arch": "resnet34", "pretrained": str(path)})
    with pytest.raises(WeightsError, match="does not fit resnet34"):
        build_model(cfg, 4)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read weights"):
        build_model(cfg.replace(pretrained=str(junk)), 4)
    with pytest.raises(WeightsError, match="no such weights file"):
        build_model(cfg.replace(pretrained=str(tmp_path / "absent.pth")), 4)


def test_partial_bn_adapts_only_the_first_batchnorm():
    cfg = load_config("temporal", overrides={"arch": "resnet18", "pretrained": "none", "bn": "partial"})
    model, _ = build_model(cfg, 4)
    bns = batchnorms(model)
    set_train_mode(model, "partial")
    assert bns[0].training and bns[0].weight.requires_grad
    assert not any(bn.training or bn.weight.requires_grad for bn in bns[1:])
    trainable = {id(p) for g in param_groups(model, 5e-4) for p in g["params"]}
    assert id(bns[0].weight) in trainable and id(bns[1].weight) not in trainable
    set_train_mode(model, "frozen")
    assert not any(bn.training for bn in bns)


def test_vgg16_head_dropouts_follow_the_paper():
    cfg = load_config("temporal", overrides={"arch": "vgg16", "pretrained": "none", "flow_length": 2})
    model, _ = build_model(cfg, 5)
    assert (model.classifier[2].p, model.classifier[5].p) == (0.9, 0.8)
    assert model.classifier[6].out_features == 5 and model.features[0].in_channels == 4


def test_clip_models_take_two_channel_flow_clips():
    cfg = load_config("temporal", overrides={"arch": "r2plus1d_18", "pretrained": "none", "clip_length": 4,
                                             "input_size": 32})
    model, _ = build_model(cfg, 3)
    assert model.stem[0].in_channels == 2
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 2, 4, 32, 32)).shape == (1, 3)
    from torchvision.models.video import r3d_18

    rgb = r3d_18()
    before = rgb.stem[0].weight.detach().clone()
    replace_first_conv(rgb, "r3d_18", 2)
    assert torch.allclose(rgb.stem[0].weight[:, 0], before.mean(dim=1))


def test_bn_auto_is_partial_over_pretrained_weights_and_train_over_random_ones(fake_resnet18):
    path, _ = fake_resnet18
    cfg = load_config("temporal", overrides={"arch": "resnet18", "flow_length": 2, "pretrained": str(path)})
    assert cfg.bn == "auto"  # the default
    model, init = build_model(cfg, 4)
    assert (init["bn"], init["pretrained"]) == ("partial", True) and "bn = auto -> partial" in init["note"]
    bns = batchnorms(model)
    assert bns[0].weight.requires_grad and not any(bn.weight.requires_grad for bn in bns[1:])
    model, init = build_model(cfg.replace(pretrained="none"), 4)
    assert (init["bn"], init["pretrained"]) == ("train", False) and "bn = auto -> train" in init["note"]
    assert all(bn.weight.requires_grad for bn in batchnorms(model))


def test_a_random_resnet101_with_the_default_bn_keeps_its_logits_small(caplog):
    """The bare `trainer run` case: resnet101, no cached weights. Partial BN over random weights keeps ~100
    BatchNorms at mean 0 / var 1 and the logits explode (the loss then turns NaN); bn = auto trains them."""
    x = torch.randn(4, 4, 64, 64)
    std = {}
    for bn in ("auto", "partial"):
        cfg = load_config("temporal", overrides={"pretrained": "none", "bn": bn, "flow_length": 2})
        torch.manual_seed(0)
        with caplog.at_level("WARNING", logger="trainer"):
            model, init = build_model(cfg, 10)
        set_train_mode(model, init["bn"])
        with torch.no_grad():
            std[bn] = model(x).std().item()
    assert std["auto"] < 1.0 and std["partial"] > 100.0, std
    warned = [r.getMessage() for r in caplog.records if "bn = partial with random initial weights" in r.getMessage()]
    assert len(warned) == 1 and "bn = auto or train" in warned[0]


def test_warnings_only_where_asked_and_no_weights_read_for_a_checkpoint(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights: auto falls back, with a warning
    cfg = load_config("spatial", overrides={"arch": "googlenet", "pretrained": "auto", "input_size": 64})
    with caplog.at_level("WARNING", logger="trainer"):
        build_model(cfg, 4, warn=False)  # ranks other than 0
    assert not caplog.records
    with caplog.at_level("WARNING", logger="trainer"):
        build_model(cfg, 4)
    assert any("pretrained = auto" in r.getMessage() for r in caplog.records)
    # Resume / test: the checkpoint's weights follow, so the pre-trained file is not read (here it does not
    # exist at all), and what it decided (GoogLeNet's input transform, bn = auto -> partial) is kept.
    gone = cfg.replace(pretrained=str(tmp_path / "deleted.pth"))
    init = {"note": "x.pth: loaded", "pretrained": True, "bn": "partial"}
    model, again = build_model(gone, 4, init=init)
    assert again == init and model.transform_input
    assert not any(bn.weight.requires_grad for bn in batchnorms(model)[1:])
