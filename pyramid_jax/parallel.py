"""Device meshes for generation: `data` splits the batch, `model` splits attention heads and
FFN columns (pyramid_jax.sharding says which array axis goes where; `rollout(..., mesh=)`
places the arrays and the compiler partitions the chunk step around the attention kernel).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from pyramid_jax.sharding import DATA, MODEL


class ParallelError(ValueError):
    """A mesh that does not fit the devices, the batch or the model."""


def make_mesh(data: int = 0, model: int = 1, devices=None) -> Mesh:
    """A (data, model) mesh over local devices; data=0 takes all devices left by `model`."""
    devices = list(jax.local_devices() if devices is None else devices)
    n = len(devices)
    if model < 1 or n % model:
        raise ParallelError(f"mesh.model={model} does not divide the {n} local devices")
    data = data or n // model
    if data * model > n:
        raise ParallelError(f"mesh {data}x{model} needs {data * model} devices, {n} are available")
    return Mesh(np.array(devices[: data * model]).reshape(data, model), (DATA, MODEL),
                axis_types=(AxisType.Auto, AxisType.Auto))


def batch_mesh(data: int, model: int, batch: int, cfg, devices=None) -> Mesh | None:
    """The mesh a batch of `batch` runs on (None: one device). data=0 takes as many of the
    devices left by `model` as divide the batch; an explicit `data` must divide it."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not data and model >= 1 and len(devices) % model == 0:
        data = math.gcd(batch, len(devices) // model)
    mesh = make_mesh(data, model, devices)
    check_fit(mesh, batch, cfg)
    return None if mesh.size == 1 else mesh


def check_fit(mesh: Mesh, batch: int, cfg) -> None:
    d, m = mesh.shape[DATA], mesh.shape[MODEL]
    if batch % d:
        raise ParallelError(f"batch {batch} is not divisible by mesh.data={d}")
    for name, size in (("heads", cfg.num_heads), ("ffn_dim", cfg.ffn_dim)):
        if size % m:
            raise ParallelError(f"{name} {size} is not divisible by mesh.model={m}")
