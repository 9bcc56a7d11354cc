"""Online head typing for Pyramid Forcing (`cache.head_map=online`): the limitation its paper
names (heads typed offline, once per model) lifted for one video.

The video's first `frames` latent frames are made with nothing evicted; the cache-writing pass
of the chunk that ends them records every head's profile (its last frame's mean logit against
each earlier frame, as calibration does), the project's classifier types the heads (the
samples of a batch vote), and the video goes on under the pyramid cache, whose stores are
re-written from the frames made so far. One host round trip, once per video.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.cache.pyramid import PyramidPolicy
from pyramid_jax.cache.window import WindowPolicy
from pyramid_jax.heads.calibrate import chunk_profile
from pyramid_jax.heads.classify import ClassifyConfig, classify_heads

ONLINE = "online"  # the cache.head_map value
TYPING_FRAMES = 36  # six periods of a Wave head (about 6 frames): enough for the periodicity test


@dataclasses.dataclass
class OnlineTyping:
    """The typing phase of one video (sampling.rollout's `typing`): `first` is the policy until
    chunk `chunk`, whose probe types the heads; calling it returns the pyramid policy."""

    spec: PoolSpec
    frames: int = TYPING_FRAMES
    classify: ClassifyConfig = ClassifyConfig()
    head_map: np.ndarray | None = None  # [L, H] once typed
    profiles: np.ndarray | None = None  # [B, L, H, frames - F] the profiles it was typed from

    def __post_init__(self):
        f = self.spec.frames_per_chunk
        if self.frames % f or self.frames < 2 * f:
            raise ValueError(f"online typing needs a multiple of {f} frames and at least two chunks, got {self.frames}")

    @property
    def first(self) -> WindowPolicy:
        """The typing phase's cache: every frame kept."""
        return WindowPolicy(self.spec, local_attn_size=-1, num_frames=self.frames)

    @property
    def chunk(self) -> int:
        """The chunk whose cache-writing pass types the heads (the last of the phase)."""
        return self.frames // self.spec.frames_per_chunk - 1

    def __call__(self, probe, cache, batch: int) -> PyramidPolicy:
        """probe [L, B', T, H, Dh] (the last frame's queries), cache: the state the chunk read;
        batch: the videos (B' holds an unconditional half under guidance). -> the pyramid policy."""
        logits = np.asarray(jax.jit(chunk_profile, static_argnums=2)(probe, cache, self.spec.tokens_per_frame))
        history = self.frames - self.spec.frames_per_chunk
        self.profiles = logits[:batch, ..., :history]  # window -1: slot t holds frame t
        self.head_map, _ = classify_heads(self.profiles, self.classify)
        return PyramidPolicy(self.spec, self.head_map)
