"""The network of §3 / Figure 2: shapes, parameter count, towers, placement, checkpoints, init."""

import copy

import pytest
import torch
import torch.nn.functional as F

from alexnet.config.sections import ModelParams
from alexnet.model.network import AlexNet, autocast, build_model, pooled_size

SMALL = dict(num_classes=5, crop_size=67, init="kaiming")  # pool5 is 1x1: quick forward passes


def small_model(**kw) -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(**{**SMALL, **kw})


@pytest.fixture(scope="module")
def built() -> AlexNet:
    return small_model()


@pytest.fixture
def model(built) -> AlexNet:
    """A fresh copy of one small model (copying is much quicker than initialising fc7 again)."""
    return copy.deepcopy(built)


def on_meta(**kw) -> AlexNet:
    # Shapes and counts only: no memory, no initialisation cost.
    with torch.device("meta"):
        return AlexNet(**kw)


def images(n=3, crop=67, seed=1):
    return torch.randn(n, 3, crop, crop, generator=torch.Generator().manual_seed(seed))


LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
# The checkpoints' keys, in order, as the model had them before its ReLU, LRN, pooling and dropout
# became modules: those hold no parameters and must not change a key.
TWO_TOWER_KEYS = [f"{layer}.{tower}.{p}" for layer in LAYERS for tower in ("tower_a", "tower_b")
                  for p in ("weight", "bias")] + ["fc8.weight", "fc8.bias"]
ONE_TOWER_KEYS = [f"{layer}.{p}" for layer in (*LAYERS, "fc8") for p in ("weight", "bias")]


def test_parameter_count_is_the_papers():
    assert sum(p.numel() for p in on_meta(num_classes=1000).parameters()) == 60_965_224


def test_state_dict_holds_each_towers_half():
    shapes = {k: tuple(v.shape) for k, v in on_meta(num_classes=1000).state_dict().items()}
    assert shapes["conv1.tower_a.weight"] == (48, 3, 11, 11)
    assert shapes["conv2.tower_b.weight"] == (128, 48, 5, 5)  # own tower's half of conv1
    assert shapes["conv3.tower_a.weight"] == (192, 256, 3, 3)  # both towers' conv2
    assert shapes["conv4.tower_b.weight"] == (192, 192, 3, 3)
    assert shapes["conv5.tower_a.weight"] == (128, 192, 3, 3)
    assert shapes["fc6.tower_a.weight"] == (2048, 9216)  # all of pool5, 6x6x256
    assert shapes["fc7.tower_b.weight"] == (2048, 4096)
    assert shapes["fc8.weight"] == (1000, 4096)
    assert len(shapes) == 30


@pytest.mark.parametrize("towers,keys", [(2, TWO_TOWER_KEYS), (1, ONE_TOWER_KEYS)])
def test_state_dict_keys_are_the_checkpoints(towers, keys):
    assert list(on_meta(num_classes=1000, towers=towers).state_dict()) == keys
    assert len(TWO_TOWER_KEYS) == 30 and TWO_TOWER_KEYS[:2] == ["conv1.tower_a.weight", "conv1.tower_a.bias"]


def test_print_shows_figure_2s_layers_in_order():
    model = on_meta(num_classes=1000)
    assert [name for name, _ in model.named_children()] == [
        "conv1", "relu_norm1", "pool1", "conv2", "relu_norm2", "pool2", "conv3", "relu3", "conv4", "relu4",
        "conv5", "relu5", "pool5", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8",
    ]
    text = repr(model)
    assert "(relu_norm1): LocalResponseNorm(relu=True, size=5, alpha=0.0001, beta=0.75, k=2.0, groups=2" in text
    assert "(pool1): MaxPool2d(kernel_size=3, stride=2" in text and "(drop6): Dropout(p=0.5" in text
    assert "(conv3): TowerConv2d(\n    connects=both" in text
    assert "(relu_norm1): ReLU()" in repr(on_meta(num_classes=1000, norm="none"))
    assert "(pool5): MaxPool2d(kernel_size=2, stride=2" in repr(on_meta(pooling="non_overlapping"))


