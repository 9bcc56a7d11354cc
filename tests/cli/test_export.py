"""python -m pyramid_jax.export: the whole chunk step lowered for TPU / CUDA from this CPU,
with the target's attention kernel inside; on CPU the exported step runs and equals `step`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export as jax_export

from conftest import run_main, run_tool
from pyramid_jax import pipeline
from pyramid_jax.cli import export
from pyramid_jax.config import parse_spec
from pyramid_jax.lowering import KERNEL_CALL, export_step
from pyramid_jax.sampling.rollout import RandomNoise, step


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_export_tiny_pallas_step_has_the_target_kernel(tmp_path, platform):
    out = tmp_path / "step.bin"
    r = run_tool("-m", "pyramid_jax.export", "--config=configs/tiny_random.py", "--config.attention.backend=pallas",
                 f"--platform={platform}", f"--out={out}")
    assert r.returncode == 0, r.stderr
    assert f"Pallas kernel ({KERNEL_CALL[platform]}) inside: yes" in r.stdout
    exported = jax_export.deserialize(bytearray(out.read_bytes()))
    assert exported.platforms == (platform,)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["self_forcing", "pyramid_forcing", "pyramid_forcing/int8", "dummy_forcing",
                                    "forcing_kv", "forcing_kv/int8"])
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_export_real_size_configs(tmp_path, config, platform):
    """Wan2.1-1.3B at 480x832 bf16 (no checkpoint needed): window-21, the published pyramid
    map (bf16 and 8-bit pages), Dummy Forcing (its typing layout) and Forcing-KV with its
    published head file (band pages of 260 tokens) lower with the target's kernel."""
    out = tmp_path / "step.bin"
    name, _, kv = config.partition("/")
    r = run_tool("-m", "pyramid_jax.export", f"--config=configs/{name}.py", "--config.attention.backend=pallas",
                 f"--config.cache.kv_dtype={kv}", f"--platform={platform}", f"--out={out}")
    assert r.returncode == 0, r.stderr
    assert "dim 1536, 30 layers x 12 heads, bfloat16" in r.stdout and "latent 60x104" in r.stdout
    assert f"Pallas kernel ({KERNEL_CALL[platform]}) inside: yes" in r.stdout


@pytest.mark.slow
def test_exported_cpu_step_equals_the_step():
    """The exported function (flat inputs) computes what the jitted `step` does."""
    c = parse_spec(["export", "--config=configs/tiny_random.py", "--config.cache.policy=pyramid",
                      "--config.cache.head_map=" + _head_map()])
    exported = export_step(c, "cpu")
    model = pipeline.load_dit(c)
    cfg, sampler = model.cfg, pipeline.make_sampler(c)
    hw = pipeline.latent_size(c, cfg)
    policy = pipeline.build_policy(c, cfg, hw, c.inputs.num_frames)
    graphdef, params = nnx.split(model)
    cache = policy.init(1, cfg.jnp_dtype)
    tkv = model.text_kv(jnp.ones((1, cfg.text_len, cfg.text_dim)) * 0.1)
    noise, renoise = RandomNoise(0, (1, c.inputs.num_frames, cfg.in_channels, *hw), sampler).chunk(0)
    got = exported.call(jax.tree.leaves(params), jax.tree.leaves(cache), *tkv, noise, renoise, jnp.int32(0))
    want_x0, want_cache = step(graphdef, policy, sampler, params, policy.init(1, cfg.jnp_dtype), tkv, noise, renoise,
                               jnp.int32(0))
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want_x0), atol=1e-5)
    for a, b in zip(got[1:], jax.tree.leaves(want_cache)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_export_bad_input_is_one_line(tmp_path):
    for args, want in ((["--platform=tpu", f"--out={tmp_path}"], "is a directory"),
                       (["--platform=tpu", "--out=x", "--batch", "0"], "--batch must be >= 1"),
                       (["--platform=tpu", "--out=x", "--config.cache.policy=fancy"], "unknown cache.policy")):
        r = run_main(export.main, ["--config=configs/tiny_random.py", *args])
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode == 2 and len(lines) == 1 and want in lines[0], r.stderr


def _head_map() -> str:
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "map.csv")
    np.savetxt(path, np.array([[-1, 1, 2, 1], [1, 2, -1, 1]]), fmt="%d", delimiter=",")
    return path
