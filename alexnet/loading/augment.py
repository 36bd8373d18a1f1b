"""Augmentation and test-time views (§4.1) as pure batch functions with an explicit generator.

Every random choice is drawn from the `torch.Generator` passed in, never from a global RNG, so
a seed fixes the output exactly (in the style of cifar10-airbench's `batch_crop` and
`batch_flip_lr`). Each crop is cut and mirrored as uint8 (cheap) and converted to float once,
image by image while it sits in cache.

Layouts and units:
- in:  images uint8 (N, S, S, 3), RGB, 0..255, as `ShardSet.read` returns them (after
       `torch.from_numpy`); mean float32 (S, S, 3) in 0..255; eigenvalues (3,) of the RGB
       covariance in 0..255 pixel units (variances, so pixel^2); eigenvectors (3, 3), columns.
- out: float32 (N, 3, c, c) "NCHW" in 0..255 units minus the mean image (no /255: the paper
       scales nothing), then divided by `divisor` (1.0, the paper, unless asked). The tensor is
       a permuted view of NHWC data, so it is in `torch.channels_last` memory format; convs on
       CPU take that layout directly, `.contiguous()` gives the classic layout if wanted.

Mean subtraction (§2) is of the full stored image, so a crop subtracts the SAME window of the
mean image, mirrored when the crop is mirrored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from alexnet.config.sections import AugmentParams

PcaScale = Literal["unit_range", "sqrt", "pixel_range"]

# Ten-crop order (§4.1): the four corners and the centre, then the same five windows mirrored.
# View v + 5 is exactly view v flipped left-right. (torchvision's TenCrop instead crops the
# flipped image, so its mirrored top-left is the mirror of the top-RIGHT window; same set of ten.)
TEN_CROP_VIEWS = (
    "top_left", "top_right", "bottom_left", "bottom_right", "center",
    "top_left_mirrored", "top_right_mirrored", "bottom_left_mirrored", "bottom_right_mirrored",
    "center_mirrored",
)  # fmt: skip


def random_crop_offsets(
    n: int, stored_size: int, crop_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ys, xs), each int64 (N,): top-left corners uniform over every position in [0, S - c]."""
    if not 0 < crop_size <= stored_size:
        raise ValueError(f"crop_size={crop_size} must be in [1, stored_size={stored_size}]")
    ys = torch.randint(0, stored_size - crop_size + 1, (n,), generator=generator)
    xs = torch.randint(0, stored_size - crop_size + 1, (n,), generator=generator)
    return ys, xs


