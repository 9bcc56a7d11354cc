"""pyramid_jax benchmarks: print a table per section and write all rows as JSON.

  python tools/benchmark.py --forward            # CausalWan (jit) vs diffusers, fp32 CPU
  python tools/benchmark.py --forward --sizes tiny --repeats 3 --json out.json

Timings are medians over --repeats runs after one warm-up (compile) run, on whatever
machine runs this; the JSON records the platform, device and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# name -> (WanConfig fields, latent frames, latent H, latent W, text length)
SIZES = {
    "tiny": (dict(dim=64, ffn_dim=96, num_heads=2, num_layers=2, in_channels=4, out_channels=4,
                  text_dim=48, freq_dim=32), 3, 6, 10, 16),
    "mid": (dict(dim=768, ffn_dim=3072, num_heads=6, num_layers=8, in_channels=16, out_channels=16,
                 text_dim=4096, freq_dim=256), 3, 16, 26, 512),
}


def _median_seconds(fn, repeats):
    fn()  # warm-up: compile / allocate
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_forward(sizes, repeats):
    """Forward time of CausalWan (jitted, text K/V cached and not) vs diffusers, fp32."""
    import torch
    from diffusers import WanTransformer3DModel
    from flax import nnx

    from pyramid_jax.models.wan import WanConfig
    from pyramid_jax.weights import wan_names
    from pyramid_jax.weights.checkpoint import model_from_params

    rows = []
    for name in sizes:
        fields, nf, hh, ww, lt = SIZES[name]
        torch.manual_seed(0)
        ref = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=fields["num_heads"],
            attention_head_dim=fields["dim"] // fields["num_heads"], in_channels=fields["in_channels"],
            out_channels=fields["out_channels"], text_dim=fields["text_dim"], freq_dim=fields["freq_dim"],
            ffn_dim=fields["ffn_dim"], num_layers=fields["num_layers"]).eval()
        sd = wan_names.diffusers_to_upstream({k: v.numpy() for k, v in ref.state_dict().items()})
        cfg = WanConfig(text_len=lt, **fields)
        model = model_from_params(cfg, wan_names.upstream_to_params(sd, cfg))

        x = torch.randn(1, fields["in_channels"], nf, hh, ww)
        ctx = torch.randn(1, lt, fields["text_dim"])
        t = torch.tensor([937.5])

        def run_ref():
            with torch.no_grad():
                ref(x, t, ctx, return_dict=False)

        graphdef, state = nnx.split(model)

        @jax.jit
        def step(state, x, t, tkv):
            return nnx.merge(graphdef, state)(x, t, tkv)[0]

        @jax.jit
        def step_with_text(state, x, t, ctx):
            m = nnx.merge(graphdef, state)
            return m(x, t, m.text_kv(ctx))[0]

        xj = jnp.asarray(x.numpy().transpose(0, 2, 1, 3, 4))
        cj = jnp.asarray(ctx.numpy())
        tj = jnp.asarray(t.numpy())
        tkv = jax.jit(lambda s, c: nnx.merge(graphdef, s).text_kv(c))(state, cj)
        ours = _median_seconds(lambda: step(state, xj, tj, tkv).block_until_ready(), repeats)
        ours_text = _median_seconds(lambda: step_with_text(state, xj, tj, cj).block_until_ready(), repeats)
        theirs = _median_seconds(run_ref, repeats)
        rows.append(dict(section="forward", size=name, dim=cfg.dim, layers=cfg.num_layers,
                         heads=cfg.num_heads, frames=nf, latent=f"{hh}x{ww}", text_len=lt,
                         diffusers_s=theirs, ours_s=ours, ours_with_text_s=ours_text,
                         ratio=ours / theirs, ratio_with_text=ours_text / theirs))
    return rows


def print_table(rows, cols):
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def environment():
    import flax

    dev = jax.devices()[0]
    return dict(platform=dev.platform, device=getattr(dev, "device_kind", str(dev)),
                device_count=jax.device_count(), cpu_count=os.cpu_count(),
                machine=platform.machine(), python=platform.python_version(),
                jax=jax.__version__, flax=flax.__version__)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--forward", action="store_true", help="CausalWan forward vs diffusers (fp32)")
    p.add_argument("--sizes", default="tiny,mid", help="comma list of: " + ",".join(SIZES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="bench_results/benchmark.json", help="where to write the rows")
    args = p.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    if not args.forward:
        p.error("choose at least one section (--forward)")

    env = environment()
    print(f"# {env['platform']} ({env['device']}), {env['cpu_count']} CPUs, jax {env['jax']}")
    rows = []
    if args.forward:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        fw = bench_forward(sizes, args.repeats)
        print("\n## forward: CausalWan (jit) vs diffusers WanTransformer3DModel, fp32, batch 1")
        print_table(fw, ["size", "dim", "layers", "frames", "latent", "text_len", "diffusers_s",
                         "ours_s", "ratio", "ours_with_text_s", "ratio_with_text"])
        rows += fw
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"environment": env, "rows": rows}, fh, indent=2)
    os.replace(tmp, args.json)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
