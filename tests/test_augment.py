"""Augmentations: determinism under a seed, exact geometry, mean windows, PCA lighting statistics."""

import pytest
import torch
from augment_ref import center_crop, ten_crop, train_augment

from alexnet.config.sections import AugmentParams
from alexnet.loading.augment import (
    TEN_CROP_VIEWS,
    crop_flip,
    lighting_shift,
    random_crop_offsets,
    subtract_mean_windows,
    ten_crop_offsets,
)

S, C = 12, 8  # stored and crop size: small, so positions are easy to check by hand
EIGENVALUES = torch.tensor([9000.0, 800.0, 200.0])  # pixel^2, like real RGB covariances
EIGENVECTORS = torch.linalg.qr(torch.tensor([[1.0, 0.5, 0.2], [1.0, -0.3, 0.7], [1.0, 0.1, -0.9]]))[0]


def coded_images(n: int) -> torch.Tensor:
    """uint8 (n, S, S, 3) where every pixel says where it is: R = row, G = column, B = image."""
    img = torch.zeros(n, S, S, 3, dtype=torch.uint8)
    img[..., 0] = torch.arange(S)[None, :, None]
    img[..., 1] = torch.arange(S)[None, None, :]
    img[..., 2] = torch.arange(n)[:, None, None]
    return img


def zero_mean() -> torch.Tensor:
    return torch.zeros(S, S, 3)


def augment(images, seed, crop_size=C, divisor=1.0, **options):
    """train_augment with the paper's augmentations, as changed by `options` (AugmentParams' keys)."""
    return train_augment(images, zero_mean(), EIGENVALUES, EIGENVECTORS, crop_size=crop_size,
                         generator=torch.Generator().manual_seed(seed), augment=AugmentParams(**options),
                         divisor=divisor)  # fmt: skip


