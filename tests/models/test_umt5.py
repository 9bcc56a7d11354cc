"""umT5 encoder parity with transformers through the converter; the sentencepiece tokenizer."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import rel_err, run_tool
from pyramid_jax.models.umt5 import modeling as umt5
from pyramid_jax.cli import convert
from pyramid_jax.weights.checkpoint import load_t5


def tiny_t5(d_model=64, seed=0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=300, d_model=d_model, d_kv=16, num_heads=4, d_ff=96, num_layers=2,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", dropout_rate=0.0)
    m = UMT5EncoderModel(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m


def to_upstream(sd):
    """transformers -> upstream Wan T5 names, written independently of the converter."""
    table = [(r"^shared\.weight$", "token_embedding.weight"), (r"^encoder\.final_layer_norm\.", "norm."),
             (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"blocks.\1.norm1."),
             (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.",
              r"blocks.\1.pos_embedding.embedding."),
             (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.", r"blocks.\1.attn."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"blocks.\1.norm2."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"blocks.\1.ffn.gate.0."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"blocks.\1.ffn.fc1."),
             (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"blocks.\1.ffn.fc2.")]
    out = {}
    for k, v in sd.items():
        if k == "encoder.embed_tokens.weight":
            continue
        for pat, rep in table:
            k2, n = re.subn(pat, rep, k)
            if n:
                out[k2] = v.clone()
                break
    return out


@pytest.mark.parametrize("layout", ["transformers", "upstream"])
def test_encoder_parity(tmp_path, layout):
    m = tiny_t5()
    if layout == "transformers":
        m.save_pretrained(tmp_path / "src", safe_serialization=True)
        src = tmp_path / "src"
    else:
        src = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
        torch.save(to_upstream(m.state_dict()), src)
    assert convert.main(["--src", str(src), "--dst", str(tmp_path / "t5"), "--kind", "t5"]) == 0
    encoder = load_t5(str(tmp_path / "t5"))
    cfg = encoder.cfg
    assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_kv) == (64, 2, 4, 16)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 300, (2, 150), generator=g)  # longer than max_distance 128
    mask = torch.ones(2, 150, dtype=torch.long)
    mask[1, 90:] = 0
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    ours = np.asarray(encoder(jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy())))
    valid = mask.numpy().astype(bool)
    assert rel_err(ours[valid], ref[valid]) <= 1e-5
    assert (ours[~valid] == 0).all()  # rows past the prompt are zeroed


def make_spiece(path, vocab=48):
    import sentencepiece as spm

    words = "a red blue green circle square bouncing moving left right on background slowly fast the " \
            "over under big small bright dark yellow purple shape".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, 8)) for _ in range(400)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(path), vocab_size=vocab,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return str(path) + ".model"


def test_tokenizer(tmp_path):
    tok = umt5.Tokenizer(make_spiece(tmp_path / "sp"), text_len=12)
    ids, mask = tok(["a red  circle &amp;amp; a blue square", "a " * 30])
    assert ids.shape == (2, 12) and ids.dtype == np.int32
    n = int(mask[0].sum())
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all() and (mask[0, n:] == 0).all()
    assert mask[1].all() and ids[1, -1] == 1  # truncated, </s> kept
    assert umt5.clean_text("  a &amp;amp; b \n c ") == "a & b c"
    with pytest.raises(ValueError, match="empty after cleaning"):
        tok(["   "])


@pytest.mark.slow
def test_generate_with_umt5_end_to_end(tmp_path):
    m = tiny_t5(d_model=64)  # the demo DiT's text_dim
    m.save_pretrained(tmp_path / "t5src", safe_serialization=True)
    assert convert.main(["--src", str(tmp_path / "t5src"), "--dst", str(tmp_path / "t5"), "--kind", "t5"]) == 0
    sp = make_spiece(tmp_path / "sp")
    out = tmp_path / "v.mp4"
    r = run_tool("-m", "pyramid_jax.generate", "--config=configs/tiny_random.py", "--config.num_frames=6",
                 "--config.text_encoder.kind=umt5", f"--config.text_encoder.checkpoint={tmp_path / 't5'}",
                 f"--config.text_encoder.tokenizer={sp}", "--config.text_encoder.device=cpu",
                 f"--config.output={out}")
    assert r.returncode == 0, r.stderr
    assert "text encoder umT5" in r.stdout and out.exists()
    r = run_tool("-m", "pyramid_jax.generate", "--config=configs/tiny_random.py", "--config.num_frames=6",
                 "--config.text_encoder.kind=umt5", f"--config.text_encoder.checkpoint={tmp_path / 't5'}",
                 f"--config.text_encoder.tokenizer={sp}", "--config.prompt=   ", f"--config.output={out}")
    assert r.returncode != 0 and "no prompt" in r.stderr
