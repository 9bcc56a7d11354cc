"""Type the attention heads of a model: profiles -> head map (CSV + JSON) + figures.

  python tools/classify_heads.py --profiles FILE.npz --out MAP.csv [--exclude-last 3]
  python tools/classify_heads.py --config=configs/demo.py --out MAP.csv [--frames 72]
  pyramid-classify-heads ... (the same flags)

With --config, calibration rollouts (nothing evicted) of the config's prompts record the
profiles first (saved beside the map as MAP.profiles.npz), on one device (mesh.data and
mesh.model must be 0 or 1).

  python tools/classify_heads.py --config=configs/demo.py --policy forcing_kv --out MAP.json

types heads for Forcing-KV instead (static / dynamic, by its rule: the last frame's attention
mass on the last 4 frames over its mass on every frame but the first, static at 0.8 or more),
from the same calibration rollouts; the map is a head-map JSON (cache.head_map of
cache.policy=forcing_kv), the masses beside it as MAP.masses.npz.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

import numpy as np

from pyramid_jax import pipeline
from pyramid_jax.cache.head_map import STATIC, TYPE_NAMES, HeadMapError, save_head_map_csv, save_head_map_json
from pyramid_jax.heads.classify import ClassifyConfig, StaticRule, classify_heads, static_heads
from pyramid_jax.heads.figures import draw_figures
from pyramid_jax.cli import harness
from pyramid_jax.errors import UserError
from pyramid_jax.media import save_npz
from pyramid_jax.heads.calibrate import record_masses, record_profiles
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
    p.add_argument("--policy", choices=("pyramid", "forcing_kv"), default="pyramid",
                   help="whose head types: Pyramid's Anchor / Wave / Veil, or Forcing-KV's static / dynamic")
    d = ClassifyConfig()
    for f in dataclasses.fields(ClassifyConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)),
                       default=getattr(d, f.name))
    args = p.parse_args(rest)
    if bool(args.profiles) == bool(cfg_args):
        p.error("give exactly one of --profiles FILE.npz or --config=configs/NAME.py")
    if args.policy == "forcing_kv" and not cfg_args:
        p.error("--policy forcing_kv records its attention masses: give --config=configs/NAME.py")
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


def profiles_from_config(cfg_args, frames: int, record=None):
    """Calibration rollouts of the config's prompts (window -1). Returns profiles (record's:
    heads.calibrate.record_profiles or record_masses), prompts, model name."""
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
    prof = (record or record_profiles)(model, sampler, text_kv, noise, frames, grid,
                                       on_chunk=lambda k, n: log.info("calibration chunk %d/%d", k + 1, n))
    name = spec.model.checkpoint or f"random init (dim {cfg.dim}, {cfg.num_layers} layers)"
    return prof, prompts_of(spec), name


def body(argv: list[str]) -> None:
    args, cfg_args = parse_args(argv)
    stem = os.path.splitext(args.out)[0]
    if args.policy == "forcing_kv":
        return forcing_kv_body(args, cfg_args, stem)
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


def forcing_kv_body(args, cfg_args, stem: str) -> None:
    """Forcing-KV's static / dynamic heads from calibration rollouts' attention masses."""
    masses, prompts, model_name = profiles_from_config(cfg_args, args.frames, record_masses)
    save_npz(stem + ".masses.npz", masses=masses.astype(np.float32), prompts=np.asarray(prompts))
    log.info("wrote %s.masses.npz %s", stem, list(masses.shape))
    rule = StaticRule()
    try:
        head_map, score = static_heads(masses, rule)
        save_head_map_json(stem + ".json", head_map, model=model_name, prompts=prompts, policy="forcing_kv",
                           rule=dataclasses.asdict(rule), scores=score.round(4), num_profile_frames=int(masses.shape[-1]))
    except (ValueError, HeadMapError) as e:
        raise UserError(str(e)) from None
    log.info("wrote %s.json (static %d, dynamic %d)", stem, int((head_map == STATIC).sum()),
             int((head_map != STATIC).sum()))


def main(argv=None) -> int:
    """argv: the arguments after the program name (sys.argv[1:] when None)."""
    return harness.run(NAME, body, argv)


if __name__ == "__main__":
    sys.exit(main())
