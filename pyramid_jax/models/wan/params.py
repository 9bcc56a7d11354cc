"""Name maps for Wan DiT weights: diffusers -> upstream Wan names -> CausalWan params.

The upstream Wan / Self Forcing names (docs/conversion.md) are the canonical key set: a
diffusers state dict is renamed into them first, then checked against the keys and
shapes the inferred config expects, then laid out as the model's nested param dict.
"""

from __future__ import annotations

import re

import numpy as np
from flax import nnx

from pyramid_jax.models.wan.modeling import HEADS_BY_DIM, WanConfig, abstract_model
from pyramid_jax.models.table import ConversionError
from pyramid_jax.models.table import Name, params_from, swap_last


# (diffusers pattern, upstream replacement); applied to whole keys, first match wins.
_DIFFUSERS_RENAMES = [
    (r"condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.to_out\.0\.", ".self_attn.o."),
    (r"\.attn2\.to_out\.0\.", ".cross_attn.o."),
    (r"\.attn1\.to_([qkv])\.", r".self_attn.\1."),
    (r"\.attn2\.to_([qkv])\.", r".cross_attn.\1."),
    (r"\.attn1\.norm_([qk])\.", r".self_attn.norm_\1."),
    (r"\.attn2\.norm_([qk])\.", r".cross_attn.norm_\1."),
    (r"\.norm2\.", ".norm3."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
]


def is_diffusers_layout(keys) -> bool:
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys)


def diffusers_to_upstream(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, val in sd.items():
        new = key
        for pat, rep in _DIFFUSERS_RENAMES:
            new, n = re.subn(pat, rep, key)
            if n:
                break
        out[new] = val
    return out


def _shape(sd, key):
    if key not in sd:
        raise ConversionError(f"cannot infer the model shape: missing key {key}")
    return tuple(sd[key].shape)


def infer_config(sd: dict[str, np.ndarray], num_heads: int | None = None, **overrides) -> WanConfig:
    """Infer WanConfig from upstream-named weight shapes (heads from the flag or presets)."""
    d, c_in, *patch = _shape(sd, "patch_embedding.weight")
    if len(patch) != 3:
        raise ConversionError(f"patch_embedding.weight should be 5-D, got {[d, c_in, *patch]}")
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not layers:
        raise ConversionError("no transformer blocks (blocks.N.*) in the checkpoint")
    if layers != list(range(len(layers))):
        raise ConversionError(f"block indices are not contiguous: {layers}")
    if num_heads is None:
        if d not in HEADS_BY_DIM:
            raise ConversionError(
                f"cannot infer the head count for dim {d}: pass --num-heads "
                f"(known presets: {', '.join(f'dim {k} -> {v} heads' for k, v in HEADS_BY_DIM.items())})")
        num_heads = HEADS_BY_DIM[d]
    out_total = _shape(sd, "head.head.weight")[0]
    try:
        cfg = WanConfig(
            dim=d,
            ffn_dim=_shape(sd, "blocks.0.ffn.0.weight")[0],
            num_heads=num_heads,
            num_layers=len(layers),
            in_channels=c_in,
            out_channels=out_total // int(np.prod(patch)),
            patch_size=tuple(patch),
            text_dim=_shape(sd, "text_embedding.0.weight")[1],
            freq_dim=_shape(sd, "time_embedding.0.weight")[1],
            qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
            cross_attn_norm="blocks.0.norm3.weight" in sd,
            **overrides,
        )
    except ValueError as e:
        raise ConversionError(str(e)) from None
    return cfg


def names(cfg: WanConfig) -> list[Name]:
    """The DiT's name table: upstream key -> CausalWan parameter path (blocks stacked by layer)."""
    d = cfg.dim
    c, (_, ph, pw) = cfg.in_channels, cfg.patch_size
    patch_in = lambda w: w.reshape(w.shape[0], -1).swapaxes(0, 1)  # Conv3d [D, C, 1, p, q] -> [(c, p, q), D]
    patch_out = lambda k: k.swapaxes(0, 1).reshape(k.shape[1], c, 1, ph, pw)

    def linear(key, *path):
        return [Name(f"{key}.weight", path + ("kernel",), swap_last, swap_last), Name(f"{key}.bias", path + ("bias",))]

    def modulation(key, *path, rows):
        return Name(key, path, lambda a: a.reshape(rows, d), lambda a: a.reshape(1, rows, d))

    table = [Name("patch_embedding.weight", ("patch_embedding", "kernel"), patch_in, patch_out),
             Name("patch_embedding.bias", ("patch_embedding", "bias")),
             *linear("text_embedding.0", "text_embedding", "fc1"), *linear("text_embedding.2", "text_embedding", "fc2"),
             *linear("time_embedding.0", "time_embedding", "fc1"), *linear("time_embedding.2", "time_embedding", "fc2"),
             *linear("time_projection.1", "time_projection"),
             modulation("head.modulation", "head", "modulation", rows=2), *linear("head.head", "head", "proj"),
             modulation("blocks.{i}.modulation", "blocks", "modulation", rows=6),
             *linear("blocks.{i}.ffn.0", "blocks", "ffn", "fc1"), *linear("blocks.{i}.ffn.2", "blocks", "ffn", "fc2")]
    for a in ("self_attn", "cross_attn"):
        for w in "qkvo":
            table += linear(f"blocks.{{i}}.{a}.{w}", "blocks", a, w)
        for nk in ("norm_q", "norm_k"):  # absent without qk_norm: a weight of ones
            table.append(Name(f"blocks.{{i}}.{a}.{nk}.weight" if cfg.qk_norm else None, ("blocks", a, nk),
                              fill=lambda shape: np.ones(shape, np.float32)))
    table.append(Name("blocks.{i}.norm3.weight" if cfg.cross_attn_norm else None, ("blocks", "norm3_scale"),
                      fill=lambda shape: np.ones(shape, np.float32)))
    table.append(Name("blocks.{i}.norm3.bias" if cfg.cross_attn_norm else None, ("blocks", "norm3_bias"),
                      fill=lambda shape: np.zeros(shape, np.float32)))
    return table


def abstract_params(cfg: WanConfig) -> dict:
    """The DiT's parameter tree as shapes (nnx.eval_shape: nothing is allocated)."""
    return nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))


def params(sd: dict[str, np.ndarray], cfg: WanConfig) -> dict:
    """Upstream-named weights -> nested dict matching `nnx.state(CausalWan)` (every key and
    shape checked)."""
    return params_from(sd, names(cfg), abstract_params(cfg), cfg.num_layers)


def canonical(sd: dict) -> tuple[dict, str]:
    """(the state dict in upstream names, the layout it came in)."""
    return (diffusers_to_upstream(sd), "diffusers") if is_diffusers_layout(sd) else (sd, "upstream")


def describe(cfg: WanConfig) -> str:
    return f"dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads, ffn {cfg.ffn_dim}"
