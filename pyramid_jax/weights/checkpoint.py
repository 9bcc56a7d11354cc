"""Orbax checkpoints that carry their model config.

Layout of a checkpoint directory:
  config.json   {"kind": "dit", "format": 1, "model": {WanConfig fields}, "source": ...}
  params/       orbax StandardCheckpointer tree (the nnx Param state)
Writes go to a temporary sibling directory that is renamed when complete.

Every process reads a checkpoint on its own, onto its first local device: the hosts of a pod
each hold the whole model (they generate different prompts), so a read needs no cross-host
coordination and works with any number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from pyramid_jax.errors import first_line
from pyramid_jax.models.umt5.modeling import UMT5Config, UMT5Encoder
from pyramid_jax.models.taehv.modeling import TAEHV, TAEHVConfig
from pyramid_jax.models.vae.modeling import VAEConfig, WanVAEDecoder
from pyramid_jax.models.vae.encoder import WanVAEEncoder
from pyramid_jax.models.wan.modeling import CausalWan, WanConfig, abstract_model

log = logging.getLogger(__name__)

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message says why."""


def save_params(dst: str, params: dict, cfg, source: str = "", kind: str = "dit", extra: dict | None = None) -> None:
    """Write `params` (nested dict of arrays matching the model state) and cfg to dst; extra:
    more metadata for config.json (e.g. how the weights were trained).

    Fails if dst exists. Nothing is left at dst unless the whole write succeeded.
    """
    dst = os.path.abspath(dst)
    if os.path.exists(dst):
        raise CheckpointError(f"{dst} already exists; remove it or choose another destination")
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".tmp-", dir=parent)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, "params"), jax.tree.map(jnp.asarray, params))
            ckptr.wait_until_finished()
        meta = {"kind": kind, "format": FORMAT, "model": dataclasses.asdict(cfg), "source": source, **(extra or {})}
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(meta, fh, indent=2)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model(dst: str, model: CausalWan, source: str = "", extra: dict | None = None) -> None:
    save_params(dst, nnx.to_pure_dict(nnx.state(model, nnx.Param)), model.cfg, source, extra=extra)


def restore_tree(path: str, target=None):
    """Read an orbax tree on this process alone, onto its first local device.

    target: a tree of arrays / ShapeDtypeStructs giving shapes and dtypes (default: the ones
    saved). Raises CheckpointError with the first line of what went wrong.
    """
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                               barrier_sync_key_prefix=f"pyramid_jax-read-{me}")
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
        with ocp.StandardCheckpointer(multiprocessing_options=alone) as ckptr:
            if target is None:
                target = ckptr.metadata(path).item_metadata
            target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here), target)
            return ckptr.restore(path, target)
    except Exception as e:
        raise CheckpointError(f"{os.path.dirname(path)}: cannot restore params ({first_line(e)})") from None


def read_config(path: str) -> tuple[dict, WanConfig]:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} not found (expected an orbax directory "
                              "written by tools/convert_checkpoint.py)")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{path}: no config.json; not a pyramid_jax checkpoint")
    try:
        with open(cfg_path) as fh:
            meta = json.load(fh)
        cfg = WanConfig.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable config ({e})") from None
    if meta.get("kind", "dit") != "dit":
        raise CheckpointError(f"{path} holds a {meta.get('kind')!r} model, not a DiT")
    return meta, cfg


def load_model(path: str, dtype: str | None = None, attention_backend: str = "reference") -> CausalWan:
    """Restore a CausalWan from `path`; dtype overrides the stored param dtype."""
    path = os.path.abspath(path)
    _, cfg = read_config(path)
    stored = abstract_model(cfg, attention_backend)
    graphdef, abstract_state = nnx.split(stored)
    params = restore_tree(os.path.join(path, "params"), nnx.to_pure_dict(abstract_state))
    nnx.replace_by_pure_dict(abstract_state, params)
    model = nnx.merge(graphdef, abstract_state)
    log.info("loaded DiT %s (%s, %d layers, dim %d)", path, cfg.dtype, cfg.num_layers, cfg.dim)
    if dtype is not None and dtype != cfg.dtype:
        model = cast_model(model, dtype)
    return model


