"""umT5, the Wan VAE and TAEHV declare their parameters' logical axes (like the DiT), so each can
be placed on a mesh: on 8 fake CPU devices (a 2 x 4 mesh, `model` 4-way) every split model
gives what one device gives. The DiT's meshes: tests/test_sharding.py."""

from __future__ import annotations

import json
import os

import pytest
from flax import nnx

from conftest import run_tool
from pyramid_jax.models.umt5.modeling import UMT5Config, UMT5Encoder
from pyramid_jax.models.vae.modeling import VAEConfig, WanVAEDecoder


def test_parameters_name_their_axes():
    t5 = nnx.eval_shape(lambda: UMT5Encoder(UMT5Config(vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=48,
                                                       num_layers=1)))
    specs = {k: v.get_value() for k, v in nnx.get_partition_spec(nnx.state(t5))["weights"].items()}
    block = "encoder.block.0.layer."
    assert tuple(specs[block + "0.SelfAttention.q.weight"]) == (None, "heads")
    assert tuple(specs[block + "0.SelfAttention.o.weight"]) == ("heads", None)
    assert tuple(specs[block + "1.DenseReluDense.wo.weight"]) == ("mlp", None)
    assert tuple(specs["shared.weight"]) == ("vocab", None)
    assert tuple(specs[block + "0.layer_norm.weight"]) == (None,)
    vae = nnx.eval_shape(lambda: WanVAEDecoder(VAEConfig(base_dim=8, num_res_blocks=1)))
    specs = {k: v.get_value() for k, v in nnx.get_partition_spec(nnx.state(vae))["weights"].items()}
    assert tuple(specs["decoder.conv_in.weight"]) == (None, None, None, None, "channels")
    assert tuple(specs["decoder.conv_in.bias"]) == ("channels",)


@pytest.mark.slow
def test_split_models_equal_one_device():
    old = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    try:
        r = run_tool("tests/models/sharded_models_check.py", timeout=600)
    finally:
        os.environ.pop("XLA_FLAGS") if old is None else os.environ.__setitem__("XLA_FLAGS", old)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(out) == ["taehv", "umt5", "vae_decoder", "vae_encoder"]
    for name, got in out.items():
        assert got["rel_err"] <= 1e-5, (name, got)
        # what the mesh does not divide (the 3 output channels) stays whole; the rest is split
        assert got["sharded_params"] >= got["params"] - 5, (name, got)