def test_one_tower_is_full_width():
    shapes = {k: tuple(v.shape) for k, v in on_meta(num_classes=1000, towers=1).state_dict().items()}
    assert shapes["conv2.weight"] == (256, 96, 5, 5)
    assert shapes["conv5.weight"] == (256, 384, 3, 3)
    assert shapes["fc6.weight"] == (4096, 9216)


@pytest.mark.parametrize("crop,side", [(224, 6), (128, 3), (67, 1)])
def test_pool5_size_follows_the_crop(crop, side):
    assert pooled_size(crop) == side


def test_non_overlapping_pooling_keeps_the_224_sizes():
    assert pooled_size(224, "non_overlapping") == 6  # 55 -> 27 -> 13 -> 6, as with 3/2


def test_224_crop_gives_the_papers_shapes():
    model = AlexNet(num_classes=10, init="kaiming").eval()
    seen = {}
    for name in ("conv1", "conv2", "conv5"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: o.shape}))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert seen == {"conv1": (1, 96, 55, 55), "conv2": (1, 256, 27, 27), "conv5": (1, 256, 13, 13)}
    assert out.shape == (1, 10)


def test_crop_too_small_is_refused():
    with pytest.raises(ValueError, match="crop_size=31"):
        AlexNet(crop_size=31)


@pytest.mark.slow
def test_two_devices_equal_one_device_outputs_and_gradients(model, monkeypatch):
    one = model
    one.drop6.p = one.drop7.p = 0.0  # dropout's masks differ between the paths; everything else must not
    two = copy.deepcopy(one).place(["cpu", "cpu"])
    transfers = []
    original_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **k: transfers.append(a) or original_to(t, *a, **k))
    x = images()
    y = torch.tensor([0, 3, 4])
    out_one, out_two = one(x), two(x)
    assert transfers, "the two-device path must move activations between the towers' devices"
    torch.testing.assert_close(out_two, out_one, rtol=1e-5, atol=1e-6)
    F.cross_entropy(out_one, y).backward()
    F.cross_entropy(out_two, y).backward()
    grads_two = dict(two.named_parameters())
    for name, p in one.named_parameters():
        torch.testing.assert_close(grads_two[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(two.features_fc7(x), one.features_fc7(x), rtol=1e-5, atol=1e-6)


def test_each_device_normalises_the_one_tower_it_holds(model):
    # On two devices each activation tensor holds one tower: the LRN must not split it again.
    assert model.relu_norm1.groups == 2
    model.place(["cpu", "cpu"])
    assert (model.relu_norm1.groups, model.relu_norm2.groups) == (1, 1)
    model.place("cpu")
    assert (model.relu_norm1.groups, model.relu_norm2.groups) == (2, 2)


@pytest.mark.slow
def test_export_takes_any_batch_size_and_equals_the_fast_model(model):
    model.eval()
    exported = torch.export.export(model, (images(2),), dynamic_shapes=({0: torch.export.Dim("batch", min=2)},))
    x = images(5, seed=3) * 50  # large activations: LRN's window matters
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-5)
    assert model.relu_norm1.impl == "fast"  # exporting left the module as it was


def test_checkpoint_round_trips_across_placements(model, tmp_path):
    two = model.place(["cpu", "cpu"]).eval()
    torch.save(two.state_dict(), tmp_path / "two.pt")
    one = copy.deepcopy(two).place("cpu")
    for p in one.parameters():
        p.data.zero_()  # nothing but the checkpoint may carry the weights over
    one.load_state_dict(torch.load(tmp_path / "two.pt", weights_only=True))
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(one(x), two(x), rtol=1e-5, atol=1e-6)
    torch.save(one.state_dict(), tmp_path / "one.pt")
    assert torch.load(tmp_path / "one.pt", weights_only=True).keys() == two.state_dict().keys()


@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cpu"]])
def test_towers_meet_only_at_conv3_and_the_fc_layers(model, devices):
    model = model.place(devices).eval()
    outputs = {}

    def keep(name):
        return lambda m, i, o: outputs.__setitem__(name, o)

    for layer in ("conv2", "conv3", "conv5"):
        for tower in ("tower_a", "tower_b"):
            if len(devices) == 2:  # each tower module runs on its own
                getattr(getattr(model, layer), tower).register_forward_hook(keep(f"{layer}.{tower}"))
        if len(devices) == 1:  # one grouped module: tower A's channels first, then tower B's
            getattr(model, layer).register_forward_hook(
                lambda m, i, o, layer=layer: outputs.update(
                    {f"{layer}.tower_a": o.chunk(2, 1)[0], f"{layer}.tower_b": o.chunk(2, 1)[1]}
                )
            )
    x = images()
    with torch.no_grad():
        model(x)
        before = {k: v.clone() for k, v in outputs.items()}
        model.conv1.tower_a.weight.add_(0.1)  # perturb tower A's first layer
        model(x)
    assert torch.equal(outputs["conv2.tower_b"], before["conv2.tower_b"])  # conv2 sees its own tower
    assert not torch.equal(outputs["conv3.tower_b"], before["conv3.tower_b"])  # conv3 sees both
    # A loss on tower A's conv5 reaches tower B's conv2 (through conv3) but not its conv3..conv5.
    model.zero_grad()
    model(x)
    outputs["conv5.tower_a"].sum().backward()
    for layer in ("conv3", "conv4", "conv5"):
        grad = getattr(model, layer).tower_b.weight.grad  # None on two devices: not even in the graph
        assert grad is None or grad.abs().max() == 0, layer
    assert model.conv2.tower_b.weight.grad.abs().max() > 0


def test_fast_lrn_equals_torch_lrn_in_the_model(model):
    fast = model.eval()
    ref = small_model(lrn_impl="torch").eval()
    ref.load_state_dict(fast.state_dict())
    x = images() * 50  # large activations: LRN's window matters
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "options", [dict(towers=1), dict(norm="none"), dict(pooling="non_overlapping"), dict(channels_last=False)]
)
def test_options_run(options):
    with torch.no_grad():
        assert small_model(**options)(images()).shape == (3, 5)


