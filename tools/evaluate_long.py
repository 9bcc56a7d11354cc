"""Compare cache policies over long videos with model-free measures (pyramid_jax.metrics).

  python tools/evaluate_long.py --config=configs/demo.py --head-map MAP.csv --seconds 60 \
      --prompts "a red circle bouncing;a blue square moving" --seeds 0,1 --out runs/eval
      [--policies window,deep_sink,pyramid,pyramid-online,dummy_forcing,forcing_kv]
      [--forcing-kv-map FILE.json]   forcing_kv's static / dynamic head map
      [--kv-dtypes ,int8]  each policy with the model's pages and with 8-bit pages
      [--paired]   prompt i with seed i only, not every (prompt, seed) pair
      [--reuse]    keep the videos already in --out

For each policy x page dtype x prompt x seed it generates a video with the configured model,
then reports colour/brightness drift against the first second, flicker at chunk boundaries vs
inside chunks, the sharpness trend, object persistence and, for prompts of the shapes caption
grammar, prompt adherence (metrics.prompt_adherence), with the KV bytes the policy holds: a
table on stdout, eval.json, drift.png / sharpness.png (per-second curves, mean over prompts)
and quality_vs_kv.png (adherence and persistence against KV bytes). pyramid-online types the
heads during the video (cache.head_map=online); dummy_forcing types them online as upstream.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from pyramid_jax import metrics
from pyramid_jax.cli import generate
from pyramid_jax.config import parse_spec
from pyramid_jax.errors import UserError
from pyramid_jax.media import write_png, write_text
from pyramid_jax.video import strides

POLICIES = {"window": ["--config.cache.policy=window", "--config.cache.local_attn_size=21",
                       "--config.cache.sink_size=0"],
            "deep_sink": ["--config.cache.policy=deep_sink", "--config.cache.local_attn_size=21",
                          "--config.cache.sink_size=10"],
            "pyramid": ["--config.cache.policy=pyramid"],
            "pyramid-online": ["--config.cache.policy=pyramid", "--config.cache.head_map=online"],
            "dummy_forcing": ["--config.cache.policy=dummy_forcing", "--config.cache.head_map="],
            "forcing_kv": ["--config.cache.policy=forcing_kv", "--config.cache.sink_size=1"]}  # upstream's sink


def read_video(path):
    import warnings

    import imageio.v2 as imageio

    with warnings.catch_warnings():  # ffmpeg is a subprocess; JAX warns about any fork
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack([f for f in imageio.get_reader(path, "ffmpeg")])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg_args = [a for a in argv if a.startswith("--config")]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head-map", default="", help="head map for the pyramid policy")
    p.add_argument("--policies", default="window,deep_sink,pyramid")
    p.add_argument("--window", type=int, default=21, help="frames of the window policy (deep_sink keeps its 21 + 10)")
    p.add_argument("--forcing-kv-map", default="", help="static / dynamic head map for the forcing_kv policy")
    p.add_argument("--kv-dtypes", default="", help="page dtypes, comma separated ('' = the model's; int8, bfloat16...)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--prompts", default="a red circle bouncing left to right on a blue striped background")
    p.add_argument("--seeds", default="0")
    p.add_argument("--paired", action="store_true",
                   help="prompt i runs with seed i only (as many seeds as prompts) instead of every pair")
    p.add_argument("--reuse", action="store_true",
                   help="keep videos already in --out that have this run's length (an interrupted "
                        "comparison with the same settings goes on where it stopped)")
    p.add_argument("--out", default="runs/eval_long")
    args = p.parse_args([a for a in argv if not a.startswith("--config")])
    policies = [x for x in args.policies.split(",") if x]
    prompts = [x for x in args.prompts.split(";") if x.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip().lstrip("-").isdigit()]
    bad = [x for x in policies if x not in POLICIES]
    error = (f"unknown policies {bad}" if bad else
             f"--seeds must be integers separated by commas, not {args.seeds!r}"
             if len(seeds) != len(args.seeds.split(",")) else
             "--head-map is needed for the pyramid policy (tools/classify_heads.py makes one)"
             if "pyramid" in policies and not args.head_map else
             "--forcing-kv-map is needed for the forcing_kv policy (tools/classify_heads.py --policy forcing_kv)"
             if "forcing_kv" in policies and not args.forcing_kv_map else
             f"--paired needs as many seeds as prompts ({len(seeds)} vs {len(prompts)})"
             if args.paired and len(seeds) != len(prompts) else "")
    if error:
        print(f"evaluate_long: error: {error}", file=sys.stderr)
        return 2
    runs = (list(zip(range(len(prompts)), seeds)) if args.paired else
            [(pi, seed) for pi in range(len(prompts)) for seed in seeds])
    try:
        c = parse_spec(["generate", *cfg_args])
    except UserError as e:
        print(f"evaluate_long: error: {e}", file=sys.stderr)
        return 2
    fps, stride, f = int(c.output.fps), strides(c)[0], c.sampler.frames_per_chunk
    chunk = f * stride  # video frames per chunk (the first is stride - 1 shorter)
    frames = int(round(args.seconds * fps / stride / f)) * f  # latent frames, a multiple of the chunk
    video_frames = 1 + stride * (frames - 1)  # what --reuse expects to find
    os.makedirs(args.out, exist_ok=True)
    rows, curves = [], {}
    per_second = lambda a: a[: len(a) // fps * fps].reshape(-1, fps).mean(1)
    base = {p: f"window-{args.window}" if p == "window" and args.window != 21 else p for p in policies}
    kv_dtypes = args.kv_dtypes.split(",")
    cases = [(p, d, base[p] + (f"/{d}" if d else "")) for p in policies for d in kv_dtypes]
    for policy, kv_dtype, label in cases:
        extra = POLICIES[policy] + ([f"--config.cache.head_map={args.head_map}"] if policy == "pyramid" else [])
        extra += [f"--config.cache.head_map={args.forcing_kv_map}"] if policy == "forcing_kv" else []
        extra += [f"--config.cache.local_attn_size={args.window}"] if policy == "window" else []
        extra += [f"--config.cache.kv_dtype={kv_dtype}"]
        types_online = policy in ("dummy_forcing", "pyramid-online")  # each video holds the layout it typed
        kv_bytes = None if types_online else cache_bytes([*cfg_args, *extra, f"--config.num_frames={frames}"])
        for pi, seed in runs:
            path = os.path.join(args.out, f"{label.replace('/', '_')}_p{pi}_s{seed}.mp4")
            video = read_video(path) if args.reuse and os.path.exists(path) else None
            if video is not None and len(video) == video_frames:
                print(f"reusing {path}")
            else:
                code = generate.main([*cfg_args, *extra, f"--config.prompt={prompts[pi]}",
                                      f"--config.seed={seed}", f"--config.num_frames={frames}",
                                      f"--config.output={path}"])
                if code:
                    return code
                video = read_video(path)
            held = kv_bytes if not types_online else cache_bytes(
                [*cfg_args, *extra, f"--config.num_frames={frames}"], os.path.splitext(path)[0] + ".heads.json")
            rows.append(dict(policy=label, prompt=pi, seed=seed, kv_MiB=held / 2**20,
                             **metrics.summary(video, chunk - stride + 1, chunk, fps),
                             prompt_adherence=metrics.prompt_adherence(video, prompts[pi], fps)))
            curves.setdefault(label, []).append((per_second(metrics.color_drift(video)),
                                                 per_second(metrics.sharpness(video))))
    cols = ["kv_MiB", "color_drift", "brightness_drift", "flicker_ratio", "sharpness_trend", "persistence",
            "prompt_adherence"]
    labels = [label for _, _, label in cases]
    table = [dict(policy=lab, **{c: float(np.nanmean([r[c] for r in rows if r["policy"] == lab])) for c in cols})
             for lab in labels]
    print(f"\n## {args.seconds:g} s videos, {len(rows) // len(labels)} per policy (means)")
    print("policy                " + "  ".join(f"{c:>16}" for c in cols))
    for t in table:
        print(f"{t['policy']:<21} " + "  ".join(f"{t[c]:16.4g}" for c in cols))
    write_text(os.path.join(args.out, "eval.json"), json.dumps({"means": table, "videos": rows, "prompts": prompts,
                                                                   "config_args": cfg_args}, indent=1))
    _quality_plot(table, args.out)
    _plots(curves, args.out)
    print(f"wrote {args.out}/eval.json, drift.png, sharpness.png, quality_vs_kv.png")
    return 0


def cache_bytes(argv, typed: str | None = None) -> int:
    """Bytes of the KV cache a run of these config flags holds (B = 1), from its state's shapes;
    typed: the head map a run typed online (dummy_forcing's groups, pyramid's online map), whose
    layout it holds from then on."""
    import jax
    import jax.numpy as jnp

    from pyramid_jax import pipeline
    from pyramid_jax.cache.dummy import DummyGroupsPolicy
    from pyramid_jax.cache.pyramid import PyramidPolicy

    spec = parse_spec(["generate", *argv])
    cfg = pipeline.model_config(spec)
    hw = pipeline.latent_size(spec, cfg)
    policy = pipeline.build_policy(spec, cfg, hw, spec.inputs.num_frames)
    if typed and os.path.isfile(typed):
        with open(typed) as fh:
            head_map = np.asarray(json.load(fh)["map"])
        pool = pipeline.pool_spec(spec, cfg, hw)
        policy = (DummyGroupsPolicy(pool, head_map, policy.params) if spec.cache.policy == "dummy_forcing"
                  else PyramidPolicy(pool, head_map))
    state = jax.eval_shape(lambda: policy.init(1, jnp.dtype(spec.model.dtype)))
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))


def _quality_plot(table, out):
    """Prompt adherence and persistence against the KV bytes each policy holds: a colour per
    policy, a marker per page dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    policies = list(dict.fromkeys(t["policy"].split("/")[0] for t in table))
    dtypes = list(dict.fromkeys(t["policy"].partition("/")[2] for t in table))
    colour = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(policies)}
    marker = {d: m for d, m in zip(dtypes, "os^D")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, col, name in ((axes[0], "prompt_adherence", "prompt adherence"), (axes[1], "persistence", "persistence")):
        shown = [t for t in table if np.isfinite(t[col])]  # adherence is NaN outside the caption grammar
        for t in shown:
            pol, _, dt = t["policy"].partition("/")
            ax.scatter(t["kv_MiB"], t[col], color=colour[pol], marker=marker[dt], s=45)
        if shown:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("KV cache held (MiB, B = 1)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colour[p], marker="o", linestyle="", label=p) for p in policies]
    handles += [plt.Line2D([], [], color="grey", marker=marker[d], linestyle="", label=d or "model dtype")
                for d in dtypes if len(dtypes) > 1]
    fig.legend(handles=handles, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    write_png(os.path.join(out, "quality_vs_kv.png"), fig, dpi=110)
    plt.close(fig)


def _plots(curves, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for idx, name, ylabel in ((0, "drift", "colour drift (RGB L2 vs first second)"),
                              (1, "sharpness", "Laplacian variance")):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for policy, runs in curves.items():
            n = min(len(r[idx]) for r in runs)
            ax.plot(np.arange(n), np.mean([r[idx][:n] for r in runs], axis=0), label=policy)
        ax.set_xlabel("second")
        ax.set_ylabel(ylabel)
        ax.legend()
        fig.tight_layout()
        write_png(os.path.join(out, f"{name}.png"), fig, dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
