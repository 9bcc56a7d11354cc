"""The shapes videos as a TensorFlow Datasets builder: array_record files, read with
`tfds.data_source` (random access, no TensorFlow needed to build or to read).

A config fixes the frame size, the frames per clip and the clip counts; the train split holds
the clips `shapes.sample(seed, ...)` of seeds 0 .. train - 1, the test split those of TEST_SEED
onwards (each record keeps its seed; TFDS orders records by a hash of it), so a dataset is
reproducible from its config alone. Videos are stored zlib-compressed (flat shapes
compress ~50x).

    builder = ShapesVideos(config=shapes_config(64, 12, 20000), data_dir=DIR)
    builder.download_and_prepare()
    clips = tfds.data_source(f"shapes_videos/{builder.builder_config.name}", data_dir=DIR, split="train")
    clips[7]["video"]   # uint8 [12, 64, 64, 3]; clips[7]["caption"]: bytes

Importing this module registers the builder with TFDS (TFDS's own convention).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from pyramid_jax.data import shapes

TEST_SEED = 1_000_000_000  # the test split's first clip seed: far from any train seed


class ShapesConfig(tfds.core.BuilderConfig):
    """size: frame height and width (pixels); frames: frames per clip; train / test: clips."""

    def __init__(self, *, size: int, frames: int, train: int, test: int, **kw):
        super().__init__(**kw)
        self.size, self.frames, self.train, self.test = size, frames, train, test


def shapes_config(size: int, frames: int, train: int, test: int = 256) -> ShapesConfig:
    """The config of those sizes; its name says them (e.g. "64px_12f_20000")."""
    return ShapesConfig(name=f"{size}px_{frames}f_{train}", size=size, frames=frames, train=train, test=test,
                        description=f"{train} train / {test} test clips of {frames} frames at {size}x{size}")


class ShapesVideos(tfds.core.GeneratorBasedBuilder):
    """Procedural videos of bouncing shapes with their captions (pyramid_jax.data.shapes)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [shapes_config(64, 12, 20000)]

    def __init__(self, **kw):
        kw.setdefault("file_format", "array_record")
        super().__init__(**kw)

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=(c.frames, c.size, c.size, 3), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.ZLIB),
                "caption": tfds.features.Text(),
                "seed": tfds.features.Scalar(dtype=np.int64),
            }),
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        return {"train": self._generate_examples(0, c.train), "test": self._generate_examples(TEST_SEED, c.test)}

    def _generate_examples(self, first_seed: int, count: int):
        c = self.builder_config
        for seed in range(first_seed, first_seed + count):
            video, caption = shapes.sample(seed, c.frames, c.size, c.size)
            yield seed, {"video": video, "caption": caption, "seed": seed}


def prepare(data_dir: str, size: int, frames: int, train: int, test: int = 256) -> str:
    """Build the dataset in data_dir unless it is there (quietly: no progress bars); returns its TFDS name
    ("shapes_videos/<config>") for `tfds.data_source`."""
    tfds.disable_progress_bar()
    config = shapes_config(size, frames, train, test)
    if any(c.name == config.name and c.test == test for c in ShapesVideos.BUILDER_CONFIGS):
        config = config.name  # TFDS refuses a custom config named as a listed one
    builder = ShapesVideos(config=config, data_dir=data_dir)
    builder.download_and_prepare()
    return f"{builder.name}/{builder.builder_config.name}"


def data_source(data_dir: str, name: str, split: str = "train"):
    """Random access to a built split: source[i] -> {"video": uint8 [F, S, S, 3], "caption":
    bytes, "seed": int}."""
    return tfds.data_source(name, data_dir=data_dir, split=split)