def cast_model(model: CausalWan, dtype: str) -> CausalWan:
    """The same weights in another dtype (a new module; the old one is untouched)."""
    cfg = model.cfg.replace(dtype=dtype)
    graphdef, state = nnx.split(abstract_model(cfg, model.attention_backend))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def model_from_params(cfg: WanConfig, params: dict, attention_backend: str = "reference") -> CausalWan:
    """Build a CausalWan from a nested numpy dict (as produced by the name maps)."""
    graphdef, state = nnx.split(abstract_model(cfg, attention_backend))
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(np.asarray(a), cfg.dtype), params))
    return nnx.merge(graphdef, state)


def load_flat(path: str, kind: str, cfg_cls, dtype: str | None = None):
    """Restore (config, flat params) of a `vae`, `t5` or `taehv` checkpoint from convert_checkpoint.py."""
    path = os.path.abspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{kind} checkpoint {path!r} not found (expected a directory written by "
                              f"tools/convert_checkpoint.py --kind {kind})")
    try:
        with open(cfg_path) as fh:
            meta = json.load(fh)
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items()}
        cfg = cfg_cls(**fields)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable config ({e})") from None
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {meta.get('kind')!r} model, not {kind}")
    params = restore_tree(os.path.join(path, "params"))
    if dtype is not None:
        cfg = dataclasses.replace(cfg, dtype=dtype)
    params = jax.tree.map(lambda a: jnp.asarray(a, cfg.dtype), params)
    log.info("loaded %s from %s (%s)", kind, path, cfg.dtype)
    return cfg, params


def with_weights(module_cls, cfg, params: dict):
    """A WanVAEDecoder / UMT5Encoder of cfg holding `params` ({canonical name: array}),
    built abstractly first (nothing allocated twice)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: module_cls(cfg)))
    nnx.replace_by_pure_dict(state, {"weights": {k: jnp.asarray(v, cfg.dtype) for k, v in params.items()}})
    return nnx.merge(graphdef, state)


def _part(module_cls, cfg, params: dict, path: str):
    """The module_cls of cfg from the part of a flat VAE checkpoint that is its own."""
    from pyramid_jax.models.vae import modeling as vae_model
    from pyramid_jax.models.vae import encoder as vae_encoder

    shapes = (vae_model if module_cls is WanVAEDecoder else vae_encoder).param_shapes(cfg)
    missing = sorted(set(shapes) - set(params))
    if missing:
        what = "encoder" if module_cls is WanVAEEncoder else "decoder"
        raise CheckpointError(f"{path} holds no VAE {what} (converted before encoders were kept?): convert "
                              "Wan2.1_VAE.pth again with tools/convert_checkpoint.py --kind vae")
    return with_weights(module_cls, cfg, {k: params[k] for k in shapes})


def load_vae(path: str, dtype: str | None = None) -> WanVAEDecoder:
    """The decoder written by `convert_checkpoint.py --kind vae`."""
    cfg, params = load_flat(path, "vae", VAEConfig, dtype)
    return _part(WanVAEDecoder, cfg, params, path)


def load_vae_encoder(path: str, dtype: str | None = None) -> WanVAEEncoder:
    """The encoder of a `convert_checkpoint.py --kind vae` checkpoint (CheckpointError, one
    line, for checkpoints converted without one)."""
    cfg, params = load_flat(path, "vae", VAEConfig, dtype)
    return _part(WanVAEEncoder, cfg, params, path)


def load_t5(path: str, dtype: str | None = None) -> UMT5Encoder:
    """The encoder written by `convert_checkpoint.py --kind t5`."""
    return with_weights(UMT5Encoder, *load_flat(path, "t5", UMT5Config, dtype))


def load_taehv(path: str, dtype: str | None = None) -> TAEHV:
    """TAEHV (encoder and decoder) written by `convert_checkpoint.py --kind taehv`."""
    return with_weights(TAEHV, *load_flat(path, "taehv", TAEHVConfig, dtype))