def test_two_devices_need_two_towers():
    with pytest.raises(ValueError, match="towers=2"):
        small_model(towers=1).place(["cpu", "cpu"])


def test_paper_init():
    model = small_model(init="paper")
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            layer = name.split(".")[0]
            expected_bias = 1.0 if layer in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert torch.all(module.bias == expected_bias), name
            assert abs(module.weight.std().item() - 0.01) < 0.002, name


def test_kaiming_init_has_zero_biases(model):
    assert all(torch.all(p == 0) for n, p in model.named_parameters() if n.endswith("bias"))


def test_features_fc7_feed_fc8(model):
    model.eval()
    x = images()
    with torch.no_grad():
        features = model.features_fc7(x)
        assert features.shape == (3, 4096)
        torch.testing.assert_close(model.fc8(features), model(x))


def test_build_model_from_params():
    cfg = ModelParams(crop_size=67, init="kaiming", devices=("cpu", "cpu"), lrn_impl="torch", lrn_gpu="eager")
    model = build_model(cfg, num_classes=7)
    assert model.devices == ("cpu", "cpu")
    assert (model.relu_norm2.impl, model.relu_norm2.gpu) == ("torch", "eager")
    assert model(images()).shape == (3, 7)


@torch.no_grad()
def test_bf16_autocast_runs_and_stays_close(model):
    model.eval()
    x = images()
    with autocast("cpu", "bf16"):
        low = model(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model(x), rtol=0.1, atol=0.05)
    with autocast("cpu", "fp32"):
        assert model(x).dtype == torch.float32
