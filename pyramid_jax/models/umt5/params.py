"""umT5 encoder weights: transformers `UMT5EncoderModel` names (canonical) and the upstream
Wan `models_t5_umt5-xxl-enc-bf16.pth` names mapped onto them; Linear weights -> [in, out]."""

from __future__ import annotations

import re

import numpy as np
from flax import nnx

from pyramid_jax.models.umt5.modeling import UMT5Config, UMT5Encoder, param_shapes
from pyramid_jax.models.table import ConversionError
from pyramid_jax.models.table import Name, checkpoint_shapes, params_from, swap_last


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


def _layout(key: str) -> tuple:
    """(to_param, to_ckpt): Linear weights transpose; embeddings, biases and norms keep theirs."""
    keep = key.endswith(("shared.weight", "relative_attention_bias.weight", "layer_norm.weight"))
    return (lambda a: a, lambda a: a) if keep else (swap_last, swap_last)


def names(cfg: UMT5Config) -> list[Name]:
    """The encoder's name table: transformers key -> its parameter (UMT5Encoder.weights[key])."""
    return [Name(k, ("weights", k), *_layout(k)) for k in param_shapes(cfg)]


def abstract_params(cfg: UMT5Config) -> dict:
    return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: UMT5Encoder(cfg)), nnx.Param))


def params(sd: dict, cfg: UMT5Config) -> dict:
    """Check names and shapes against the encoder, then lay the weights out: the flat
    {transformers name: array} dict a t5 checkpoint holds."""
    sd = {k: v for k, v in sd.items() if k != "encoder.embed_tokens.weight"}  # tied copy of shared
    return params_from(sd, names(cfg), abstract_params(cfg))["weights"]


def random_t5_params(cfg: UMT5Config, seed: int = 0) -> dict:
    """Random encoder params of a config (the demo's frozen tiny text encoder, tests)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for k, shape in checkpoint_shapes(names(cfg), abstract_params(cfg)).items():
        if k.endswith("layer_norm.weight"):
            sd[k] = np.ones(shape, np.float32)
        elif k.endswith(("shared.weight", "relative_attention_bias.weight")):
            sd[k] = rng.standard_normal(shape).astype(np.float32)
        else:
            sd[k] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    return params(sd, cfg)


def canonical(sd: dict) -> tuple[dict, str]:
    """(the state dict in transformers names, the layout it came in)."""
    return (upstream_rename(sd), "upstream") if is_upstream(sd) else (sd, "transformers")


def describe(cfg) -> str:
    return f"d_model {cfg.d_model}, {cfg.num_layers} layers, {cfg.num_heads} heads, vocab {cfg.vocab_size}"
