"""CausalWan parity against diffusers' WanTransformer3DModel, through the converter."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import diffusers_wan, rel_err, save_self_forcing_pt
from pyramid_jax.attention import KVPool, PagePlan
from pyramid_jax.cache.pool import PoolSpec, rope_keys
from pyramid_jax.models.wan.modeling import CausalWan, Committed, FrameMask, WanConfig, block_causal_mask, init_model
from pyramid_jax.cli import convert
from pyramid_jax.weights.checkpoint import load_model, save_model

B, F, C, HH, WW, LT = 2, 3, 4, 6, 10, 7


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, C, F, HH, WW, generator=g)
    ctx = torch.randn(B, LT, 48, generator=g)
    return x, ctx


def _reference(model, x, t, ctx):
    with torch.no_grad():
        return model(x, t, ctx, return_dict=False)[0].numpy()


def _ours(model: CausalWan, x, t, ctx):
    xj = jnp.asarray(x.numpy().transpose(0, 2, 1, 3, 4))  # [B, C, F, H, W] -> [B, F, C, H, W]
    flow = model(xj, jnp.asarray(t), model.text_kv(jnp.asarray(ctx.numpy()))).flow
    return np.asarray(flow, np.float32).transpose(0, 2, 1, 3, 4)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_diffusers):
    """The tiny diffusers model converted twice: from diffusers safetensors and from a
    Self Forcing-style .pt (generator_ema, model. prefixes, wrapper segments)."""
    root = tmp_path_factory.mktemp("convert")
    tiny_diffusers.save_pretrained(root / "diffusers", safe_serialization=True)
    save_self_forcing_pt(tiny_diffusers, root / "self_forcing_dmd.pt", ema_scale=0.5)
    for src, dst in [("diffusers", "from_diffusers"), ("self_forcing_dmd.pt", "from_pt")]:
        assert convert.main(["--src", str(root / src), "--dst", str(root / dst), "--num-heads", "2"]) == 0
    return root


@pytest.mark.parametrize("source", ["from_diffusers", "from_pt"])
def test_parity_fp32(converted, tiny_diffusers, inputs, source):
    x, ctx = inputs
    t = np.array([937.5, 250.0], np.float32)
    ref = _reference(tiny_diffusers, x, torch.from_numpy(t), ctx)
    model = load_model(str(converted / source))
    assert model.cfg.num_layers == 2 and model.cfg.dim == 64 and model.cfg.in_channels == 4
    err = rel_err(_ours(model, x, t, ctx), ref)
    print(f"{source}: fp32 rel err {err:.2e}")
    assert err <= 1e-5


def test_no_ema_reads_generator(converted, tiny_diffusers, tmp_path, inputs):
    x, ctx = inputs
    t = np.array([500.0, 500.0], np.float32)
    assert convert.main(["--src", str(converted / "self_forcing_dmd.pt"), "--dst",
                         str(tmp_path / "gen"), "--num-heads", "2", "--no-ema"]) == 0
    ema = load_model(str(converted / "from_pt"))
    gen = load_model(str(tmp_path / "gen"))
    w_ema = np.asarray(ema.head.proj.kernel[...])
    w_gen = np.asarray(gen.head.proj.kernel[...])
    np.testing.assert_allclose(w_gen, 0.5 * w_ema, rtol=1e-6)


def test_per_frame_timesteps(converted, tiny_diffusers, inputs):
    """t [B, F] per frame equals diffusers' per-token timesteps; one t per sample equals scalar t."""
    x, ctx = inputs
    model = load_model(str(converted / "from_diffusers"))
    t_bf = np.array([[1000.0, 937.5, 833.3333], [625.0, 625.0, 0.0]], np.float32)
    tokens = (HH // 2) * (WW // 2)
    ref = _reference(tiny_diffusers, x, torch.from_numpy(np.repeat(t_bf, tokens, axis=1)), ctx)
    assert rel_err(_ours(model, x, t_bf, ctx), ref) <= 1e-5

    t_same = np.full((B, F), 833.3333, np.float32)
    per_frame = _ours(model, x, t_same, ctx)
    scalar = _ours(model, x, t_same[:, 0], ctx)
    np.testing.assert_array_equal(per_frame, scalar)


def test_parity_bf16(converted, tiny_diffusers, inputs, tmp_path):
    x, ctx = inputs
    t = np.array([937.5, 250.0], np.float32)
    ref = _reference(tiny_diffusers, x, torch.from_numpy(t), ctx)
    assert convert.main(["--src", str(converted / "diffusers"), "--dst", str(tmp_path / "bf16"),
                         "--num-heads", "2", "--dtype", "bfloat16"]) == 0
    model = load_model(str(tmp_path / "bf16"))
    assert model.cfg.dtype == "bfloat16"
    err = rel_err(_ours(model, x, t, ctx), ref)
    print(f"bf16 rel err vs fp32 diffusers: {err:.2e}")
    assert err <= 3e-2


def test_bf16_safetensors_read_exactly(tiny_diffusers, inputs, tmp_path):
    """A bf16 diffusers checkpoint converts to exactly its bf16 values."""
    x, ctx = inputs
    m16 = diffusers_wan()
    with torch.no_grad():  # bf16-representable weights, fp32 compute (RoPE buffers untouched)
        for p in m16.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    copy.deepcopy(m16).to(torch.bfloat16).save_pretrained(tmp_path / "d16", safe_serialization=True)
    assert convert.main(["--src", str(tmp_path / "d16"), "--dst", str(tmp_path / "out"),
                         "--num-heads", "2"]) == 0
    model = load_model(str(tmp_path / "out"))
    t = np.array([937.5, 250.0], np.float32)
    assert rel_err(_ours(model, x, t, ctx), _reference(m16, x, torch.from_numpy(t), ctx)) <= 1e-5


@pytest.mark.slow
def test_orbax_round_trip(tmp_path):
    cfg = WanConfig(dim=64, ffn_dim=96, num_heads=2, num_layers=2, in_channels=4, out_channels=4,
                    text_dim=48, freq_dim=32, text_len=LT)
    model = init_model(cfg, seed=3)
    save_model(str(tmp_path / "ck"), model)
    again = load_model(str(tmp_path / "ck"))
    assert again.cfg == cfg
    x = jax.random.normal(jax.random.key(0), (1, F, C, HH, WW))
    ctx = jax.random.normal(jax.random.key(1), (1, LT, 48))
    t = jnp.array([500.0])
    a = model(x, t, model.text_kv(ctx)).flow
    b, _ = again(x, t, again.text_kv(ctx))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_cached_pages_equal_block_causal_forward():
    """Chunk 2 attending chunk 1's committed frames as pages equals a block-causal forward."""
    cfg = WanConfig(dim=64, ffn_dim=96, num_heads=2, num_layers=2, in_channels=4, out_channels=4,
                    text_dim=48, freq_dim=32, text_len=LT)
    model = init_model(cfg, seed=5)
    key = jax.random.key(2)
    x = jax.random.normal(key, (1, 2 * F, C, HH, WW))
    t = jnp.full((1, 2 * F), 500.0)
    tkv = model.text_kv(jax.random.normal(jax.random.key(3), (1, LT, 48)))
    full = model(x, t, tkv, FrameMask(block_causal_mask(2 * F, F))).flow

    L, H = cfg.num_layers, cfg.num_heads
    first, kv = model(x[:, :F], t[:, :F], tkv)
    spec = PoolSpec(L, cfg.num_heads, cfg.head_dim, (HH // 2, WW // 2))
    # one page per (layer, head, frame): page (l * H + h) * F + f holds frame f
    pages = lambda a: a.transpose(1, 0, 2, 3, 4, 5).reshape(1, L * H * F, *a.shape[-2:])
    pool_k, pool_v = pages(rope_keys(spec, kv[0], jnp.arange(F))), pages(kv[1])
    # Pages listed out of frame order, plus an invalid page that must be ignored.
    base = ((jnp.arange(L)[:, None] * H + jnp.arange(H)[None]) * F)[:, None, :, None]  # [L, 1, H, 1]
    slot = jnp.broadcast_to(jnp.array([2, 0, 1, 1], jnp.int32) + base, (L, F, H, 4))
    valid = jnp.broadcast_to(jnp.array([True, True, True, False]), (L, F, H, 4))
    plan = PagePlan(jnp.int32(F), slot, jnp.zeros_like(slot), valid)
    second = model(x[:, F:], t[:, F:], tkv, Committed(KVPool(pool_k, pool_v), plan)).flow
    assert rel_err(first, full[:, :F]) <= 1e-5
    assert rel_err(second, full[:, F:]) <= 1e-5


@pytest.mark.slow
def test_block_causal_training_attention_skips_masked_blocks_with_the_same_result():
    """A static block-causal mask runs as one softmax per chunk over the frames it sees
    (prefix_groups); the result equals the masked full matrix (the same mask given traced)."""
    from pyramid_jax.models.wan.modeling import prefix_groups

    cfg = WanConfig(dim=64, ffn_dim=96, num_heads=2, num_layers=2, in_channels=4, out_channels=4,
                    text_dim=48, freq_dim=32, text_len=LT)
    model = init_model(cfg, seed=6)
    mask = block_causal_mask(3 * F, F)
    assert prefix_groups(mask) == ((0, F, F), (F, 2 * F, 2 * F), (2 * F, 3 * F, 3 * F))
    assert prefix_groups(~mask) is None and prefix_groups(jnp.asarray(mask)) is None
    x = jax.random.normal(jax.random.key(4), (2, 3 * F, C, HH, WW))
    t = jax.random.uniform(jax.random.key(5), (2, 3 * F), maxval=1000.0)
    tkv = model.text_kv(jax.random.normal(jax.random.key(6), (2, LT, 48)))
    grouped = model(x, t, tkv, FrameMask(mask)).flow
    masked = model(x, t, tkv, FrameMask(jnp.asarray(mask))).flow
    assert rel_err(grouped, masked) <= 1e-6


def test_x0_prediction_returns_the_flow_of_the_predicted_frames():
    """prediction="x0": the head's output is x0 and the call returns (x - x0) / sigma, so the
    sampler's x0 = x - sigma * flow gives the head's output back."""
    kw = dict(dim=64, ffn_dim=96, num_heads=2, num_layers=2, in_channels=4, out_channels=4, text_dim=48,
              freq_dim=32, text_len=LT)
    flow_model = init_model(WanConfig(**kw), seed=8)
    x0_model = init_model(WanConfig(**kw, prediction="x0"), seed=8)  # the same weights
    x = jax.random.normal(jax.random.key(7), (1, F, C, HH, WW))
    t = jnp.asarray([[1000.0, 400.0, 250.0]])
    tkv = flow_model.text_kv(jax.random.normal(jax.random.key(8), (1, LT, 48)))
    call = nnx.jit(lambda model: model(x, t, tkv).flow)  # one compile each, not op by op
    head = call(flow_model)  # what the head computes, read as x0 by the other model
    flow = call(x0_model)
    sigma = (t / 1000.0)[:, :, None, None, None]
    assert rel_err(x - sigma * flow, head) <= 1e-5
    with pytest.raises(ValueError, match="prediction"):
        WanConfig(**kw, prediction="eps")
