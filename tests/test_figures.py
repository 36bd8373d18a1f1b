"""Figures 3 and 4 (alexnet/evaluation/figures.py): the towers' own conv1 split, colour specificity, neighbours."""

import json

import pytest
import torch
import torch.nn.functional as F

from alexnet.evaluation.figures import colour_specificity, conv1_kernels, figure3, kernel_grid, nearest, query_indices
from alexnet.figures import main
from alexnet.model.network import AlexNet
from tests.tiny import build_tiny_data


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AlexNet(num_classes=3, crop_size=64, init="kaiming").eval()


def test_the_tower_split_of_conv1_is_the_models_own(model):
    towers = conv1_kernels(model)
    assert list(towers) == ["tower_a", "tower_b"] and towers["tower_a"].shape == (48, 3, 11, 11)
    # The forward pass's first 48 conv1 channels are tower A's kernels: the figure's top block.
    x = torch.randn(2, 3, 64, 64)
    out = model.conv1(x)
    ref = F.conv2d(x, towers["tower_a"], model.conv1.tower_a.bias, stride=4, padding=2)
    torch.testing.assert_close(out[:, :48], ref)
    one = AlexNet(num_classes=3, crop_size=67, towers=1, width="half")
    assert list(conv1_kernels(one)) == ["one_tower"] and conv1_kernels(one)["one_tower"].shape[0] == 48


def test_colour_specificity_is_the_energy_off_the_grey_axis():
    grey = torch.ones(1, 3, 11, 11) * torch.randn(1, 1, 11, 11)
    red = torch.zeros(1, 3, 11, 11)
    red[:, 0] = 1.0
    spec = colour_specificity(torch.cat([grey, red]))
    assert spec[0].item() == pytest.approx(0.0, abs=1e-7)
    assert spec[1].item() == pytest.approx(2 / 3)  # (2/3)^2 + 2 (1/3)^2 of 1


def test_kernel_grid_puts_each_tower_in_its_own_block(model):
    towers = conv1_kernels(model)
    grid = kernel_grid(towers, columns=8, gap=1)
    assert grid.shape == (6 * 12 + 12 + 6 * 12, 8 * 12, 3)
    assert grid.min() >= 0 and grid.max() <= 1
    k = towers["tower_a"][0].permute(1, 2, 0).numpy()
    assert grid[:11, :11] == pytest.approx((k - k.min()) / (k.max() - k.min()))
    k = towers["tower_b"][0].permute(1, 2, 0).numpy()
    assert grid[84:95, :11] == pytest.approx((k - k.min()) / (k.max() - k.min()))


def test_nearest_is_by_euclidean_distance_nearest_first():
    pool = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    assert nearest(torch.tensor([[0.9, 0.9], [9.0, 0.0]]), pool, k=2).tolist() == [[2, 0], [1, 3]]
    assert query_indices(100) == [0, 24, 49, 74, 99] and query_indices(3) == [0, 1, 2]


def test_figure3_writes_the_image_and_a_number_per_tower(model, tmp_path):
    result = figure3(model, tmp_path / "f3.png")
    assert (tmp_path / "f3.png").stat().st_size > 0
    assert set(result["colour_specificity"]) == {"tower_a", "tower_b"}
    assert all(0 <= v <= 1 for v in result["colour_specificity"].values())


def test_the_command_writes_both_figures_from_a_member(model, tmp_path):
    import yaml

    from alexnet.training.member import export_model
    from tests.tiny import tiny_params

    data = build_tiny_data(tmp_path / "data")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params()))
    export_model(tmp_path / "model.pt", model, {"num_classes": 3})
    out = tmp_path / "figs"
    assert main(["--model", str(tmp_path / "model.pt"), "--params", str(params),
                 "--shards", str(data / "shards"), "--out", str(out)]) == 0
    result = json.loads((out / "figures.json").read_text())
    assert len(result["figure4"]["queries"]) == 5
    assert all(len(n) == 6 for n in result["figure4"]["neighbours"])
    assert (out / "figure4_neighbours.png").is_file() and (out / "figure3_conv1_kernels.png").is_file()
    assert main(["--model", str(tmp_path / "missing.pt"), "--params", str(params), "--out", str(out)]) == 2
