"""Prompt adherence of a shapes model: every (prompt, seed) as one batch, in this process.

  python tools/evaluate_prompts.py --config=configs/demo.py --prompts FILE.txt --seeds 0,1,2 \
      [--seconds 10] [--guidance 1,3] [--json OUT.json] [--strip OUT.png] [--config.FIELD=VALUE ...]

Instead of a file, --draw N takes N distinct captions drawn at random from the shapes grammar
(`shapes.random_clip` of seeds --draw-seed, --draw-seed + 1, ...: each colour as often as in
training), the same N for the same seed; --exclude FILE,... skips the captions that appear
anywhere in those files (earlier prompt sets, the docs), which is how to draw a held-out set
that nothing else names.

For each guidance scale: per prompt, `metrics.prompt_adherence` (from 1 s on) averaged over the
seeds (the JSON keeps each seed's too), and the mean share of frames showing the named
background colour (>= 30%) and the named shape colour (>= 0.5%): which half of a prompt a
model misses; and the mean share of the frame in the named shape's colour, its size (about 5%
in the training clips), which adherence does not see. Prints a table, writes JSON;
--strip writes one row of frames per prompt (first seed, every second).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from pyramid_jax import logs, metrics, pipeline, video
from pyramid_jax.config import parse_spec
from pyramid_jax.errors import UserError
from pyramid_jax.media import write_png, write_text


DRAW_SEED = 2_000_000_000  # far from the seeds of the dataset's train (0 ...) and test (1e9 ...) clips


def draw_prompts(n: int, seed: int = DRAW_SEED, exclude: str = "") -> list[str]:
    """n distinct captions of `shapes.random_clip(seed)`, `random_clip(seed + 1)`, ... in order,
    leaving out any that occurs in the text `exclude` (case-insensitive). ValueError when 100
    draws a caption do not find n (the grammar has a few tens of thousands)."""
    from pyramid_jax.data import shapes

    exclude = exclude.lower()
    prompts: dict[str, None] = {}
    for s in range(seed, seed + 100 * n):
        caption = shapes.random_clip(s).caption
        if caption.lower() not in exclude:
            prompts.setdefault(caption)
        if len(prompts) == n:
            return list(prompts)
    raise ValueError(f"--draw {n}: only {len(prompts)} distinct captions in {100 * n} draws")


def generate_videos(c, models, prompts: list[str], seeds: list[int]) -> np.ndarray:
    """uint8 [len(prompts) * len(seeds), T, H, W, 3]: prompt-major, then seed."""
    pairs = [(p, s) for p in prompts for s in seeds]
    hw = pipeline.latent_size(c, models.dit.cfg)
    job = pipeline.scheduled_inputs(c, models, [p for p, _ in pairs], [s for _, s in pairs], hw)
    decoder = video.video_decoder(c, len(pairs), hw, models.vae)
    frames = []
    pipeline.generate(c, models, job, sink=Collect(decoder, frames))
    return np.concatenate(frames, axis=1)


class Collect:
    """A sink that keeps the decoded frames instead of writing mp4s."""

    def __init__(self, decoder, frames):
        self.decoder, self.frames = decoder, frames

    def push(self, x0):
        self.frames.append(self.decoder.push(x0))


def score(videos, prompts, seeds, fps) -> list[dict]:
    """Per prompt: adherence and the background / shape halves of it, and the share of the
    frame in the named shape's colour (`shape_area`: the shapes' size, which adherence does not
    see; about 0.05 in the training clips), means over seeds; `per_seed`: each seed's adherence."""
    rows = []
    for i, prompt in enumerate(prompts):
        vids = videos[i * len(seeds):(i + 1) * len(seeds)]
        shape, background = metrics.caption_colors(prompt)
        start = int(round(fps))
        shares = [metrics.color_shares(v[start:], median=True) for v in vids]
        per_seed = [float(metrics.prompt_adherence(v, prompt, fps)) for v in vids]
        rows.append(dict(prompt=prompt, adherence=float(np.mean(per_seed)), per_seed=per_seed,
                         background_ok=float(np.mean([(s[background] >= 0.3).mean() for s in shares])),
                         shape_ok=float(np.mean([(s[shape] >= 0.005).mean() for s in shares])),
                         shape_area=float(np.mean([s[shape].mean() for s in shares]))))
    return rows


