"""Run on 8 fake CPU devices (XLA_FLAGS set by the caller): sharded rollouts vs one device.

Prints one JSON line {case: rel_err}. Used by tests/test_parallel.py in a subprocess.
"""

import json
import sys

import jax
import numpy as np

from pyramid_jax.cache.head_map import ANCHOR, VEIL, WAVE
from pyramid_jax.cache.policies import make_policy
from pyramid_jax.cache.pool import PoolSpec
from pyramid_jax.models.wan import WanConfig, init_model
from pyramid_jax.parallel import make_mesh, sharded_rollout
from pyramid_jax.sampling.rollout import RandomNoise, Sampler, rollout


def main(backends, meshes):
    assert jax.device_count() == 8, jax.devices()
    cfg = WanConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2, in_channels=4, out_channels=4,
                    text_dim=24, freq_dim=32, text_len=5)
    b, chunks = 8, 3
    spec = PoolSpec(cfg.num_layers, cfg.num_heads, cfg.head_dim, (2, 3), 3)
    head_map = np.array([[WAVE, ANCHOR, VEIL, WAVE], [VEIL, ANCHOR, WAVE, ANCHOR]])
    sampler = Sampler()
    ctx = np.asarray(jax.random.normal(jax.random.key(0), (b, 5, 24)))
    out = {}
    for backend in backends:
        model = init_model(cfg, seed=2, attention_backend=backend)
        for pname, kw in (("window", dict(local_attn_size=6, sink_size=1)), ("pyramid", dict(head_map=head_map))):
            policy = make_policy(pname, spec, chunks * 3, **kw)
            noise = RandomNoise(3, (b, chunks * 3, 4, 4, 6), sampler)
            single = rollout(model, policy, sampler, model.text_kv(ctx), noise, chunks)
            for d, m in meshes:
                lat = sharded_rollout(model, policy, sampler, ctx, noise, chunks, make_mesh(d, m))
                err = float(np.linalg.norm(lat - single) / np.linalg.norm(single))
                out[f"{backend}/{pname}/mesh{d}x{m}"] = err
    print(json.dumps(out))


if __name__ == "__main__":
    backends = sys.argv[1].split(",")
    meshes = [tuple(int(x) for x in m.split("x")) for m in sys.argv[2].split(",")]
    main(backends, meshes)
