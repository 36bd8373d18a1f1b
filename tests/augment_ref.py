"""Whole-batch compositions of alexnet.loading.augment's steps, as one call each: the tests' reference.

The loader runs the same steps split across processes (alexnet/loading/batches.py); these run them in
one go, so a test can compare a loader's batch with what the steps give on the same images.
"""

from __future__ import annotations

import torch

from alexnet.config.sections import AugmentParams
from alexnet.loading.augment import crop_flip, draw_train, eval_crops, eval_mean_windows, finish_eval, finish_train


def train_augment(
    images: torch.Tensor,
    mean: torch.Tensor,
    eigenvalues: torch.Tensor,
    eigenvectors: torch.Tensor,
    *,
    crop_size: int,
    generator: torch.Generator,
    augment: AugmentParams = AugmentParams(),  # noqa: B008 (frozen)
    divisor: float | torch.Tensor = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """§4.1 training input: random crop, random mirror, PCA lighting, minus the mean window.

    images uint8 (N, S, S, 3) -> float32 (N, 3, c, c), channels_last memory: `draw_train`, then
    `crop_flip` (uint8), then `finish_train` (float). The loader runs the first two in its
    workers and the last in the main process, so a quarter of the bytes cross processes.
    `augment` (the train.augment section) says which augmentations run.
    `divisor` (a float or a (3,) per-channel tensor) divides the result; 1.0 is the paper.
    `out`: an optional float32 (N, c, c, 3) buffer to write into (the result is a view of it).
    """
    _check_images(images, mean)
    draws = draw_train(images.shape[0], images.shape[1], eigenvalues, eigenvectors, crop_size=crop_size,
                       generator=generator, augment=augment)  # fmt: skip
    return finish_train(crop_flip(images, draws.ys, draws.xs, draws.flips, crop_size), mean, draws, divisor, out)


def center_crop(
    images: torch.Tensor,
    mean: torch.Tensor,
    *,
    crop_size: int,
    divisor: float | torch.Tensor = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Test input: the central c x c patch minus the same window of the mean, float32 (N, 3, c, c).

    `out`: an optional float32 (N, c, c, 3) buffer to write into (the result is a view of it).
    """
    _check_images(images, mean)
    crops = eval_crops(images, crop_size=crop_size, ten=False)
    return finish_eval(crops, eval_mean_windows(mean, crop_size=crop_size, ten=False), divisor, out)


def ten_crop(
    images: torch.Tensor,
    mean: torch.Tensor,
    *,
    crop_size: int,
    divisor: float | torch.Tensor = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """§4.1 test views: float32 (N, 10, 3, c, c) in TEN_CROP_VIEWS order, mean window subtracted.

    `.flatten(0, 1)` gives (N * 10, 3, c, c) as a view, image-major (image i's views are rows
    10 i .. 10 i + 9), ready for one forward pass; average the softmax over the 10 afterwards.
    `out`: an optional float32 (N, 10, c, c, 3) buffer to write into (the result is a view of it).
    """
    _check_images(images, mean)
    crops = eval_crops(images, crop_size=crop_size, ten=True)
    return finish_eval(crops, eval_mean_windows(mean, crop_size=crop_size, ten=True), divisor, out)


def _check_images(images: torch.Tensor, mean: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be uint8 (N, S, S, 3), got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square, got {tuple(images.shape[1:3])}")
    if tuple(mean.shape) != tuple(images.shape[1:]):
        raise ValueError(f"mean must be (S, S, 3) = {tuple(images.shape[1:])}, got {tuple(mean.shape)}")
