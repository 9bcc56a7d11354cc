"""umT5 encoder (the text encoder of Wan2.1) and its sentencepiece tokenizer.

`UMT5Encoder` holds its parameters by their transformers `UMT5EncoderModel` names (Linear
weights stored [in, out]); the math is pure functions over that flat dict (`encode`). umT5 differs from T5 in one way that matters here: every layer has
its own relative position bias (32 buckets, max distance 128, bidirectional); there are no
biases, no attention scaling, RMS norms without mean, and a gated-GELU (tanh) FFN.
"""

from __future__ import annotations

import dataclasses
import html
import math
import re

import ftfy
import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
from pyramid_jax.models.named import NamedWeights


@dataclasses.dataclass(frozen=True)
class UMT5Config:
    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    num_heads: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    dtype: str = "float32"


def param_shapes(cfg: UMT5Config) -> dict[str, tuple[int, ...]]:
    """Every parameter of the encoder, by its transformers name, in our layout (Linear [in, out])."""
    inner = cfg.num_heads * cfg.d_kv
    out = {"shared.weight": (cfg.vocab_size, cfg.d_model), "encoder.final_layer_norm.weight": (cfg.d_model,)}
    for i in range(cfg.num_layers):
        a = f"encoder.block.{i}.layer.0."
        out[a + "layer_norm.weight"] = (cfg.d_model,)
        for w in "qkv":
            out[a + f"SelfAttention.{w}.weight"] = (cfg.d_model, inner)
        out[a + "SelfAttention.o.weight"] = (inner, cfg.d_model)
        out[a + "SelfAttention.relative_attention_bias.weight"] = (cfg.num_buckets, cfg.num_heads)
        f = f"encoder.block.{i}.layer.1."
        out[f + "layer_norm.weight"] = (cfg.d_model,)
        out[f + "DenseReluDense.wi_0.weight"] = (cfg.d_model, cfg.d_ff)
        out[f + "DenseReluDense.wi_1.weight"] = (cfg.d_model, cfg.d_ff)
        out[f + "DenseReluDense.wo.weight"] = (cfg.d_ff, cfg.d_model)
    return out


def param_axes(name: str, shape: tuple[int, ...]) -> tuple:
    """Logical axes of a parameter: attention heads and FFN columns split as the DiT's are, the
    embedding by vocabulary rows; norms replicated."""
    kind = name.rsplit(".", 2)[-2]
    return {"q": (None, "heads"), "k": (None, "heads"), "v": (None, "heads"), "o": ("heads", None),
            "relative_attention_bias": (None, "heads"), "wi_0": (None, "mlp"), "wi_1": (None, "mlp"),
            "wo": ("mlp", None), "shared": ("vocab", None)}.get(kind, (None,) * len(shape))


class UMT5Encoder(NamedWeights):
    """The umT5 encoder: prompts' token ids -> the DiT's context. Parameters by transformers
    name; they come from a checkpoint (weights.checkpoint.load_t5) or random_t5_params."""

    def __init__(self, cfg: UMT5Config):
        super().__init__(cfg, param_shapes(cfg), param_axes)

    def __call__(self, ids, mask):
        """ids, mask [B, L] -> context [B, L, d_model] (rows past each prompt zero)."""
        return encode_prompts(self.params(), self.cfg, ids, mask)


def _rms(x, w, eps):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w.astype(x.dtype) * y.astype(x.dtype)


def relative_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """[q_len, k_len] bidirectional T5 buckets of (key position - query position)."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    exact = half // 2
    with np.errstate(divide="ignore"):
        large = exact + (np.log(np.maximum(rel, 1).astype(np.float32) / exact)
                         / math.log(max_distance / exact) * (half - exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return out + np.where(rel < exact, rel, large)


def encode(p, cfg: UMT5Config, ids, mask):
    """ids, mask: [B, L] int -> hidden states [B, L, d_model] (rows past the mask unchanged)."""
    dt = jnp.dtype(cfg.dtype)
    x = p["shared.weight"].astype(dt)[ids]
    b, n = ids.shape
    buckets = relative_buckets(n, n, cfg.num_buckets, cfg.max_distance)
    neg = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
    for i in range(cfg.num_layers):
        pre = f"encoder.block.{i}.layer."
        h = _rms(x, p[pre + "0.layer_norm.weight"], cfg.eps)
        a = pre + "0.SelfAttention."
        heads = lambda t: t.reshape(b, n, cfg.num_heads, cfg.d_kv).transpose(0, 2, 1, 3)
        q, k, v = (heads(h @ p[a + w + ".weight"].astype(dt)) for w in "qkv")
        bias = p[a + "relative_attention_bias.weight"].astype(jnp.float32)[buckets].transpose(2, 0, 1)
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) + bias[None] + neg
        att = jax.nn.softmax(s, axis=-1).astype(dt)
        o = jnp.einsum("bhqk,bhkd->bhqd", att, v).transpose(0, 2, 1, 3).reshape(b, n, -1)
        x = x + o @ p[a + "o.weight"].astype(dt)
        h = _rms(x, p[pre + "1.layer_norm.weight"], cfg.eps)
        f = pre + "1.DenseReluDense."
        g = jax.nn.gelu(h @ p[f + "wi_0.weight"].astype(dt), approximate=True) * (h @ p[f + "wi_1.weight"].astype(dt))
        x = x + g @ p[f + "wo.weight"].astype(dt)
    return _rms(x, p["encoder.final_layer_norm.weight"], cfg.eps)


def encode_prompts(p, cfg: UMT5Config, ids, mask):
    """The DiT's context: encoder output with rows past each prompt's length set to zero."""
    h = encode(p, cfg, ids, mask)
    return h * (mask[..., None] > 0).astype(h.dtype)


# ---- tokenizer ---------------------------------------------------------------------
def clean_text(text: str) -> str:
    """The reference cleaning: ftfy fix, HTML unescape twice, collapse spaces."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class Tokenizer:
    """sentencepiece (`spiece.model` of the umT5 tokenizer folder): clean, encode, append
    </s>, truncate and pad to text_len. pad id 0, eos id 1 (the T5 convention)."""

    def __init__(self, path: str, text_len: int = 512):
        self.sp = spm.SentencePieceProcessor(model_file=path)
        self.text_len = text_len
        self.pad_id, self.eos_id = 0, 1

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(prompts), self.text_len), self.pad_id, np.int32)
        mask = np.zeros((len(prompts), self.text_len), np.int32)
        for i, prompt in enumerate(prompts):
            text = clean_text(prompt)
            if not text:
                raise ValueError(f"prompt {i} is empty after cleaning")
            toks = self.sp.encode(text)[: self.text_len - 1] + [self.eos_id]
            ids[i, :len(toks)] = toks
            mask[i, :len(toks)] = 1
        return ids, mask
