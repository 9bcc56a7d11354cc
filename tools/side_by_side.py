"""Side by side on this machine: our whole process against upstream Self Forcing's PyTorch one.

The rollout both run: a mid-size causal Wan (dim 768, 6 heads, 8 layers, 16x26 latents),
24 latent frames (8 chunks of 3), window 21, fp32, batch 1, random weights that both load
from disk (the same weights: a .pt in upstream's names, converted to our orbax checkpoint
the way users convert). Each side is a fresh Python process timed from outside, so the
figure holds everything a user waits for: imports, loading, compiling, 8 chunks. Ours runs
twice with one persistent compilation cache: cold (compiles) and warm (a second run of the
same shapes).

Upstream is optional: pass a checkout of Self Forcing (`--upstream DIR`). Its modules are
imported from there as they are (upstream_modules.py says what changes around them: attention
runs in fp32 through torch's scaled_dot_product_attention).

  python tools/benchmark.py --side-by-side --upstream ~/src/Self-Forcing
  python tools/side_by_side.py ours --ckpt DIR            # one side alone (prints a JSON line)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

T_START = time.perf_counter()

# The rollout (benchmark.py's "mid" size). Kept here rather than imported: the upstream side
# must not import JAX (benchmark.py and pyramid_jax do), or its import time would count it.
MID = dict(dim=768, ffn_dim=3072, num_heads=6, num_layers=8, hh=16, ww=26, text_len=512, text_dim=4096,
           frames=24, window=21)
TIMESTEPS = (1000.0, 937.5, 833.3333, 625.0)  # Self Forcing's warped 4-step schedule (= Sampler's)


def make_weights(tmp: str) -> tuple[str, str]:
    """Random mid-size weights as an upstream-named .pt and our converted checkpoint.
    Returns (pt path, checkpoint dir)."""
    import torch
    from diffusers import WanTransformer3DModel

    from pyramid_jax.models.wan import params as wan_names
    from pyramid_jax.weights.convert import convert

    m = MID
    torch.manual_seed(0)
    ref = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=m["num_heads"], attention_head_dim=m["dim"] // m["num_heads"],
        in_channels=16, out_channels=16, text_dim=m["text_dim"], freq_dim=256, ffn_dim=m["ffn_dim"],
        num_layers=m["num_layers"], cross_attn_norm=True)
    sd = wan_names.diffusers_to_upstream(ref.state_dict())
    pt, ckpt = os.path.join(tmp, "mid.pt"), os.path.join(tmp, "mid_ckpt")
    torch.save({k: v.contiguous() for k, v in sd.items()}, pt)
    convert("dit", pt, ckpt, num_heads=m["num_heads"])
    return pt, ckpt


def ours(ckpt: str) -> dict:
    """Load the checkpoint, compile, roll out 8 chunks (x0 of each chunk fetched to the host)."""
    import jax
    import numpy as np

    from pyramid_jax import compile_cache
    from pyramid_jax.cache.policies import make_policy
    from pyramid_jax.cache.pool import PoolSpec
    from pyramid_jax.sampling.rollout import RandomNoise, Sampler, rollout, text_kv_of
    from pyramid_jax.weights.checkpoint import load_model

    t_import = time.perf_counter()
    compile_cache.enable()
    m = MID
    model = load_model(ckpt)
    cfg = model.cfg
    t_load = time.perf_counter()
    spec = PoolSpec(cfg.num_layers, cfg.num_heads, cfg.head_dim, (m["hh"] // 2, m["ww"] // 2), 3)
    policy = make_policy("window", spec, m["frames"], m["window"], 0)
    context = np.random.default_rng(0).standard_normal((1, m["text_len"], m["text_dim"]), np.float32) * 0.1
    sampler = Sampler(timesteps=TIMESTEPS)
    shape = (1, m["frames"], cfg.in_channels, m["hh"], m["ww"])
    chunks = []
    out = rollout(model, policy, sampler, text_kv_of(model, context), RandomNoise(0, shape, sampler),
                  m["frames"] // 3, on_chunk=lambda k, x, sec: chunks.append(sec))
    assert np.isfinite(np.asarray(out.latents)).all()
    return dict(import_s=t_import - T_START, load_s=t_load - t_import, chunk_s=chunks,
                device=str(jax.devices()[0].device_kind))


def upstream(repo: str, pt: str) -> dict:
    """Upstream's CausalWanModel and its inference loop's order of passes (4 denoising steps,
    then the clean pass that writes the cache), with its own KV cache dicts."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import upstream_modules

    causal_model = upstream_modules.load(repo).causal_model
    t_import = time.perf_counter()
    m = MID
    model = causal_model.CausalWanModel(
        dim=m["dim"], ffn_dim=m["ffn_dim"], num_heads=m["num_heads"], num_layers=m["num_layers"],
        local_attn_size=m["window"], sink_size=0, text_dim=m["text_dim"], freq_dim=256, cross_attn_norm=True,
        in_dim=16, out_dim=16).eval()
    model.load_state_dict(torch.load(pt, map_location="cpu"))
    t_load = time.perf_counter()

    g = torch.Generator().manual_seed(0)
    tpf, dh, heads = (m["hh"] // 2) * (m["ww"] // 2), m["dim"] // m["num_heads"], m["num_heads"]
    context = [torch.randn(m["text_len"], m["text_dim"], generator=g) * 0.1]
    kv = [dict(k=torch.zeros(1, m["window"] * tpf, heads, dh), v=torch.zeros(1, m["window"] * tpf, heads, dh),
               global_end_index=torch.tensor([0]), local_end_index=torch.tensor([0])) for _ in range(m["num_layers"])]
    text_kv = [dict(k=torch.zeros(1, m["text_len"], heads, dh), v=torch.zeros(1, m["text_len"], heads, dh),
                    is_init=False) for _ in range(m["num_layers"])]
    call = lambda x, t, start: model(x=[x], t=torch.full((1, 3), t), context=context, seq_len=m["frames"] * tpf,
                                     kv_cache=kv, crossattn_cache=text_kv, current_start=start)[0]
    chunks = []
    for c in range(m["frames"] // 3):
        t0 = time.perf_counter()
        x, start = torch.randn(16, 3, m["hh"], m["ww"], generator=g), c * 3 * tpf
        for i, t in enumerate(TIMESTEPS):
            x0 = x - t / 1000 * call(x, t, start)
            if i + 1 < len(TIMESTEPS):
                s = TIMESTEPS[i + 1] / 1000
                x = (1 - s) * x0 + s * torch.randn(x0.shape, generator=g)
        call(x0, 0.0, start)
        chunks.append(time.perf_counter() - t0)
    assert torch.isfinite(x0).all()
    return dict(import_s=t_import - T_START, load_s=t_load - t_import, chunk_s=chunks,
                device=f"cpu (torch {torch.__version__}, {torch.get_num_threads()} threads)")


def _child(args: list[str], env: dict) -> dict:
    """Run one side as a fresh process; its wall time includes the interpreter's start."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.abspath(__file__)] + args, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{args[0]} side failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    chunks = row.pop("chunk_s")
    return dict(row, total_s=wall, first_chunk_s=chunks[0], chunks_s=sum(chunks),
                steady_chunk_s=statistics.median(chunks[1:]))


def _median_row(runs: list[dict]) -> dict:
    """Per field, the median over runs (the run-to-run spread of total_s kept as its range)."""
    row = {k: statistics.median(r[k] for r in runs) if isinstance(v, float) else v for k, v in runs[0].items()}
    return dict(row, runs=len(runs), total_s_range=[min(r["total_s"] for r in runs), max(r["total_s"] for r in runs)])


def run(upstream_dir: str | None = None, runs: int = 3) -> list[dict]:
    """Rows (medians over `runs`, the sides interleaved so a slow spell of a shared machine
    hits them alike): ours cold (a fresh compilation cache), ours warm (the cache the cold
    run filled), upstream."""
    sides = {"pyramid_jax, cold compile cache": [], "pyramid_jax, warm compile cache": []}
    if upstream_dir:
        sides["upstream Self Forcing (PyTorch)"] = []
    with tempfile.TemporaryDirectory() as tmp:
        pt, ckpt = make_weights(tmp)
        for i in range(runs):
            env = dict(os.environ, PYRAMID_JAX_COMPILE_CACHE=os.path.join(tmp, f"xla{i}"), JAX_PLATFORMS="cpu")
            env.pop("XLA_FLAGS", None)  # one device, as a user's process has
            for side, done in sides.items():
                args = ["upstream", "--repo", upstream_dir, "--pt", pt] if side.startswith("upstream") else [
                    "ours", "--ckpt", ckpt]
                done.append(_child(args, env))
                print(f"# run {i + 1}/{runs} {side}: {done[-1]['total_s']:.1f} s", flush=True)
    rows = [dict(section="side_by_side", side=side, frames=MID["frames"], window=MID["window"], **_median_row(done))
            for side, done in sides.items()]
    if upstream_dir:
        for r in rows[:2]:
            r["vs_upstream"] = r["total_s"] / rows[2]["total_s"]
    return rows


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("side", choices=["ours", "upstream"])
    p.add_argument("--ckpt", help="our checkpoint (ours)")
    p.add_argument("--repo", help="a Self Forcing checkout (upstream)")
    p.add_argument("--pt", help="the upstream-named weights (upstream)")
    a = p.parse_args(argv)
    row = ours(a.ckpt) if a.side == "ours" else upstream(a.repo, a.pt)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
