"""Run on 8 fake CPU devices (XLA_FLAGS set by the caller): umT5, the Wan VAE (decoder and
encoder) and TAEHV placed on a `model` mesh by their parameters' logical axes equal one device.

Prints one JSON line {model: {"rel_err": ..., "sharded_params": n, "params": n}}. Used by
tests/models/test_sharded_models.py in a subprocess.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pyramid_jax import sharding
from pyramid_jax.models.taehv import params as taehv_params
from pyramid_jax.models.taehv.modeling import TAEHV, TAEHVConfig
from pyramid_jax.models.umt5.modeling import UMT5Config, UMT5Encoder
from pyramid_jax.models.umt5.params import random_t5_params
from pyramid_jax.models.vae.encoder import WanVAEEncoder
from pyramid_jax.models.vae.modeling import VAEConfig, WanVAEDecoder
from pyramid_jax.models.vae.params import random_vae_params
from pyramid_jax.weights.checkpoint import with_weights


def on_mesh(module, mesh):
    """The module with every parameter placed by its logical axes; how many are split."""
    graphdef, state = nnx.split(module)
    placed = sharding.put(state, mesh, nnx.get_partition_spec(state))
    split = sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed))
    return nnx.merge(graphdef, placed), split, len(jax.tree.leaves(placed))


def compare(name, module, fn, mesh, out):
    want = np.asarray(jax.jit(fn)(module))
    sharded, split, total = on_mesh(module, mesh)
    with jax.set_mesh(mesh):
        got = np.asarray(jax.jit(fn)(sharded))
    err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    out[name] = dict(rel_err=err, sharded_params=split, params=total)


def main():
    mesh = sharding.make_mesh(2, 4)
    rng = np.random.default_rng(0)
    out = {}

    tcfg = UMT5Config(vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2)
    t5 = with_weights(UMT5Encoder, tcfg, random_t5_params(tcfg))
    ids = jnp.asarray(rng.integers(1, 64, (2, 7)), jnp.int32)
    mask = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3], jnp.int32)
    compare("umt5", t5, lambda m: m(ids, mask), mesh, out)

    vcfg = VAEConfig(base_dim=8, num_res_blocks=1)
    decoder = with_weights(WanVAEDecoder, vcfg, {k: v for k, v in random_vae_params(vcfg).items()
                                                 if not k.startswith(("encoder.", "quant_conv."))})
    z = jnp.asarray(rng.standard_normal((2, 2, 4, 6, 16)), jnp.float32)
    compare("vae_decoder", decoder, lambda m: m(z), mesh, out)
    params = random_vae_params(vcfg, encoder=True)
    encoder = with_weights(WanVAEEncoder, vcfg, {k: v for k, v in params.items()
                                                 if k.startswith(("encoder.", "quant_conv."))})
    video = jnp.asarray(rng.uniform(-1, 1, (2, 5, 32, 48, 3)), jnp.float32)
    compare("vae_encoder", encoder, lambda m: m(video), mesh, out)

    acfg = TAEHVConfig()
    taehv = with_weights(TAEHV, acfg, taehv_params.params(taehv_params.random_checkpoint(acfg), acfg))
    compare("taehv", taehv, lambda m: m.decode_video(z), mesh, out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
