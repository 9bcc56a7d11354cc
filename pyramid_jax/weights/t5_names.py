"""umT5 encoder weights: transformers `UMT5EncoderModel` names (canonical) and the upstream
Wan `models_t5_umt5-xxl-enc-bf16.pth` names mapped onto them; Linear weights -> [in, out]."""

from __future__ import annotations

import re

import numpy as np

from pyramid_jax.models.umt5 import UMT5Config
from pyramid_jax.weights.errors import ConversionError, check_state_dict

OTHER_LAYOUT = "transformers"  # the non-upstream layout these names read

_UPSTREAM = [
    (r"^token_embedding\.weight$", "shared.weight"),
    (r"^norm\.weight$", "encoder.final_layer_norm.weight"),
    (r"^blocks\.(\d+)\.norm1\.weight$", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.weight$", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$",
     r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"^blocks\.(\d+)\.norm2\.weight$", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc1\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc2\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
]


def is_upstream(keys) -> bool:
    return "token_embedding.weight" in keys


def upstream_rename(sd: dict) -> dict:
    out = {}
    for key, val in sd.items():
        new = key
        for pat, rep in _UPSTREAM:
            new, n = re.subn(pat, rep, key)
            if n:
                break
        out[new] = val
    return out


def infer_config(sd: dict, dtype: str = "float32") -> UMT5Config:
    if "shared.weight" not in sd:
        raise ConversionError("missing keys: shared.weight (is it a umT5 encoder?)")
    vocab, d = sd["shared.weight"].shape
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    a = "encoder.block.0.layer.0.SelfAttention."
    for k in (a + "relative_attention_bias.weight", a + "q.weight", "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"):
        if k not in sd:
            raise ConversionError(f"missing keys: {k}")
    buckets, heads = sd[a + "relative_attention_bias.weight"].shape
    return UMT5Config(vocab_size=int(vocab), d_model=int(d), d_kv=int(sd[a + "q.weight"].shape[0] // heads),
                      num_heads=int(heads), d_ff=int(sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]),
                      num_layers=len(layers), num_buckets=int(buckets), dtype=dtype)


def expected_shapes(cfg: UMT5Config) -> dict:
    inner = cfg.num_heads * cfg.d_kv
    out = {"shared.weight": (cfg.vocab_size, cfg.d_model), "encoder.final_layer_norm.weight": (cfg.d_model,)}
    for i in range(cfg.num_layers):
        a = f"encoder.block.{i}.layer.0."
        out[a + "layer_norm.weight"] = (cfg.d_model,)
        for w in "qkv":
            out[a + f"SelfAttention.{w}.weight"] = (inner, cfg.d_model)
        out[a + "SelfAttention.o.weight"] = (cfg.d_model, inner)
        out[a + "SelfAttention.relative_attention_bias.weight"] = (cfg.num_buckets, cfg.num_heads)
        f = f"encoder.block.{i}.layer.1."
        out[f + "layer_norm.weight"] = (cfg.d_model,)
        out[f + "DenseReluDense.wi_0.weight"] = (cfg.d_ff, cfg.d_model)
        out[f + "DenseReluDense.wi_1.weight"] = (cfg.d_ff, cfg.d_model)
        out[f + "DenseReluDense.wo.weight"] = (cfg.d_model, cfg.d_ff)
    return out


def params(sd: dict, cfg: UMT5Config) -> dict:
    sd = {k: v for k, v in sd.items() if k != "encoder.embed_tokens.weight"}  # tied copy of shared
    check_state_dict(sd, expected_shapes(cfg))
    keep_layout = ("shared.weight", "relative_attention_bias.weight")
    return {k: (np.asarray(v) if v.ndim == 1 or k.endswith(keep_layout) else np.asarray(v).T.copy())
            for k, v in sd.items()}


def random_t5_params(cfg: UMT5Config, seed: int = 0) -> dict:
    """Random encoder params of a config (the demo's frozen tiny text encoder, tests)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for k, shape in expected_shapes(cfg).items():
        if k.endswith("layer_norm.weight"):
            sd[k] = np.ones(shape, np.float32)
        elif k.endswith(("shared.weight", "relative_attention_bias.weight")):
            sd[k] = rng.standard_normal(shape).astype(np.float32)
        else:
            sd[k] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    return params(sd, cfg)
