"""Does re-caching the kept frames help a prompt switch? (the studio's "re-cache" box)

  python tools/evaluate_switch.py --config=configs/demo.py \
      --pairs "PROMPT A>PROMPT B;..." --seeds 0,1 [--frames 48] [--switch 18] [--policy window] \
      [--out runs/switch]

Per pair i (seed i): the video of B alone, of A alone, and A switched to B at latent frame
--switch without and with re-caching the frames made so far under B. After the switch:
  to_B      RGB distance of each frame's mean colour from the B-alone video's (lower: closer)
  to_A      the same from the A-alone video (higher: left A)
  B_adh     prompt adherence to B (metrics.prompt_adherence) from 1 s after the switch: B's
            named background and shape colours on screen (shapes captions; NaN otherwise)
  jump      mean |frame change| into the switch frame over the mean change inside chunks
A table and DIR/switch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from pyramid_jax import logs, metrics, pipeline, video
from pyramid_jax.config import parse_spec
from pyramid_jax.errors import UserError
from pyramid_jax.media import write_text
from pyramid_jax.sampling.rollout import ChunkLoop, RandomNoise, text_kv_of

def make_video(c, models, prompts_at: dict[int, str], seed: int, recache: bool) -> np.ndarray:
    """uint8 frames [T, H, W, 3] of one video; prompts_at: {chunk: prompt} (0 must be set)."""
    cfg, f = models.dit.cfg, c.sampler.frames_per_chunk
    hw = pipeline.latent_size(c, cfg)
    policy = pipeline.build_policy(c, cfg, hw, c.inputs.num_frames)
    encode = lambda p: text_kv_of(models.dit, models.text([p]), sampler=models.sampler)
    noise = RandomNoise(seed, (1, c.inputs.num_frames, cfg.in_channels, *hw), models.sampler)
    loop = ChunkLoop(models.dit, policy, models.sampler, encode(prompts_at[0]), noise)
    decoder = video.video_decoder(c, 1, hw, models.vae)
    latents, frames = [], []
    for k in range(c.inputs.num_frames // f):
        if k and k in prompts_at:
            loop.set_text(encode(prompts_at[k]))
            if recache:
                loop.recache(np.concatenate(latents, axis=1))
        x0 = loop.next()[0]
        latents.append(x0)
        frames.append(decoder.push(x0)[0])
    return np.concatenate(frames)


def measure(v, only_a, only_b, start: int, fps: int, inside_starts, b_prompt: str) -> dict:
    """start: the first video frame made under B."""
    means = lambda x: np.asarray(x[start:], np.float32).mean(axis=(1, 2))
    d = np.abs(np.diff(np.asarray(v, np.float32), axis=0)).mean(axis=(1, 2, 3))
    inside = np.delete(d, np.asarray(inside_starts) - 1).mean()
    return dict(to_B=float(np.linalg.norm(means(v) - means(only_b), axis=-1).mean()),
                to_A=float(np.linalg.norm(means(v) - means(only_a), axis=-1).mean()),
                B_adh=metrics.prompt_adherence(v[start:], b_prompt, fps),
                jump=float(d[start - 1] / max(inside, 1e-6)))


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logs.setup()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help='"PROMPT A>PROMPT B;..."')
    p.add_argument("--seeds", default="0")
    p.add_argument("--frames", type=int, default=48, help="latent frames per video")
    p.add_argument("--switch", type=int, default=18, help="latent frame where B starts")
    p.add_argument("--policy", default="", help="cache policy (default: the config's)")
    p.add_argument("--out", default="runs/switch")
    args, rest = p.parse_known_args(argv[1:])
    try:
        pairs = [tuple(x.strip() for x in pair.split(">")) for pair in args.pairs.split(";") if pair.strip()]
        seeds = [int(s) for s in args.seeds.split(",")]
        if any(len(pr) != 2 or not all(pr) for pr in pairs) or len(seeds) != len(pairs):
            raise UserError("--pairs needs 'A>B' entries, and --seeds one seed per pair")
        c = parse_spec([argv[0], *rest, f"--config.num_frames={args.frames}"] +
                         ([f"--config.cache.policy={args.policy}"] if args.policy else []))
        pipeline.check_config(c)
        f = c.sampler.frames_per_chunk
        if args.switch % f or not 0 < args.switch < args.frames:
            raise UserError(f"--switch must be a multiple of {f} inside the video")
        models = pipeline.load_models(c)
    except UserError as e:
        print(f"evaluate_switch: error: {e}", file=sys.stderr)
        return 2
    k, time_stride = args.switch // f, video.strides(c)[0]
    start = video.video_frames(c, args.switch)  # the first video frame decoded from frame `switch`
    inside = np.arange(video.video_frames(c, f), video.video_frames(c, args.frames), f * time_stride)
    rows = []
    for (a, b), seed in zip(pairs, seeds):
        only_a = make_video(c, models, {0: a}, seed, False)
        only_b = make_video(c, models, {0: b}, seed, False)
        for recache in (False, True):
            v = make_video(c, models, {0: a, k: b}, seed, recache)
            rows.append(dict(pair=[a, b], seed=seed, recache=recache,
                             **measure(v, only_a, only_b, start, c.output.fps, inside, b)))
        rows.append(dict(pair=[a, b], seed=seed, recache=None,
                         **measure(only_b, only_a, only_b, start, c.output.fps, inside, b)))
    cols = ["to_B", "to_A", "B_adh", "jump"]
    print(f"\n## switch at latent frame {args.switch} of {args.frames}, cache {c.cache.policy}, "
          f"{len(pairs)} pairs (means)")
    print("variant              " + "  ".join(f"{x:>8}" for x in cols))
    for name, rc in (("switch", False), ("switch + re-cache", True), ("B alone", None)):
        sel = [r for r in rows if r["recache"] is rc]
        print(f"{name:<20} " + "  ".join(f"{np.nanmean([r[x] for r in sel]):8.3f}" for x in cols))
    os.makedirs(args.out, exist_ok=True)
    write_text(os.path.join(args.out, "switch.json"), json.dumps(dict(rows=rows, switch=args.switch,
                                                                      frames=args.frames), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
