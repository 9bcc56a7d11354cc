"""Name maps for Wan DiT weights: diffusers -> upstream Wan names -> CausalWan params.

The upstream Wan / Self Forcing names (docs/conversion.md) are the canonical key set: a
diffusers state dict is renamed into them first, then checked against the keys and
shapes the inferred config expects, then laid out as the model's nested param dict.
"""

from __future__ import annotations

import re

import numpy as np

from pyramid_jax.models.wan import HEADS_BY_DIM, WanConfig
from pyramid_jax.weights.errors import ConversionError, check_state_dict


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


def expected_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    """Every upstream key a checkpoint of this config holds, with its shape."""
    d, f = cfg.dim, cfg.ffn_dim
    out = {
        "patch_embedding.weight": (d, cfg.in_channels, *cfg.patch_size),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.text_dim), "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d), "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim), "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
        "head.modulation": (1, 2, d),
        "head.head.weight": (cfg.out_channels * int(np.prod(cfg.patch_size)), d),
        "head.head.bias": (cfg.out_channels * int(np.prod(cfg.patch_size)),),
    }
    for n in range(cfg.num_layers):
        p = f"blocks.{n}."
        out[p + "modulation"] = (1, 6, d)
        for a in ("self_attn", "cross_attn"):
            for w in "qkvo":
                out[f"{p}{a}.{w}.weight"] = (d, d)
                out[f"{p}{a}.{w}.bias"] = (d,)
            if cfg.qk_norm:
                out[f"{p}{a}.norm_q.weight"] = (d,)
                out[f"{p}{a}.norm_k.weight"] = (d,)
        if cfg.cross_attn_norm:
            out[p + "norm3.weight"] = (d,)
            out[p + "norm3.bias"] = (d,)
        out[p + "ffn.0.weight"] = (f, d)
        out[p + "ffn.0.bias"] = (f,)
        out[p + "ffn.2.weight"] = (d, f)
        out[p + "ffn.2.bias"] = (d,)
    return out


def check_keys(sd: dict[str, np.ndarray], cfg: WanConfig) -> None:
    """Raise ConversionError naming every unknown, missing and mis-shaped key."""
    check_state_dict(sd, expected_shapes(cfg))


def _t(w):  # torch Linear [out, in] -> flax kernel [in, out]
    return np.ascontiguousarray(np.swapaxes(w, -1, -2))


def upstream_to_params(sd: dict[str, np.ndarray], cfg: WanConfig) -> dict:
    """Upstream-named weights -> nested dict matching `nnx.state(CausalWan)`."""
    check_keys(sd, cfg)
    L = cfg.num_layers

    def lin(prefix):
        return {"kernel": _t(sd[prefix + ".weight"]), "bias": sd[prefix + ".bias"]}

    def stack(fmt, fn=lambda a: a):
        return np.stack([fn(sd[fmt.format(n)]) for n in range(L)])

    def stacked_lin(fmt):
        return {"kernel": stack(fmt + ".weight", _t), "bias": stack(fmt + ".bias")}

    def attn(a):
        out = {w: stacked_lin(f"blocks.{{}}.{a}.{w}") for w in "qkvo"}
        for nk in ("norm_q", "norm_k"):
            key = f"blocks.{{}}.{a}.{nk}.weight"
            out[nk] = stack(key) if cfg.qk_norm else np.ones((L, cfg.dim), np.float32)
        return out

    d = cfg.dim
    pe = sd["patch_embedding.weight"]
    blocks = {
        "modulation": stack("blocks.{}.modulation", lambda a: a.reshape(6, d)),
        "self_attn": attn("self_attn"),
        "cross_attn": attn("cross_attn"),
        "ffn": {"fc1": stacked_lin("blocks.{}.ffn.0"), "fc2": stacked_lin("blocks.{}.ffn.2")},
    }
    if cfg.cross_attn_norm:
        blocks["norm3_scale"] = stack("blocks.{}.norm3.weight")
        blocks["norm3_bias"] = stack("blocks.{}.norm3.bias")
    else:
        blocks["norm3_scale"] = np.ones((L, d), np.float32)
        blocks["norm3_bias"] = np.zeros((L, d), np.float32)
    return {
        "patch_embedding": {"kernel": _t(pe.reshape(d, -1)), "bias": sd["patch_embedding.bias"]},
        "text_embedding": {"fc1": lin("text_embedding.0"), "fc2": lin("text_embedding.2")},
        "time_embedding": {"fc1": lin("time_embedding.0"), "fc2": lin("time_embedding.2")},
        "time_projection": lin("time_projection.1"),
        "blocks": blocks,
        "head": {"modulation": sd["head.modulation"].reshape(2, d), "proj": lin("head.head")},
    }
