"""The §2 patch equals, byte for byte, a plain PIL reference and torchvision's Resize + CenterCrop."""

import numpy as np
import pytest
from PIL import Image

from alexnet.data.imageops import central_square_patch, load_patch, resize_center_crop

S = 64


def rgb8(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16"):  # PIL clips 16-bit at 255; the stage scales to 8 bits
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8), "L")
    return img.convert("RGB")


def reference(img: Image.Image, size: int) -> np.ndarray:
    """The definition: full decode, RGB, shorter side -> size with BILINEAR, centre crop."""
    rgb = rgb8(img)
    w, h = rgb.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    resized = rgb.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Gradients plus noise: every resampling difference shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8), "RGB")


CASES = {
    "tall": lambda: photo(97, 203),
    "wide": lambda: photo(301, 120, 1),
    "very wide": lambda: photo(500, 70, 2),
    "tiny (upscaled)": lambda: photo(20, 33, 3),
    "exact size": lambda: photo(S, S, 4),
    "short side exact": lambda: photo(S, 150, 5),
    "grayscale": lambda: photo(150, 111, 6).convert("L"),
    "cmyk": lambda: photo(120, 180, 7).convert("CMYK"),
    "palette": lambda: photo(140, 90, 8).convert("P", palette=Image.ADAPTIVE, colors=50),
    "rgba": lambda: photo(90, 90, 9).convert("RGBA"),
    "1-bit": lambda: photo(130, 100, 10).convert("1"),
    "16-bit": lambda: Image.fromarray(np.asarray(photo(110, 80, 11).convert("L")).astype(np.uint16) * 257),
}


@pytest.mark.parametrize("case", ["tall", "wide", "very wide", "tiny (upscaled)", "grayscale"])
def test_patch_equals_torchvision_resize_center_crop(case):
    from torchvision import transforms

    img = CASES[case]()
    tv = transforms.Compose([transforms.Resize(S), transforms.CenterCrop(S)])
    np.testing.assert_array_equal(np.asarray(resize_center_crop(img, S)), np.asarray(tv(img.convert("RGB"))))


def central_square_reference(img: Image.Image, size: int) -> np.ndarray:
    """preprocess.resize=central_square, directly with PIL: the central square, resampled to size x size."""
    rgb = rgb8(img)
    w, h = rgb.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(rgb.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None))


@pytest.mark.parametrize("patch,expected", [(resize_center_crop, reference),
                                            (central_square_patch, central_square_reference)],
                         ids=["torchvision", "central_square"])
@pytest.mark.parametrize("case", CASES)
def test_patch_equals_the_reference_exactly(case, patch, expected):
    img = CASES[case]()
    out = np.asarray(patch(img, S))
    assert out.shape == (S, S, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected(img, S))


def test_both_resizes_agree_on_square_images_and_differ_on_others():
    square, wide = photo(150, 150, 13), CASES["wide"]()
    np.testing.assert_array_equal(np.asarray(central_square_patch(square, S)),
                                  np.asarray(resize_center_crop(square, S)))
    a, b = np.asarray(central_square_patch(wide, S), int), np.asarray(resize_center_crop(wide, S), int)
    assert (a != b).any()
    # The same scene: torchvision's integer crop offset moves the patch by under a pixel.
    assert np.abs(a - b).mean() < 25, np.abs(a - b).mean()


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGB")])
def test_files_decode_in_full(tmp_path, fmt, mode):
    # A file (even a PNG named .JPEG) gives the reference of its full decode: no JPEG draft.
    path = tmp_path / "x.JPEG"
    photo(400, 300, 12).convert(mode).save(path, fmt)
    with Image.open(path) as img:
        expected = reference(img, S)
    np.testing.assert_array_equal(np.asarray(load_patch(str(path), S)), expected)
