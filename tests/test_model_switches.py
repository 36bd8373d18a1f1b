"""The study's switches (§3.1-§3.3, §4.1): tanh, batch normalisation, the §3.2 one-tower baseline, crops.

The paper's configuration must build exactly what it built before the switches: same modules,
same keys, same initial weights; tests/test_model.py keeps its parameter count.
"""

import pytest
import torch
from torch import nn

from alexnet.config.params import ParamsError, parse_params
from alexnet.config.sections import AugmentParams, ModelParams
from alexnet.loading.augment import draw_train
from alexnet.model.lrn import LocalResponseNorm
from alexnet.model.network import AlexNet, build_model

SMALL = dict(num_classes=5, crop_size=67, init="kaiming")  # pool5 is 1x1: quick forward passes
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def on_meta(**kw) -> AlexNet:
    with torch.device("meta"):
        return AlexNet(**kw)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kernels(model: AlexNet) -> list[int]:
    out = []
    for name in CONVS:
        layer = getattr(model, name)
        out.append(layer.out_channels if isinstance(layer, nn.Conv2d) else 2 * layer.tower_a.out_channels)
    return out


def test_the_papers_switches_are_the_defaults():
    cfg = ModelParams()
    assert (cfg.arch, cfg.activation, cfg.norm, cfg.layout) == ("alexnet", "relu", "lrn", "two_towers")
    assert AugmentParams().random_crop is True


@pytest.mark.parametrize("explicit", [{"norm": "lrn"}, {"norm": "lrn", "activation": "relu", "width": "full"}])
def test_naming_the_default_switches_builds_the_same_weights(explicit):
    torch.manual_seed(0)
    default = AlexNet(**SMALL)
    torch.manual_seed(0)
    named = AlexNet(**SMALL, **explicit)
    a, b = default.state_dict(), named.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert str(default) == str(named)


def test_norm_none_has_no_normalisation():
    assert not any(isinstance(m, (LocalResponseNorm, nn.BatchNorm2d)) for m in on_meta(**SMALL, norm="none").modules())


@pytest.mark.parametrize(("old", "instead"), [(True, "norm: lrn"), (False, "norm: none"), ("yes", "norm: lrn or")])
def test_the_retired_lrn_switch_says_what_to_write_instead(old, instead):
    with pytest.raises(ParamsError) as err:
        parse_params({"model": {"lrn": old}})
    assert f"lrn: {old} is retired; write {instead}" in str(err.value)
    assert len(str(err.value).splitlines()) == 2  # the file's name, then one line for the key


