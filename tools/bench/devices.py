"""--devices: video frames/s of the sharded batch path on 1, 2, 4, 8 fake CPU devices."""

from __future__ import annotations

import json
import os
import statistics
import sys

import numpy as np

from .common import REPO, print_table

# The child is tools/benchmark.py --devices-child N: XLA_FLAGS must be set before JAX starts.
BENCHMARK = os.path.join(REPO, "tools", "benchmark.py")


def bench_devices_child(n_devices, chunks=4):
    """(Run with XLA_FLAGS giving n fake devices.) Video frames/s of the sharded batch path
    for the demo model, batch = n_devices, mesh (n, 1)."""
    from pyramid_jax import pipeline, video
    from pyramid_jax.config import parse_spec
    from pyramid_jax.models.wan.modeling import init_model
    from pyramid_jax.sharding import make_mesh
    from pyramid_jax.sampling.rollout import RandomNoise, Sampler, rollout, text_kv_of

    c = parse_spec(["benchmark", "--config=" + os.path.join(REPO, "configs", "demo.py")])
    cfg = c.model.shape
    model = init_model(cfg)  # random weights: speed does not depend on them
    lh, lw = pipeline.latent_size(c, cfg)
    frames = c.sampler.frames_per_chunk * chunks
    policy = pipeline.build_policy(c, cfg, (lh, lw), frames)
    sampler = Sampler()
    ctx = np.zeros((n_devices, cfg.text_len, cfg.text_dim), np.float32)
    mesh = make_mesh(n_devices, 1)
    times = []
    noise = RandomNoise(0, (n_devices, frames, cfg.in_channels, lh, lw), sampler)
    rollout(model, policy, sampler, text_kv_of(model, ctx, mesh), noise, chunks, mesh=mesh,
            on_chunk=lambda k, x, sec: times.append(sec))
    chunk_s = statistics.median(times[1:])
    video_frames = c.sampler.frames_per_chunk * video.strides(c)[0]  # per chunk in steady state
    return dict(section="devices", devices=n_devices, batch=n_devices, chunk_s=chunk_s,
                video_frames_per_s=n_devices * video_frames / chunk_s)


def bench_devices(counts):
    import subprocess

    rows = []
    for n in counts:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        r = subprocess.run([sys.executable, BENCHMARK, "--devices-child", str(n)], env=env,
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))


def child(n_devices):
    """The --devices-child entry: print the row as a JSON line for bench_devices to read."""
    print(json.dumps(bench_devices_child(n_devices)))
    return 0


def run(args, env):
    dv = bench_devices([1, 2, 4, 8])
    print("\n## batch path, demo config, batch = devices, mesh (n, 1), video frames/s")
    print(f"(fake CPU devices from --xla_force_host_platform_device_count share this machine's "
          f"{os.cpu_count()} cores: this shows the sharded path works and its overhead, not scaling)")
    print_table(dv, ["devices", "batch", "chunk_s", "video_frames_per_s"])
    return dv
