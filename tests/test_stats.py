"""Streamed training-set stats equal numpy's on the whole data."""

import json

import numpy as np

from alexnet.config.sections import PreprocessParams
from alexnet.data.preprocess import preprocess
from alexnet.data.shards import ShardSet, load_stats
from alexnet.data.stats import PixelSums, finish, rgb_outer_sum


def numpy_stats(images: np.ndarray):
    pixels = images.reshape(-1, 3).astype(np.float64)
    cov = np.cov(pixels, rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    return images.astype(np.float64).mean(axis=0), cov, values[::-1], vectors[:, ::-1]


def test_partial_sums_equal_numpy_in_any_grouping():
    rng = np.random.default_rng(0)
    # Correlated channels, as in photos: distinct eigenvalues.
    base = rng.integers(0, 200, (37, 9, 9, 1))
    images = np.clip(base + rng.integers(0, 56, (37, 9, 9, 3)) * [1, 0, 2] // 2, 0, 255).astype(np.uint8)
    parts = [PixelSums.zeros(9) for _ in range(3)]
    for i, image in enumerate(images):
        parts[i % 3].add_image(image)
    mean, values, vectors = finish(parts[2] + parts[0] + parts[1])
    ref_mean, cov, ref_values, ref_vectors = numpy_stats(images)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(values, ref_values, rtol=1e-10)
    assert values[0] >= values[1] >= values[2]
    # Columns are eigenvectors (up to sign): cov v = lambda v.
    np.testing.assert_allclose(cov @ vectors, vectors * values, atol=1e-8 * values[0])
    np.testing.assert_allclose(np.abs(np.sum(vectors * ref_vectors, axis=0)), 1.0, rtol=1e-10)


def test_rgb_outer_sum_is_exact_at_the_overflow_edges():
    rng = np.random.default_rng(1)
    # 300 x 300 = 90,000 pixels: more than one uint32 chunk; all-255 is the largest possible sum.
    for image in (rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), np.full((300, 300, 3), 255, np.uint8),
                  rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), np.zeros((1, 1, 3), np.uint8)):
        x = image.reshape(-1, 3).astype(object)  # Python integers: no rounding, no overflow
        expected = np.array([[int((x[:, i] * x[:, j]).sum()) for j in range(3)] for i in range(3)])
        got = rgb_outer_sum(image)
        assert got.dtype == np.int64 and np.array_equal(got, expected)


def test_stage_stats_equal_numpy_over_the_shards(tiny_prepared, tmp_path):
    preprocess(tiny_prepared, tmp_path, PreprocessParams(stored_size=32, shard_size=3, workers=2), progress=False)
    shards = ShardSet(tmp_path, "train")
    images = shards.read(np.arange(len(shards)))
    mean, values, vectors = load_stats(tmp_path)
    ref_mean, cov, ref_values, _ = numpy_stats(images)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(values, ref_values, rtol=1e-10)
    np.testing.assert_allclose(cov @ vectors, vectors * values, atol=1e-8 * values[0])
    pca = json.loads((tmp_path / "pca.json").read_text())
    assert pca["pixels"] == len(images) * 32 * 32 and np.array_equal(pca["eigenvectors"], vectors)