def test_one_tower_half_is_the_papers_baseline():
    """§3.2: conv1-conv4 halved, conv5 and the fully connected layers at full size."""
    full, half = on_meta(num_classes=1000, towers=1), on_meta(num_classes=1000, towers=1, width="half")
    assert kernels(full) == [96, 256, 384, 384, 256]
    assert kernels(half) == [48, 128, 192, 192, 256]
    assert (half.fc6.in_features, half.fc6.out_features, half.fc7.out_features) == (9216, 4096, 4096)
    expected = (48 * 3 * 11 * 11 + 48) + (128 * 48 * 25 + 128) + (192 * 128 * 9 + 192) + (192 * 192 * 9 + 192) \
        + (256 * 192 * 9 + 256) + (9216 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    assert count(half) == expected
    # "about the same number of parameters" as the two-tower net: within 5 %
    assert abs(count(half) - 60_965_224) / 60_965_224 < 0.05


def test_width_half_needs_one_tower():
    with pytest.raises(ValueError, match="towers"):
        AlexNet(**SMALL, width="half")
    with pytest.raises(ParamsError, match="model: .*width: half .*towers: 1"):
        parse_params({"model": {"width": "half"}})


@pytest.mark.parametrize("switches", [
    {"activation": "tanh"},
    {"norm": "batchnorm"},
    {"norm": "none"},
    {"activation": "tanh", "norm": "batchnorm"},
    {"towers": 1, "width": "half"},
    {"towers": 1, "width": "half", "norm": "batchnorm"},
    {"pooling": "non_overlapping", "crop_size": 80},
    {"dropout": 0.0},
])
def test_every_variant_runs_forward_and_backward(switches):
    torch.manual_seed(0)
    model = AlexNet(**{**SMALL, **switches})
    crop = switches.get("crop_size", 67)
    x = torch.randn(4, 3, crop, crop)
    out = model(x)
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert model.conv1.tower_a.weight.grad is not None if hasattr(model.conv1, "tower_a") else True
    assert model.features_fc7(x).shape == (4, 4096)


def test_tanh_replaces_every_relu():
    text = str(on_meta(**SMALL, activation="tanh"))
    assert "ReLU" not in text and text.count("Tanh()") == 7
    lrn = [m for m in on_meta(**SMALL, activation="tanh").modules() if isinstance(m, LocalResponseNorm)]
    assert len(lrn) == 2 and not any(m.relu for m in lrn)  # tanh, then LRN: no ReLU fused in


def test_batchnorm_sits_where_lrn_was():
    model = on_meta(**SMALL, norm="batchnorm")
    bns = [(name, m.num_features) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == [("relu_norm1.1", 96), ("relu_norm2.1", 256)]
    assert "BatchNorm2d" in str(model) and "LocalResponseNorm" not in str(model)


def test_batchnorm_refuses_two_devices():
    with pytest.raises(ParamsError, match="batchnorm"):
        parse_params({"model": {"norm": "batchnorm", "devices": ["cpu", "cpu"]}})
    with pytest.raises(ValueError, match="batchnorm"):
        AlexNet(**SMALL, norm="batchnorm").place(["cpu", "cpu"])


def test_batchnorm_every_conv_sits_after_each_convolution_before_its_nonlinearity():
    model = on_meta(**SMALL, norm="batchnorm_every_conv")
    bns = [(name, m.num_features) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == [("relu_norm1.0", 96), ("relu_norm2.0", 256), ("relu3.0", 384), ("relu4.0", 384), ("relu5.0", 256)]
    assert isinstance(model.relu3[1], nn.ReLU) and "LocalResponseNorm" not in str(model)
    x = torch.randn(4, 3, 67, 67)
    real = AlexNet(**SMALL, norm="batchnorm_every_conv").train()
    assert real(x).shape == (4, SMALL["num_classes"])


def test_figure1_network_has_four_layers_and_is_checked():
    cfg = parse_params({"model": {"arch": "figure1_cnn", "towers": 1, "norm": "none", "dropout": 0.0,
                                  "crop_size": 32, "activation": "tanh"}, "preprocess": {"stored_size": 32}}).model
    model = build_model(cfg, 10)
    assert [type(m).__name__ for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))] == \
        ["Conv2d", "Conv2d", "Conv2d", "Linear"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10) and "Tanh" in str(model)
    with pytest.raises(ParamsError, match="figure1_cnn is one tower"):
        parse_params({"model": {"arch": "figure1_cnn"}})


def test_build_model_passes_the_switches():
    cfg = ModelParams(activation="tanh", norm="batchnorm", towers=1, width="half", crop_size=67)
    model = build_model(cfg, 5)
    assert kernels(model) == [48, 128, 192, 192, 256]
    assert "Tanh" in str(model) and "BatchNorm2d" in str(model)


def test_no_random_crop_is_the_centre_with_the_same_other_draws():
    args = (6, 72, torch.tensor([3.0, 2.0, 1.0]), torch.eye(3))
    on = draw_train(*args, crop_size=64, generator=torch.Generator().manual_seed(5), augment=AugmentParams())
    off = draw_train(*args, crop_size=64, generator=torch.Generator().manual_seed(5),
                     augment=AugmentParams(random_crop=False))
    assert off.ys.tolist() == off.xs.tolist() == [4] * 6
    assert not torch.equal(on.ys, off.ys)
    assert torch.equal(on.flips, off.flips) and torch.equal(on.shift, off.shift)
