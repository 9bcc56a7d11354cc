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
import sys

from bench import SECTIONS
from bench.common import ATTN_SIZES, SIZES, environment, size_list
from bench.devices import child as devices_child


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--forward", action="store_true", help="CausalWan forward vs diffusers (fp32)")
    p.add_argument("--rollout", action="store_true",
                   help="seconds per chunk and compile counts (window 21), cache bytes per policy")
    p.add_argument("--long", action="store_true",
                   help="a 60 s (240 latent frames) rollout of the mid size: per-chunk times stay flat")
    p.add_argument("--policies", action="store_true",
                   help="keys attended per query frame and cache bytes per policy at 1.3B / 480x832 and the demo size")
    p.add_argument("--compare", action="store_true",
                   help="the head-aware family (window, deep_sink, pyramid, dummy_forcing, forcing_kv): KV bytes and "
                        "attention FLOPs per chunk at 1.3B 480x832 for 5 s / 60 s / 5 min, bf16 and 8-bit pages; "
                        "ms per chunk of the demo model on this machine")
    p.add_argument("--attention", action="store_true",
                   help="paged attention, window-21 vs pyramid plans (reference; pallas on TPU)")
    p.add_argument("--attn-size", default="mid", choices=sorted(ATTN_SIZES))
    p.add_argument("--tilings", default="",
                   help="GPU kernel tilings to time, 'block_q,block_kv,warps,stages;...' (default: the kernel's)")
    p.add_argument("--backends", default="reference",
                   help="attention backends for --step, comma list of reference,pallas")
    p.add_argument("--step", action="store_true",
                   help="whole chunk step (DiT only), window-21 vs pyramid, video frames/s")
    p.add_argument("--step-size", default="mid", choices=["mid", "real"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--devices", action="store_true",
                   help="batch-path throughput on 1, 2, 4, 8 fake CPU devices (demo config)")
    p.add_argument("--devices-child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--codecs", action="store_true",
                   help="VAE decode s/chunk and umT5 s/prompt (demo and mid sizes) with peak memory; the Wan VAE "
                        "and TAEHV decoders at 64x64 and 480x832 (with --upstream: upstream's beside them), "
                        "their FLOPs per latent frame and peak memory")
    p.add_argument("--codec-clips", default="all", choices=["all", "small"],
                   help="--codecs decoders: all clips, or only the 64x64 one (the 480x832 chunk takes minutes)")
    p.add_argument("--end-to-end", action="store_true",
                   help="DiT + streaming VAE decode per policy: video frames/s, first-chunk latency, peak memory")
    p.add_argument("--e2e-size", default="real", choices=["real", "tiny"])
    p.add_argument("--e2e-seconds", type=float, default=60.0)
    p.add_argument("--decoder", default="wan", choices=["wan", "taehv"], help="the decoder for --end-to-end")
    p.add_argument("--e2e-kv-dtypes", default="",
                   help="comma list of cache page dtypes for --end-to-end ('' = the model's; int8 and "
                        "float8_e4m3fn run with pyramid only)")
    p.add_argument("--plan", action="store_true",
                   help="TPU v5e / v6e / H100 plan at 1.3B 480x832: memory per policy and kv_dtype, expected FPS")
    p.add_argument("--kv-error", action="store_true",
                   help="8-bit cache pages: attention error at 1.3B shapes, and the demo video after --kv-seconds")
    p.add_argument("--kv-seconds", type=float, default=60.0)
    p.add_argument("--side-by-side", action="store_true",
                   help="this CPU: our whole process (load + compile + 8 chunks, mid size) vs upstream's")
    p.add_argument("--upstream", default="", help="a Self Forcing checkout, for --side-by-side and --codecs")
    p.add_argument("--side-runs", type=int, default=3, help="runs per side for --side-by-side (medians)")
    p.add_argument("--frames", type=int, default=21, help="latent frames for --rollout")
    p.add_argument("--sizes", default="tiny,demo,mid", help="comma list of: " + ",".join(SIZES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="bench_results/benchmark.json", help="where to write the rows")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.devices_child:
        return devices_child(args.devices_child)
    unknown = [s for s in size_list(args) if s not in SIZES]
    if unknown:
        p.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    if not any(getattr(args, s.flag) for s in SECTIONS):
        p.error("choose at least one section (--forward, --rollout, --long, --policies, --compare, --attention, --step, "
                "--devices, --codecs, --kv-error, --plan, --end-to-end, --side-by-side)")
    if args.upstream and not os.path.isfile(os.path.join(args.upstream, "wan", "modules", "causal_model.py")):
        p.error(f"--upstream {args.upstream}: not a Self Forcing checkout (no wan/modules/causal_model.py)")

    env = environment()
    print(f"# {env['platform']} ({env['device']}), {env['cpu_count']} CPUs, jax {env['jax']}")
    rows = []
    for section in SECTIONS:
        if getattr(args, section.flag):
            rows += section.run(args, env)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"environment": env, "rows": rows}, fh, indent=2)
    os.replace(tmp, args.json)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
