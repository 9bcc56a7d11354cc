"""The demo's training clips through TensorFlow Datasets: a tiny split built and read back."""

from __future__ import annotations

import numpy as np

from pyramid_jax.data import shapes
from pyramid_jax.data import shapes_tfds


def test_tiny_split_is_built_and_read_back(tmp_path):
    name = shapes_tfds.prepare(str(tmp_path), size=16, frames=3, train=5, test=2)
    assert name == "shapes_videos/16px_3f_5"
    train = shapes_tfds.data_source(str(tmp_path), name)
    test = shapes_tfds.data_source(str(tmp_path), name, split="test")
    assert (len(train), len(test)) == (5, 2)
    for i in (0, 4):  # random access (TFDS orders records by a hash of their key: the seed says which clip)
        got = train[i]
        video, caption = shapes.sample(int(got["seed"]), 3, 16, 16)
        assert got["video"].dtype == np.uint8 and got["video"].shape == (3, 16, 16, 3)
        np.testing.assert_array_equal(got["video"], video)
        assert got["caption"].decode() == caption
    assert sorted(int(train[i]["seed"]) for i in range(5)) == list(range(5))
    # the splits never share a clip
    assert sorted(int(test[i]["seed"]) for i in range(2)) == [shapes_tfds.TEST_SEED, shapes_tfds.TEST_SEED + 1]
    # a second prepare finds the dataset and does not rebuild it
    before = sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*.array_record*"))
    assert shapes_tfds.prepare(str(tmp_path), size=16, frames=3, train=5, test=2) == name
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*.array_record*")) == before
