"""Flow-matching schedule of Self Forcing (shifted sigmas, warped timesteps).

sigmas = shift * s / (1 + (shift - 1) * s) for s = linspace(1, 0, N + 1)[:-1], timesteps =
N * sigmas (float32, as upstream computes them). Sigma lookups use the nearest timestep.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class FlowSchedule:
    shift: float = 5.0
    num_train_timesteps: int = 1000

    @property
    def sigmas(self) -> np.ndarray:
        """[N] float32, descending from 1."""
        n = self.num_train_timesteps
        s = _torch_linspace_f32(1.0, 0.0, n + 1)[:-1]
        shift = np.float32(self.shift)
        return (shift * s / (np.float32(1) + (shift - np.float32(1)) * s)).astype(np.float32)

    @property
    def timesteps(self) -> np.ndarray:
        """[N] float32."""
        return (self.sigmas * np.float32(self.num_train_timesteps)).astype(np.float32)

    def warp(self, step_list) -> np.ndarray:
        """Map a denoising_step_list (e.g. [1000, 750, 500, 250]) onto schedule timesteps.

        t = cat(timesteps, [0])[N - step]. Returns float32 [len(step_list)].
        """
        table = np.concatenate([self.timesteps, np.zeros(1, np.float32)])
        idx = self.num_train_timesteps - np.asarray(step_list, np.int64)
        if (idx < 0).any() or (idx > self.num_train_timesteps).any():
            raise ValueError(f"denoising steps must lie in [0, {self.num_train_timesteps}], got {list(step_list)}")
        return table[idx].astype(np.float32)

    def sigma_at(self, t: jax.Array) -> jax.Array:
        """Sigma of the nearest schedule timestep to t (any shape, may be traced), float32."""
        ts = jnp.asarray(self.timesteps)
        idx = jnp.argmin(jnp.abs(ts - jnp.asarray(t, jnp.float32)[..., None]), axis=-1)
        return jnp.asarray(self.sigmas)[idx]

    def add_noise(self, x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
        """(1 - sigma) x0 + sigma eps. x0, eps [B, F, ...]; t [B, F]."""
        sigma = _expand(self.sigma_at(t), x0.ndim)
        out = (1 - sigma) * x0.astype(jnp.float32) + sigma * eps.astype(jnp.float32)
        return out.astype(x0.dtype)

    def flow_to_x0(self, x_t: jax.Array, flow: jax.Array, t: jax.Array) -> jax.Array:
        """x0 = x_t - sigma(t) * flow; upstream uses float64, float32 differs by < 1 ulp of x0."""
        sigma = _expand(self.sigma_at(t), x_t.ndim)
        return (x_t.astype(jnp.float32) - sigma * flow.astype(jnp.float32)).astype(x_t.dtype)


def _torch_linspace_f32(start, end, steps):
    """float32 linspace computed as torch does on CPU (fused start + i * step from both
    ends), so timesteps equal upstream's bit for bit."""
    step = np.float64(np.float32(end - start) / np.float32(steps - 1))
    i = np.arange(steps)
    return np.where(i < steps // 2, start + i * step, end - (steps - 1 - i) * step).astype(np.float32)


def _expand(a, ndim):
    return a.reshape(a.shape + (1,) * (ndim - a.ndim))