def random_flips(n: int, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """bool (N,): which images to mirror, each with probability p (§4.1: p = 0.5)."""
    return torch.rand(n, generator=generator) < p


def crop_flip(
    images: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    flips: torch.Tensor,
    crop_size: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 (N, c, c, 3): crop i of images (N, S, S, 3) at (ys[i], xs[i]), mirrored where flips[i].

    Written into `out` (N, c, c, 3) uint8 if given (e.g. a shared-memory buffer).
    """
    n, c = images.shape[0], crop_size
    if out is None:
        out = torch.empty((n, c, c, 3), dtype=torch.uint8)
    for i, (y, x, f) in enumerate(zip(ys.tolist(), xs.tolist(), flips.tolist(), strict=True)):
        crop = images[i, y : y + c, x : x + c]  # uint8 view (c, c, 3)
        out[i].copy_(crop.flip(1) if f else crop)
    return out


def subtract_mean_windows(
    crops: torch.Tensor,
    mean: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    flips: torch.Tensor,
    shift: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    gather: bool = False,
) -> torch.Tensor:
    """float32 (N, c, c, 3): crops (N, c, c, 3) uint8 as `crop_flip` cut them at (ys, xs, flips),
    minus the same window of mean (S, S, 3), mirrored alike, plus shift[i] (N, 3) at every pixel
    if given. The conversion and the shift are one op each over the whole batch (one parallel
    loop each); the windows, which differ per image, are subtracted image by image, or with
    `gather` gathered first into one (N, c, c, 3) tensor and subtracted in one op: the same
    floats (each element is the same uint8 - float32 subtraction), without a kernel launch and a
    host read of the draws per image, which is what a GPU wants (ys, xs, flips on mean's device).
    """
    n, c, s = crops.shape[0], crops.shape[1], mean.shape[0]
    if out is None:
        out = torch.empty((n, c, c, 3), dtype=torch.float32, device=crops.device)
    out.copy_(crops)  # copy_ then sub_: a mixed uint8 - float32 op takes a slow, unvectorised path
    mean = mean.float()
    if gather:
        out.sub_(mean_windows(mean, ys, xs, flips, c))
    else:
        mirrored_mean = mean.flip(1)  # the mirror of mean's window at x is mirrored_mean[:, s-c-x : s-x]
        for i, (y, x, f) in enumerate(zip(ys.tolist(), xs.tolist(), flips.tolist(), strict=True)):
            out[i].sub_(mirrored_mean[y : y + c, s - c - x : s - x] if f else mean[y : y + c, x : x + c])
    if shift is not None:
        # The shift as one image row (c * 3,) per image: adding rows keeps the inner loop long and
        # vectorised; broadcasting a (3,) vector over the last dim makes the inner loop 3 long.
        out.view(n, c, c * 3).add_(shift.float().repeat(1, c)[:, None, :])
    return out


def mean_windows(mean: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, flips: torch.Tensor,
                 crop_size: int) -> torch.Tensor:
    """float32 (N, c, c, 3): window i of mean (S, S, 3) at (ys[i], xs[i]), mirrored where flips[i],
    gathered in one indexing op on mean's device. Column j of a mirrored window is column
    x + c - 1 - j of mean."""
    steps = torch.arange(crop_size, device=mean.device)
    rows = ys[:, None] + steps  # (N, c)
    cols = torch.where(flips[:, None], xs[:, None] + (crop_size - 1) - steps, xs[:, None] + steps)  # (N, c)
    return mean[rows[:, :, None], cols[:, None, :]]


def lighting_shift(
    n: int,
    eigenvalues: torch.Tensor,
    eigenvectors: torch.Tensor,
    std: float,
    generator: torch.Generator,
    scale: PcaScale = "unit_range",
) -> torch.Tensor:
    """float32 (N, 3): one RGB shift per image (§4.1), in 0..255 units, added to every pixel.

    shift = [p1 p2 p3] [a1 w1, a2 w2, a3 w3]^T with a_i ~ N(0, std) drawn per image, where the
    weights w come from the eigenvalues l (given in 0..255 pixel units, i.e. pixel^2) by `scale`:
    - "unit_range": w = l / 255, the paper's formula with the covariance of pixel values taken
      in [0, 1] (l / 255^2), the shift then expressed in 0..255 units: a shift of a few pixel
      levels along the first axis, a mild change of illumination.
    - "sqrt": w = sqrt(l), 10 % of the natural spread along each principal axis; what common
      re-implementations do (fb.resnet.torch, ClassyVision). A larger shift than unit_range's.
    - "pixel_range": w = l, the formula with the covariance in 0..255 units: on natural images
      a shift far beyond the 0..255 range, which buries the image. Kept only to show why not.
    The shift's covariance is P diag(std^2 w^2) P^T.
    """
    eigenvalues = eigenvalues.double()
    if scale == "unit_range":
        weights = eigenvalues / 255.0
    elif scale == "sqrt":
        weights = eigenvalues.clamp(min=0).sqrt()
    elif scale == "pixel_range":
        weights = eigenvalues
    else:
        raise ValueError(f"unknown PCA lighting scale {scale!r}; allowed: unit_range, sqrt, pixel_range")
    alphas = torch.randn(n, 3, generator=generator, dtype=torch.float64) * std  # (N, 3)
    return ((alphas * weights) @ eigenvectors.double().T).float()  # rows: P (a * w)


def _to_nchw(x: torch.Tensor, divisor: float | torch.Tensor) -> torch.Tensor:
    # x float32 (..., c, c, 3) -> (..., 3, c, c), channels_last memory (a permuted view).
    if not (isinstance(divisor, float | int) and divisor == 1):
        x.div_(torch.as_tensor(divisor, dtype=torch.float32, device=x.device))
    return x.movedim(-1, -3)


@dataclass(frozen=True)
class TrainDraws:
    """The random choices of one training batch: crop corners, mirrors, lighting shifts."""

    ys: torch.Tensor  # int64 (N,)
    xs: torch.Tensor  # int64 (N,)
    flips: torch.Tensor  # bool (N,)
    shift: torch.Tensor | None  # float32 (N, 3), or None without PCA lighting


def draw_train(
    n: int,
    stored_size: int,
    eigenvalues: torch.Tensor,
    eigenvectors: torch.Tensor,
    *,
    crop_size: int,
    generator: torch.Generator,
    augment: AugmentParams,
) -> TrainDraws:
    """§4.1's random choices for n images, as `augment` (the train.augment section) asks. The
    generator is always asked for crops, flips and lighting in that order, whatever `augment.flip`
    and `augment.pca_lighting` say, so switching one augmentation off leaves the others' draws
    unchanged. Without `augment.random_crop` every image gets the centre patch (the offsets are
    still drawn, for the same reason)."""
    ys, xs = random_crop_offsets(n, stored_size, crop_size, generator)
    if not augment.random_crop:
        ys = xs = torch.full_like(ys, (stored_size - crop_size) // 2)
    flips = random_flips(n, generator)
    shift = lighting_shift(n, eigenvalues, eigenvectors, augment.pca_std, generator, augment.pca_scale)
    return TrainDraws(ys, xs, flips if augment.flip else torch.zeros_like(flips),
                      shift if augment.pca_lighting else None)  # fmt: skip


def finish_train(
    crops: torch.Tensor,
    mean: torch.Tensor,
    draws: TrainDraws,
    divisor: float | torch.Tensor = 1.0,
    out: torch.Tensor | None = None,
    gather: bool = False,
) -> torch.Tensor:
    """uint8 crops (N, c, c, 3) cut by `crop_flip` with `draws` -> the float32 (N, 3, c, c) input.
    Runs where crops, mean and draws are (a GPU too); `gather` as in `subtract_mean_windows`."""
    x = subtract_mean_windows(crops, mean, draws.ys, draws.xs, draws.flips, draws.shift, out, gather)
    return _to_nchw(x, divisor)


def _views(stored_size: int, crop_size: int, ten: bool) -> list[tuple[int, int, bool]]:
    if ten:
        return ten_crop_offsets(stored_size, crop_size)
    if not 0 < crop_size <= stored_size:
        raise ValueError(f"crop_size={crop_size} must be in [1, stored_size={stored_size}]")
    mid = (stored_size - crop_size) // 2
    return [(mid, mid, False)]


def eval_crops(images: torch.Tensor, *, crop_size: int, ten: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 test views of images (N, S, S, 3): the centre (N, c, c, 3), or ten=True the ten
    views of TEN_CROP_VIEWS (N, 10, c, c, 3). Written into `out` if given."""
    n, c = images.shape[0], crop_size
    views = _views(images.shape[1], c, ten)
    if out is None:
        out = torch.empty((n, 10, c, c, 3) if ten else (n, c, c, 3), dtype=torch.uint8)
    for v, (y, x, mirrored) in enumerate(views):
        window = images[:, y : y + c, x : x + c]  # (N, c, c, 3)
        (out[:, v] if ten else out).copy_(window.flip(2) if mirrored else window)
    return out


def eval_mean_windows(mean: torch.Tensor, *, crop_size: int, ten: bool) -> torch.Tensor:
    """float32 windows of mean (S, S, 3) that `eval_crops`' views subtract: (c, c, 3) or (10, c, c, 3)."""
    c, mean = crop_size, mean.float()
    windows = [mean[y : y + c, x : x + c].flip(1) if m else mean[y : y + c, x : x + c]
               for y, x, m in _views(mean.shape[0], c, ten)]  # fmt: skip
    return torch.stack(windows) if ten else windows[0].contiguous()


def finish_eval(crops: torch.Tensor, mean_windows: torch.Tensor, divisor: float | torch.Tensor = 1.0,
                out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """uint8 views from `eval_crops` -> float32 (N, 3, c, c) or (N, 10, 3, c, c), mean windows subtracted."""
    if out is None:
        out = torch.empty(crops.shape, dtype=torch.float32, device=crops.device)
    # copy_ then sub_: a mixed uint8 - float32 op takes a slow, unvectorised path.
    out.copy_(crops).sub_(mean_windows)
    return _to_nchw(out, divisor)


def ten_crop_offsets(stored_size: int, crop_size: int) -> list[tuple[int, int, bool]]:
    """The ten (y, x, mirrored) views in TEN_CROP_VIEWS order."""
    if not 0 < crop_size <= stored_size:
        raise ValueError(f"crop_size={crop_size} must be in [1, stored_size={stored_size}]")
    far, mid = stored_size - crop_size, (stored_size - crop_size) // 2
    five = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    return [(y, x, False) for y, x in five] + [(y, x, True) for y, x in five]