def test_same_seed_same_output_and_different_seed_differs():
    images = torch.randint(0, 256, (16, S, S, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    a, b, c = augment(images, 7), augment(images, 7), augment(images, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_output_layout_units_and_memory_format():
    out = augment(coded_images(4), 0, pca_lighting=False, flip=False)
    assert out.shape == (4, 3, C, C) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    # No scaling by default (the paper's 0..255 units); crop of image 3 keeps its B channel = 3.
    assert torch.all(out[3, 2] == 3.0)
    scaled = augment(coded_images(4), 0, pca_lighting=False, flip=False, divisor=255.0)
    assert torch.allclose(scaled * 255.0, out)


def test_random_crops_cover_every_position_and_stay_inside():
    ys, xs = random_crop_offsets(4000, S, C, torch.Generator().manual_seed(0))
    assert set(ys.tolist()) == set(range(S - C + 1)) == set(xs.tolist())
    out = augment(coded_images(64), 3, pca_lighting=False, flip=False)
    rows, cols = out[:, 0], out[:, 1]  # (N, C, C): R = source row, G = source column
    # each crop is a contiguous C x C window of the source image
    assert torch.all(rows[:, :, 1:] == rows[:, :, :1]) and torch.all(cols[:, 1:, :] == cols[:, :1, :])
    assert torch.all(rows[:, 1:, 0] - rows[:, :-1, 0] == 1) and torch.all(cols[:, 0, 1:] - cols[:, 0, :-1] == 1)
    assert rows.min() >= 0 and rows.max() <= S - 1 and cols.min() >= 0 and cols.max() <= S - 1


def test_flip_really_mirrors_about_half_the_images():
    images = coded_images(400)
    plain = augment(images, 5, pca_lighting=False, flip=False)
    flipped = augment(images, 5, pca_lighting=False, flip=True)  # same crops: draws do not depend on flags
    mirrored = torch.tensor([not torch.equal(p, f) for p, f in zip(plain, flipped, strict=True)])
    assert torch.equal(flipped[mirrored], plain[mirrored].flip(3))
    assert torch.equal(flipped[~mirrored], plain[~mirrored])
    assert 150 < int(mirrored.sum()) < 250
    # at chosen positions: image 0 cropped at (1, 2) and mirrored, image 1 at (4, 0) as is
    two = images[:2]
    ys, xs, flips = torch.tensor([1, 4]), torch.tensor([2, 0]), torch.tensor([True, False])
    crops = subtract_mean_windows(crop_flip(two, ys, xs, flips, C), zero_mean(), ys, xs, flips)
    assert torch.equal(crops[0], two[0, 1 : 1 + C, 2 : 2 + C].flip(1).float())
    assert torch.equal(crops[1], two[1, 4:, 0:C].float())


def test_mean_subtraction_uses_the_same_mirrored_window():
    # If image == mean, every crop (mirrored or not) must come out exactly zero,
    # which only holds when the mean window matches the crop window and its mirroring.
    images = torch.randint(0, 256, (200, S, S, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    images[:] = images[0]
    mean = images[0].float()
    out = train_augment(images, mean, EIGENVALUES, EIGENVECTORS, crop_size=C, augment=AugmentParams(pca_lighting=False),
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(center_crop(images[:3], mean, crop_size=C)) == 0
    assert torch.count_nonzero(ten_crop(images[:3], mean, crop_size=C)) == 0


def test_pca_lighting_statistics():
    # Per image, the added colour must be the same at every pixel and, over many images,
    # have mean 0 and covariance P diag(std^2 w^2) P^T (w = l / 255 for the default scale).
    n, std = 20000, 0.1
    for scale, weights in [("unit_range", EIGENVALUES / 255), ("sqrt", EIGENVALUES.sqrt()),
                           ("pixel_range", EIGENVALUES)]:  # fmt: skip
        shift = lighting_shift(n, EIGENVALUES, EIGENVECTORS, std, torch.Generator().manual_seed(0), scale).double()
        expected = EIGENVECTORS.double() @ torch.diag((std * weights.double()) ** 2) @ EIGENVECTORS.double().T
        sd = expected.diagonal().sqrt()
        # mean within 4 standard errors; covariance within 5 % of the largest variance
        assert torch.all(shift.mean(0).abs() < 4 * sd / n**0.5), scale
        assert torch.allclose(shift.T.cov(), expected, atol=0.05 * expected.diagonal().max().item()), scale
    images = torch.full((2000, S, S, 3), 128, dtype=torch.uint8)
    out = augment(images, 1, flip=False)
    added = out - 128.0  # (N, 3, C, C)
    assert torch.allclose(added, added[:, :, :1, :1].expand_as(added))  # one colour per image
    per_image = added[:, :, 0, 0].double()
    expected = EIGENVECTORS.double() @ torch.diag((0.1 * EIGENVALUES.double() / 255) ** 2) @ EIGENVECTORS.double().T
    assert torch.allclose(per_image.T.cov(), expected, atol=0.1 * expected.diagonal().max().item())
    assert torch.equal(augment(images, 1, flip=False, pca_std=0.0), torch.full_like(out, 128.0))


def test_center_crop_and_ten_crop_positions():
    images = coded_images(2)
    far, mid = S - C, (S - C) // 2
    assert ten_crop_offsets(S, C)[:5] == [(0, 0, False), (0, far, False), (far, 0, False), (far, far, False),
                                          (mid, mid, False)]  # fmt: skip
    assert len(TEN_CROP_VIEWS) == 10
    views = ten_crop(images, zero_mean(), crop_size=C)
    assert views.shape == (2, 10, 3, C, C)
    assert views.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    corners = {"top_left": (0, 0), "top_right": (0, far), "bottom_left": (far, 0), "bottom_right": (far, far),
               "center": (mid, mid)}  # fmt: skip
    for v, name in enumerate(TEN_CROP_VIEWS[:5]):
        y, x = corners[name]
        want = images[:, y : y + C, x : x + C].float().permute(0, 3, 1, 2)
        assert torch.equal(views[:, v], want), name
        assert torch.equal(views[:, v + 5], want.flip(3)), TEN_CROP_VIEWS[v + 5]
    assert torch.equal(center_crop(images, zero_mean(), crop_size=C), views[:, 4])


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        augment(coded_images(2).float(), 0)
    with pytest.raises(ValueError, match="crop_size"):
        augment(coded_images(2), 0, crop_size=S + 1)
    with pytest.raises(ValueError, match="unknown PCA lighting scale 'linear'"):
        lighting_shift(2, EIGENVALUES, EIGENVECTORS, 0.1, torch.Generator(), "linear")
