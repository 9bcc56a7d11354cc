"""Type the attention heads of a model: profiles -> head map (CSV + JSON) + figures.

  python tools/classify_heads.py --profiles FILE.npz --out MAP.csv [--exclude-last 3]
  python tools/classify_heads.py --config=configs/demo.py --out MAP.csv [--frames 72]
  pyramid-classify-heads ... (the same flags)

With --config, calibration rollouts (nothing evicted) of the config's prompts record the
profiles first (saved beside the map as MAP.profiles.npz), on one device (mesh.data and
mesh.model must be 0 or 1).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

import numpy as np

from pyramid_jax import pipeline
from pyramid_jax.cache.head_map import TYPE_NAMES, HeadMapError, save_head_map_csv, save_head_map_json
from pyramid_jax.heads.classify import ClassifyConfig, classify_heads
from pyramid_jax.heads.figures import draw_figures
from pyramid_jax.cli import harness
from pyramid_jax.errors import UserError
from pyramid_jax.media import save_npz
from pyramid_jax.heads.calibrate import record_profiles
from pyramid_jax.sampling.rollout import RandomNoise, text_kv_of
from pyramid_jax.text import prompt_context, prompts_of

NAME = "classify_heads"
log = logging.getLogger(NAME)


def parse_args(argv):
    rest, cfg_args = harness.split_config(argv)
    p = harness.parser(NAME, __doc__)
    p.add_argument("--profiles", help="npz with `profiles` [P, L, H, T] (history frames only)")
    p.add_argument("--out", required=True, help="head map CSV; JSON and PNGs are written beside it")
    p.add_argument("--exclude-last", type=int, default=0,
                   help="drop this many trailing frames (e.g. 3 when the query's own chunk is included)")
    p.add_argument("--frames", type=int, default=72, help="latent frames per calibration rollout (--config)")
    p.add_argument("--no-figures", action="store_true")
    d = ClassifyConfig()
    for f in dataclasses.fields(ClassifyConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)),
                       default=getattr(d, f.name))
    args = p.parse_args(rest)
    if bool(args.profiles) == bool(cfg_args):
        p.error("give exactly one of --profiles FILE.npz or --config=configs/NAME.py")
    args.thresholds = ClassifyConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ClassifyConfig)})
    return args, cfg_args


def load_profiles(path: str, exclude_last: int):
    if not os.path.isfile(path):
        raise UserError(f"profiles {path!r}: no such file")
    try:
        data = np.load(path)
        prof = np.asarray(data["profiles"], np.float64)
        prompts = [str(s) for s in data["prompts"]] if "prompts" in data.files else []
    except KeyError:
        raise UserError(f"profiles {path!r} has no `profiles` array") from None
    except Exception as e:
        raise UserError(f"profiles {path!r}: not a readable npz ({type(e).__name__})") from None
    if prof.ndim != 4:
        raise UserError(f"profiles {path!r} has shape {list(prof.shape)}; expected [prompts, layers, heads, frames]")
    if exclude_last:
        prof = prof[..., :-exclude_last]
    return prof, prompts


def profiles_from_config(cfg_args, frames: int):
    """Calibration rollouts of the config's prompts (window -1). Returns profiles, prompts, model name."""
    spec = harness.run_spec(NAME, cfg_args)
    harness.one_device(spec, NAME)
    pipeline.check_config(spec)
    models = pipeline.load_models(spec, decoder=False)
    model, sampler, cfg = models.dit, models.sampler, models.dit.cfg
    context = prompt_context(spec, cfg, models.text)
    f = spec.sampler.frames_per_chunk
    lh, lw = pipeline.latent_size(spec, cfg)
    grid = (lh // cfg.patch_size[1], lw // cfg.patch_size[2])
    if frames % f or frames < 2 * f:
        raise UserError(f"--frames must be a multiple of {f} and at least {2 * f}, got {frames}")
    log.info("calibration: %d prompts x %d latent frames, nothing evicted", context.shape[0], frames)
    text_kv = text_kv_of(model, context, sampler=sampler)
    noise = RandomNoise(spec.inputs.seed, (context.shape[0], frames, cfg.in_channels, lh, lw), sampler)
    prof = record_profiles(model, sampler, text_kv, noise, frames, grid,
                           on_chunk=lambda k, n: log.info("calibration chunk %d/%d", k + 1, n))
    name = spec.model.checkpoint or f"random init (dim {cfg.dim}, {cfg.num_layers} layers)"
    return prof, prompts_of(spec), name


def body(argv: list[str]) -> None:
    args, cfg_args = parse_args(argv)
    stem = os.path.splitext(args.out)[0]
    if args.profiles:
        profiles, prompts = load_profiles(args.profiles, args.exclude_last)
        model_name = f"profiles from {args.profiles}"
    else:
        profiles, prompts, model_name = profiles_from_config(cfg_args, args.frames)
        save_npz(stem + ".profiles.npz", profiles=profiles.astype(np.float32), prompts=np.asarray(prompts))
        log.info("wrote %s.profiles.npz %s", stem, list(profiles.shape))
    try:
        head_map, per_prompt = classify_heads(profiles, args.thresholds)
        save_head_map_csv(args.out, head_map)
        save_head_map_json(stem + ".json", head_map, model=model_name, prompts=prompts,
                           thresholds=dataclasses.asdict(args.thresholds),
                           per_prompt=per_prompt, num_profile_frames=int(profiles.shape[-1]))
    except (ValueError, HeadMapError) as e:
        raise UserError(str(e)) from None
    counts = ", ".join(f"{TYPE_NAMES[t]} {int((head_map == t).sum())}" for t in (1, -1, 2))
    log.info("wrote %s and %s.json (%s)", args.out, stem, counts)
    if not args.no_figures:
        for png in draw_figures(stem, head_map, profiles, args.thresholds):
            log.info("wrote %s", png)


def main(argv=None) -> int:
    """argv: the arguments after the program name (sys.argv[1:] when None)."""
    return harness.run(NAME, body, argv)


if __name__ == "__main__":
    sys.exit(main())