def strip(videos, seeds, fps) -> np.ndarray:
    """uint8 image: one row per prompt (its first seed), a frame every second."""
    first = videos[::len(seeds)]
    picks = np.arange(0, first.shape[1], fps)
    rows = [np.concatenate(list(v[picks]), axis=1) for v in first]
    return np.concatenate(rows, axis=0)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg_args = [a for a in argv if a.startswith("--config")]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", default="", help="a text file, one prompt per line")
    p.add_argument("--draw", type=int, default=0, help="instead of --prompts: N captions drawn at random")
    p.add_argument("--draw-seed", type=int, default=DRAW_SEED, help="the first random_clip seed --draw uses")
    p.add_argument("--exclude", default="", help="with --draw: comma list of files whose captions it skips")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--guidance", default="", help="comma list of guidance scales (default: the config's)")
    p.add_argument("--json", default="")
    p.add_argument("--strip", default="", help="png of the first seed's videos, one frame a second")
    args = p.parse_args([a for a in argv if not a.startswith("--config")])
    logs.setup()
    if bool(args.prompts) == bool(args.draw) or args.draw < 0:
        print("evaluate_prompts: error: give --prompts FILE or --draw N (N > 0), one of them", file=sys.stderr)
        return 2
    if args.exclude and not args.draw:
        print("evaluate_prompts: error: --exclude goes with --draw", file=sys.stderr)
        return 2
    if args.draw_seed < 0:
        print(f"evaluate_prompts: error: --draw-seed must be >= 0, got {args.draw_seed}", file=sys.stderr)
        return 2
    try:
        if args.prompts:
            with open(args.prompts) as fh:
                prompts = [line.strip() for line in fh if line.strip()]
        else:
            exclude = "\n".join(pathlib.Path(f).read_text() for f in args.exclude.split(",") if f)
            prompts = draw_prompts(args.draw, args.draw_seed, exclude)
        seeds = [int(s) for s in args.seeds.split(",")]
        scales = [float(g) for g in args.guidance.split(",") if g.strip()]
    except (OSError, ValueError) as e:
        print(f"evaluate_prompts: error: {e}", file=sys.stderr)
        return 2
    try:
        c = parse_spec(["evaluate", *cfg_args])
        f = c.sampler.frames_per_chunk
        c = c.but(inputs=dict(num_frames=int(round(args.seconds * c.output.fps / video.strides(c)[0] / f)) * f),
                  output=dict(output=""))
        pipeline.check_config(c)
        models = pipeline.load_models(c)
    except UserError as e:
        print(f"evaluate_prompts: error: {e}", file=sys.stderr)
        return 2
    results = {}
    for g in scales or [c.sampler.guidance_scale]:
        c = c.but(sampler=dict(guidance_scale=g))
        models.sampler = pipeline.make_sampler(c)
        t0 = time.perf_counter()
        videos = generate_videos(c, models, prompts, seeds)
        rows = score(videos, prompts, seeds, int(c.output.fps))
        results[g] = dict(rows=rows, mean=float(np.mean([r["adherence"] for r in rows])),
                          min=float(np.min([r["adherence"] for r in rows])),
                          shape_area=float(np.mean([r["shape_area"] for r in rows])), seconds=time.perf_counter() - t0)
        print(f"\n## guidance {g:g}: adherence mean {results[g]['mean']:.3f}, min {results[g]['min']:.3f}, "
              f"named shape area {100 * results[g]['shape_area']:.0f}% of the frame "
              f"({len(prompts)} prompts x {len(seeds)} seeds, {args.seconds:g} s)")
        for r in rows:
            print(f"{r['adherence']:6.3f}  bg {r['background_ok']:5.2f}  shape {r['shape_ok']:5.2f}  "
                  f"area {100 * r['shape_area']:3.0f}%  {r['prompt']}")
        if args.strip:
            write_png(args.strip.replace(".png", f"_g{g:g}.png"), strip(videos, seeds, int(c.output.fps)))
    if args.json:
        write_text(args.json, json.dumps({"results": results, "seeds": seeds, "config_args": cfg_args,
                                           "prompts": args.prompts or dict(draw=args.draw, draw_seed=args.draw_seed,
                                                                             exclude=args.exclude)},
                                          indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
