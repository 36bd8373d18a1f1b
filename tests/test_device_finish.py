"""The finish on the device (alexnet/loading/device_finish.py) gives today's batches bit for bit; the step
reads its sums back without changing them; train.workers auto, train.finish, train.compile.

Without a GPU the "device" path runs with device "cpu": the same staging, the same gathered mean
windows and the same finish functions, on CPU tensors. tests/test_cuda.py runs it on a GPU.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from alexnet.config.params import ParamsError, parse_params
from alexnet.config.sections import AugmentParams, DataParams, PreprocessParams, SyntheticParams
from alexnet.data.prepare import prepare
from alexnet.data.preprocess import preprocess
from alexnet.loading.augment import TrainDraws, draw_train, finish_train, mean_windows, subtract_mean_windows
from alexnet.loading.loader import EvalLoader, TrainLoader, finish_device, resolve_workers
from alexnet.model.network import AlexNet
from alexnet.training.loop import train_one_epoch
from alexnet.training.metrics import topk_err

S, CROP = 32, 16
SYNTHETIC = dict(classes=4, train_per_class=10, val_per_class=5, min_side=32, max_side=48, seed=2)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    prepared = tmp_path_factory.mktemp("prepared")
    prepare(prepared, DataParams(synthetic=SyntheticParams(**SYNTHETIC)), workers=1, progress=False)
    shards = tmp_path_factory.mktemp("shards")
    preprocess(prepared, shards, PreprocessParams(stored_size=S, shard_size=16, workers=1), progress=False)
    return shards


def _same(a, b):
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == xb.shape and xa.stride() == xb.stride()  # the same channels_last layout
        assert torch.equal(xa, xb), f"largest difference {(xa - xb).abs().max().item()}"
        assert torch.equal(ya, yb)


def _collect(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


def test_gathered_mean_windows_are_the_per_image_windows():
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(S, S, 3, generator=g) * 255
    crops = torch.randint(0, 256, (64, CROP, CROP, 3), dtype=torch.uint8, generator=g)
    draws = draw_train(64, S, torch.tensor([900.0, 90.0, 9.0]), torch.linalg.qr(torch.randn(3, 3, generator=g))[0],
                       crop_size=CROP, generator=g, augment=AugmentParams(pca_scale="sqrt"))  # fmt: skip
    assert draws.flips.any() and not draws.flips.all()
    by_image = subtract_mean_windows(crops, mean, draws.ys, draws.xs, draws.flips, draws.shift)
    gathered = subtract_mean_windows(crops, mean, draws.ys, draws.xs, draws.flips, draws.shift, gather=True)
    assert torch.equal(by_image, gathered)
    for i in (0, int(draws.flips.nonzero()[0])):  # one window as cut by hand, plain and mirrored
        y, x = int(draws.ys[i]), int(draws.xs[i])
        window = mean[y : y + CROP, x : x + CROP]
        expected = window.flip(1) if draws.flips[i] else window
        assert torch.equal(mean_windows(mean, draws.ys, draws.xs, draws.flips, CROP)[i], expected)
    no_shift = TrainDraws(draws.ys, draws.xs, draws.flips, None)
    plain, gathered = (finish_train(crops, mean, no_shift, 58.0, gather=g) for g in (False, True))
    assert torch.equal(plain, gathered)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("divisor", [1.0, (58.0, 57.0, 57.5)])
def test_device_finish_gives_todays_training_batches(shards_dir, workers, divisor):
    options = dict(batch_size=8, crop_size=CROP, seed=5, workers=workers, divisor=divisor,
                   augment=AugmentParams(pca_scale="sqrt"))  # fmt: skip
    with TrainLoader(shards_dir, **options) as cpu, TrainLoader(shards_dir, **options, finish_on="cpu") as device:
        for epoch in (0, 1):  # the staging slots come round again
            _same(_collect(cpu.epoch(epoch)), _collect(device.epoch(epoch)))


@pytest.mark.parametrize("ten_crop", [False, True])
def test_device_finish_gives_todays_test_batches(shards_dir, ten_crop):
    options = dict(batch_size=6, crop_size=CROP, ten_crop=ten_crop, workers=1, divisor=(58.0, 57.0, 57.5))
    with EvalLoader(shards_dir, **options) as cpu, EvalLoader(shards_dir, **options, finish_on="cpu") as device:
        a, b = _collect(cpu), _collect(device)
    assert a[-1][0].shape[0] == 20 % 6  # the short last batch too
    _same(a, b)


def test_kept_labels_are_not_overwritten(shards_dir):
    # The staging slots are reused; a caller that keeps a batch (predict does) keeps its own labels.
    with EvalLoader(shards_dir, batch_size=4, crop_size=CROP, ten_crop=False, workers=1, finish_on="cpu") as loader:
        kept = list(loader)
        fresh = _collect(loader)
    _same(kept, fresh)


def _model():
    torch.manual_seed(0)
    return AlexNet(num_classes=4, crop_size=64, init="kaiming", lrn_impl="torch")


def _batches(n=3, bad=None):
    g = torch.Generator().manual_seed(1)
    out = [(torch.randn(4, 3, 64, 64, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(n)]
    if bad is not None:
        out[bad][0][0, 0, 0, 0] = math.inf
    return out


def test_epoch_sums_on_the_device_are_the_python_float_sums():
    # The loss and error sums stay on the device; history must hold the same floats the per-batch
    # .item() loop gave (weights are unaffected either way: nothing feeds back into the step).
    batches = _batches()
    model, reference = _model(), _model()
    torch.manual_seed(7)  # dropout draws the same masks in both loops
    stats = train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                            device="cpu", precision="fp32", progress=False)  # fmt: skip
    opt, loss_sum, err_sum = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9), 0.0, 0.0
    reference.train()
    torch.manual_seed(7)
    for images, labels in batches:
        logits = reference(images.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * 4
        err_sum += topk_err(logits.detach().float(), labels, 1) * 4
    assert stats.row()["loss"] == loss_sum / 12 and stats.row()["top1_err"] == err_sum / 12
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_loss_that_is_not_finite_still_stops_the_epoch():
    model = _model()
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) by batch 2; lower train.lr"):
        train_one_epoch(model, _batches(bad=1), torch.optim.SGD(model.parameters(), lr=0.01), device="cpu",
                        precision="fp32", desc="m0", progress=False)  # fmt: skip


def test_train_section_workers_finish_compile():
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers("auto") == max(1, cores - 1) and resolve_workers(3) == 3
    train = parse_params({"train": {"workers": "auto"}}).train
    assert (train.workers, train.finish, train.compile) == ("auto", "auto", False)
    for bad, line in (({"workers": 0}, 'train.workers: Value error, a number of processes >= 1 or "auto"'),
                      ({"workers": "many"}, "train.workers: Value error"), ({"workers": 2.0}, "train.workers"),
                      ({"finish": "gpu"}, "train.finish: Input should be 'auto', 'cpu' or 'device'")):  # fmt: skip
        with pytest.raises(ParamsError) as err:
            parse_params({"train": bad})
        assert str(err.value).count("\n") == 1 and line in str(err.value)  # one line, naming the key
    assert finish_device("auto", "cpu") is None and finish_device("auto", "cuda:1") == "cuda:1"
    assert finish_device("device", "cpu") == "cpu" and finish_device("cpu", "cuda") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_finish_on_a_gpu_gives_todays_batches(shards_dir):
    # Pinned staging, the side stream and the GPU's float32 ops: still the CPU's batches, bit for bit.
    train = dict(batch_size=8, crop_size=CROP, seed=5, workers=1, divisor=(58.0, 57.0, 57.5),
                 augment=AugmentParams(pca_scale="sqrt"))  # fmt: skip
    with TrainLoader(shards_dir, **train) as cpu, TrainLoader(shards_dir, **train, finish_on="cuda:0") as gpu:
        for epoch in (0, 1):
            on_gpu = [(x.cpu(), y.cpu()) for x, y in gpu.epoch(epoch)]
            _same(_collect(cpu.epoch(epoch)), on_gpu)
    ten = dict(batch_size=6, crop_size=CROP, ten_crop=True, workers=1)
    with EvalLoader(shards_dir, **ten) as cpu, EvalLoader(shards_dir, **ten, finish_on="cuda:0") as gpu:
        _same(_collect(cpu), [(x.cpu(), y.cpu()) for x, y in gpu])


class _Epochs:
    def __init__(self, batches):
        self.batches = batches

    def epoch(self, epoch, start_batch=0):
        return self.batches[start_batch:]

    def __len__(self):
        return len(self.batches)


@pytest.mark.slow
def test_train_compile_trains_the_same_module(tmp_path):
    # train.compile compiles in place: the checkpoint keeps the module's own keys (no _orig_mod.),
    # and without dropout the compiled run follows the eager one up to rounding.
    from alexnet.training.loop import RunSpec, TrainData, fit  # noqa: PLC0415

    histories, keys = [], []
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = AlexNet(num_classes=4, crop_size=64, init="kaiming", dropout=0.0)
        data = TrainData(_Epochs(_batches()), _batches(2))
        train = parse_params({"train": {"epochs": 1, "batch_size": 4, "compile": compile_}}).train
        run = RunSpec(tmp_path / f"ck-{compile_}.pt", "cpu", "fp32", progress=False)
        histories.append(fit(model, data, train, run)[0])
        keys.append(list(torch.load(run.checkpoint, weights_only=True)["model"]))
    assert keys[0] == keys[1]
    assert histories[1]["train_loss"] == pytest.approx(histories[0]["train_loss"], rel=1e-4)
