"""Continuing a video: the seam between the given frames and the first frames made after them.

  python tools/evaluate_continue.py --config=configs/demo.py --prompts FILE.txt --seeds 0 \
      [--given 48] [--frames 51] [--out DIR] [--config.FIELD=VALUE ...]

Per prompt and seed (in this process): the video of given + frames latent frames made in one
go (uninterrupted), and its first `given` frames written to an mp4 and continued from that mp4
(`init_video`, as a user would) for `frames` more, with the same seed. Reports
  jump      mean |frame change| across the seam over the mean change inside chunks (chunk
            boundaries left out), on the continued video
  jump_ref  the same at the same frame of the uninterrupted video (an ordinary chunk boundary)
  adh       prompt adherence (metrics.prompt_adherence, from 1 s on) of what was made after
            the seam
  adh_ref   the same span of the uninterrupted video
A table, DIR/continue.json, and DIR/seams.png: per video the last 3 given frames, then the
first 3 made (shapes captions: prompts outside the grammar give NaN adherence).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from pyramid_jax import logs, media, metrics, pipeline, video
from pyramid_jax.config import parse_spec
from pyramid_jax.errors import UserError
from pyramid_jax.media import write_png, write_text


def make(c, models, prompt: str, seed: int, num_frames: int) -> np.ndarray:
    """uint8 frames [T, H, W, 3] of one video (continuing c.inputs.init_video if set)."""
    hw = pipeline.latent_size(c, models.dit.cfg)
    job = pipeline.with_initial(c, models, pipeline.scheduled_inputs(c, models, [prompt], [seed], hw, num_frames))
    latents = pipeline.generate(c, models, job).latents
    return video.video_decoder(c, 1, hw, models.vae).push(latents)[0]


def jump_at(frames: np.ndarray, seam: int, chunk_starts) -> float:
    """Mean |change| into frame `seam` over the mean change inside chunks (chunk_starts: the
    first video frame of every chunk after the first)."""
    d = np.abs(np.diff(np.asarray(frames, np.float32), axis=0)).mean(axis=(1, 2, 3))
    starts = np.asarray([s for s in chunk_starts if s < len(frames)])
    inside = np.delete(d, starts - 1).mean()
    return float(d[seam - 1] / max(inside, 1e-6))


def _mean(values) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logs.setup()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", required=True, help="a file, one prompt per line")
    p.add_argument("--seeds", default="0")
    p.add_argument("--given", type=int, default=48, help="latent frames made first, then given")
    p.add_argument("--frames", type=int, default=51, help="latent frames made after them")
    p.add_argument("--out", default="runs/continue")
    args, rest = p.parse_known_args(argv[1:])
    try:
        prompts = [line.strip() for line in open(args.prompts) if line.strip()]
        seeds = [int(s) for s in args.seeds.split(",")]
        c = parse_spec([argv[0], *rest])
        pipeline.check_config(c)
        f = c.sampler.frames_per_chunk
        if args.given % f or args.frames % f or args.given <= 0 or args.frames <= 0:
            raise UserError(f"--given and --frames must be positive multiples of {f}")
        models = pipeline.load_models(c)
    except (OSError, ValueError, UserError) as e:
        print(f"evaluate_continue: error: {e}", file=sys.stderr)
        return 2
    seam = video.video_frames(c, args.given)  # the first video frame made after the given ones
    starts = [video.video_frames(c, k) for k in range(f, args.given + args.frames, f)]
    rows, pictures = [], []
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for prompt in prompts:
            for seed in seeds:
                whole = make(c, models, prompt, seed, args.given + args.frames)
                given = os.path.join(tmp, "given.mp4")
                media.write_mp4(given, whole[:seam], fps=c.output.fps)
                cc = c.but(inputs=dict(init_video=given))
                cont = make(cc, models, prompt, seed, args.frames)
                rows.append(dict(prompt=prompt, seed=seed, jump=jump_at(cont, seam, starts),
                                 jump_ref=jump_at(whole, seam, starts),
                                 adh=metrics.prompt_adherence(cont[seam:], prompt, c.output.fps),
                                 adh_ref=metrics.prompt_adherence(whole[seam:], prompt, c.output.fps)))
                pictures.append(cont[seam - 3:seam + 3])
                print(f"{prompt[:60]:<60} seed {seed}: " + "  ".join(f"{k} {rows[-1][k]:.3f}"
                                                                      for k in ("jump", "jump_ref", "adh", "adh_ref")))
    cols = ["jump", "jump_ref", "adh", "adh_ref"]
    print(f"\n## {args.given} latent frames given, {args.frames} made after them; {len(rows)} videos (means)")
    print("  ".join(f"{k:>8}" for k in cols))
    print("  ".join(f"{_mean([r[k] for r in rows]):8.3f}" for k in cols))
    print("worst jump %.3f" % max(r["jump"] for r in rows))
    write_text(os.path.join(args.out, "continue.json"), json.dumps(dict(rows=rows, given=args.given,
                                                                        frames=args.frames), indent=1))
    _picture(pictures, os.path.join(args.out, "seams.png"))
    return 0


def _picture(clips, path: str) -> None:
    """One row per video: 3 given frames | 3 made frames, a wider gap at the seam, 2x."""
    rows = []
    for clip in clips:
        up = [np.kron(f, np.ones((2, 2, 1), np.uint8)) for f in clip]
        gap = lambda w: np.full((up[0].shape[0], w, 3), 255, np.uint8)
        rows.append(np.concatenate([up[0], gap(2), up[1], gap(2), up[2], gap(10), up[3], gap(2), up[4], gap(2),
                                    up[5]], axis=1))
    sep = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    write_png(path, np.concatenate([x for r in rows for x in (r, sep)][:-1]))


if __name__ == "__main__":
    sys.exit(main())
