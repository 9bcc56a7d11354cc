"""Train the demo model on this machine's CPU: a small causal Wan DiT and its tiny umT5 text
encoder, together, on procedural shapes videos read through TensorFlow Datasets.

  python tools/train_demo.py --out assets/demo --steps 9000                  # stage 1
  python tools/train_demo.py --out assets/demo --steps 11600 --fg-weight 8   # stage 2 (resumes it)

Resumable: WORK (default runs/train_demo) holds the dataset and the checkpoints; run the same
command again after a kill or a --max-minutes stop and it continues from the newest
checkpoint, with the same result as an uninterrupted run (each step's batch and noise depend
only on the seed and the step). When all steps are done the EMA weights are written to OUT:

  OUT/dit/            the DiT (pyramid_jax checkpoint; config.json says how it was trained)
  OUT/text/umt5/      the text encoder, trained with the DiT
  OUT/text/spiece.model   a sentencepiece vocabulary of the caption words

The recipe (docs/demo_model.md has the measurements behind each choice): the DiT works on
64x64 RGB pixels in patches of 8x8 (64 tokens a frame) and predicts the clean frames (x0; a
flow head cannot pass 192 values of noise through a 128-wide token); 6-frame clips (two
chunks: the second attends the first, as at inference) cut from 12-frame clips; the noise
levels trained are the 8 of the demo sampler (configs/demo.py samples them, or every other
one); the first chunk is clean or lightly noised context half of the time; 10% of the
captions are dropped for classifier-free guidance; an EMA of the weights is what ships.
Stage 2 resumes the run with the shapes' pixels of each clip's first chunk weighted in the
loss (--fg-weight): stage 1 alone learns the backgrounds and loses the shapes. --switch S (not
in the shipped recipe) gives a share S of the samples another clip's frames as context under
their own caption, so the model learns to follow a prompt switch instead of keeping its scene.

--probe-every N samples the EMA weights every N steps as the demo does (2 s of 8 captions of the
dataset's test split, or --probe-prompts FILE, 2 seeds) and logs their prompt adherence and the
named shape's share of the frame (also to WORK/probes.jsonl): the loss says neither. It does not
change the weights, and its seconds are not counted as training minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pyramid_jax import logs
from pyramid_jax.media import write_text

log = logging.getLogger("train_demo")

# The demo sampler's 8 steps (configs/demo.py samples these or every other one): the noise
# levels trained. The second last is the 4-step sampler's last, where the frames it keeps
# come from (--self-context's estimates start there).
DEMO_STEPS = (1000, 875, 750, 625, 500, 375, 250, 125)
DEMO_SHIFT = 2.0


def dit_config(args):
    from pyramid_jax.models.wan.modeling import WanConfig

    return WanConfig(dim=args.dim, ffn_dim=4 * args.dim, num_heads=args.heads, num_layers=args.layers,
                     in_channels=3, out_channels=3, patch_size=(1, args.patch, args.patch), text_len=32,
                     text_dim=64, freq_dim=64, prediction=args.prediction)


def t5_config(vocab_size: int):
    from pyramid_jax.models.umt5.modeling import UMT5Config

    return UMT5Config(vocab_size=vocab_size, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2)


def build_vocabulary(out: str) -> str:
    """OUT/spiece.model: one word piece per caption word (pad 0, end 1, unknown 2)."""
    import sentencepiece as spm

    from pyramid_jax.data.shapes import random_clip

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "spiece.model")
    if os.path.exists(path):
        return path
    captions = {random_clip(i).caption for i in range(20000)}
    words = {w for c in captions for w in c.split()}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "captions.txt")
        with open(corpus, "w") as fh:
            fh.write("\n".join(sorted(captions)) + "\n")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(tmp, "spiece"), model_type="word",
            vocab_size=len(words) + 3, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            character_coverage=1.0, minloglevel=2)
        os.replace(os.path.join(tmp, "spiece.model"), path)
    log.info("vocabulary: %d caption words -> %s", len(words), path)
    return path


def encode_captions(text_dir: str, captions: list[str], text_len: int) -> np.ndarray:
    """[N, text_len, d_model] float32: the context the training step computes for these
    captions from the text encoder in text_dir (umt5/, spiece.model)."""
    from pyramid_jax.models.umt5 import modeling as umt5
    from pyramid_jax.training import text_context
    from pyramid_jax.weights.checkpoint import load_t5

    encoder = load_t5(os.path.join(text_dir, "umt5"))
    ids, mask = umt5.Tokenizer(os.path.join(text_dir, "spiece.model"), text_len)(captions)
    encode = jax.jit(lambda p, i, m: text_context({"text": p}, (i, m), encoder.cfg))
    return np.asarray(encode(encoder.params(), ids, mask))


PROBE_PROMPTS = 8  # default: the captions of the first clips of the dataset's test split


def probe_prompts(path: str = "") -> list[str]:
    """The probe's captions: the lines of `path`, or the captions of the first PROBE_PROMPTS
    clips of the dataset's test split (clips training never draws)."""
    from pyramid_jax.data import shapes
    from pyramid_jax.data.shapes_tfds import TEST_SEED

    if path:
        with open(path) as fh:
            return [line.strip() for line in fh if line.strip()]
    return [shapes.random_clip(TEST_SEED + i).caption for i in range(PROBE_PROMPTS)]


def probe(graphdef, params, t5_cfg, tokenizer, args, prompts: list[str], seeds=(0, 1)) -> dict:
    """How the weights `params` ({"dit", "text"}, e.g. the EMA) do as the demo samples them:
    `configs/demo.py`'s sampler (its step list) at this run's shift and size, the window of 12, 2 s per
    (prompt, seed); returns the mean prompt adherence (from 1 s on) and the named shape's share
    of the frame (tools/evaluate_prompts.py's measures), over the prompts. Training loss does
    not say either: a run's loss kept falling while its videos lost their shapes."""
    from evaluate_prompts import Collect, score

    from pyramid_jax import pipeline, video
    from pyramid_jax.config import parse_spec
    from pyramid_jax.sampling.rollout import RandomNoise
    from pyramid_jax.training import text_context

    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")
    spec = parse_spec(["probe", f"--config={demo}", f"--config.shift={args.shift}", f"--config.height={args.size}",
                       f"--config.width={args.size}", "--config.num_frames=21", "--config.guidance_scale=1",
                       "--config.cache.policy=window", "--config.output="])
    pairs = [(p, s) for p in prompts for s in seeds]
    ids, mask = tokenizer([p for p, _ in pairs])
    context = np.asarray(jax.jit(text_context, static_argnums=2)({"text": params["text"]}, (ids, mask), t5_cfg))
    dit = nnx.merge(graphdef, params["dit"])
    sampler = pipeline.make_sampler(spec)
    hw = (args.size, args.size)
    noise = RandomNoise([s for _, s in pairs], (len(pairs), spec.inputs.num_frames, 3, *hw), sampler)
    job = pipeline.GenerationInputs(context, noise, spec.inputs.num_frames, hw)
    frames, quiet = [], logging.getLogger("pyramid_jax")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the generation's progress lines would crowd the training log
    try:
        pipeline.generate(spec, pipeline.LoadedModels(dit, None, None, sampler), job,
                          sink=Collect(video.PixelFrames(), frames))
    finally:
        quiet.setLevel(level)
    rows = score(np.concatenate(frames, axis=1), prompts, list(seeds), int(spec.output.fps))
    return dict(adherence=float(np.mean([r["adherence"] for r in rows])),
                shape_area=float(np.mean([r["shape_area"] for r in rows])))


def recipe_of(args):
    from pyramid_jax.sampling.schedule import FlowSchedule
    from pyramid_jax.training import Recipe

    levels = FlowSchedule(shift=args.shift).warp(DEMO_STEPS)
    return Recipe(frames_per_chunk=3, schedule=FlowSchedule(shift=args.shift), timesteps=tuple(map(float, levels)),
                  clean_context_prob=args.context_prob, context_t_max=args.context_t_max,
                  text_drop_prob=args.text_drop, foreground_weight=args.fg_weight,
                  self_context_prob=args.self_context, self_context_t=float(levels[-2]),
                  switch_prob=args.switch, remat=False)


class Batches:
    """Step s's batch: clips and crops drawn from rng(seed, s) alone (resumable), as model
    frames [B, F, 3, S, S], caption token ids / masks [B, text_len] and, with_foreground,
    the shapes' pixels [B, F, 1, S, S] (else None; the captioned shape's colour counts `named`)."""

    def __init__(self, source, tokenizer, batch: int, frames: int, seed: int, with_foreground: bool = False,
                 named: float = 1.0):
        self.source, self.tokenizer, self.batch, self.frames, self.seed = source, tokenizer, batch, frames, seed
        self.with_foreground, self.named = with_foreground, named

    def __call__(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        idx = rng.integers(0, len(self.source), self.batch)
        records = [self.source[int(i)] for i in idx]
        clip_frames = records[0]["video"].shape[0]
        starts = rng.integers(0, clip_frames - self.frames + 1, self.batch)
        video = np.stack([r["video"][s:s + self.frames] for r, s in zip(records, starts)])
        captions = [r["caption"].decode() for r in records]
        ids, mask = self.tokenizer(captions)
        frames = (video.astype(np.float32) / 127.5 - 1.0).transpose(0, 1, 4, 2, 3)
        return frames, ids, mask, foreground(video, captions, self.named) if self.with_foreground else None


def foreground(video, captions, named: float = 1.0) -> np.ndarray:
    """float32 [B, F, 1, H, W]: the shapes' pixels of a batch of clips [B, F, H, W, 3], found
    from the background each caption names: 1, or `named` where a pixel has the colour the
    caption gives its shape (the shape the text names; other shapes of that colour too)."""
    from pyramid_jax.data import shapes
    from pyramid_jax.metrics import caption_colors

    masks = []
    for v, c in zip(video, captions):
        shape, background = caption_colors(c)
        fg = shapes.foreground(v, background).astype(np.float32)
        if named != 1.0:
            fg = np.where(fg > 0, np.where(shapes.color_pixels(v, shape), named, 1.0), 0.0)
        masks.append(fg)
    return np.stack(masks).astype(np.float32)[:, :, None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="where the trained model goes (dit/, text/)")
    p.add_argument("--work", default="runs/train_demo", help="dataset and checkpoints (resumable)")
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=6, help="frames per training clip (a multiple of 3)")
    p.add_argument("--size", type=int, default=64, help="frame height and width (pixels)")
    p.add_argument("--patch", type=int, default=8, help="pixels per token side")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--prediction", default="x0", choices=["x0", "flow"], help="what the DiT's head predicts")
    p.add_argument("--clips", type=int, default=20000, help="train clips in the dataset")
    p.add_argument("--clip-frames", type=int, default=12, help="frames per dataset clip (crops are cut from them)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--shift", type=float, default=DEMO_SHIFT, help="the sampler's shift (its noise levels are trained)")
    p.add_argument("--context-prob", type=float, default=0.5, help="share of samples with a context chunk")
    p.add_argument("--context-t-max", type=float, default=100.0, help="context chunks noised up to this timestep")
    p.add_argument("--text-drop", type=float, default=0.1, help="share of captions dropped (guidance)")
    p.add_argument("--fg-weight", type=float, default=0.0,
                   help="extra loss weight of the shapes' pixels (0 = every pixel alike)")
    p.add_argument("--fg-named", type=float, default=1.0,
                   help="with --fg-weight: the pixels of the colour the caption gives its shape count this many "
                        "times in the weighted foreground (1 = every shape alike)")
    p.add_argument("--self-context", type=float, default=0.0,
                   help="share of context chunks replaced by the model's own estimate of them from the "
                        "sampler's last noise level (a self-rollout stage against drift)")
    p.add_argument("--switch", type=float, default=0.0,
                   help="share of samples whose context chunk is another clip's, under their own caption "
                        "(teaches the model to follow a prompt switch; not in the shipped recipe)")
    p.add_argument("--probe-every", type=int, default=0,
                   help="every this many steps, sample the EMA weights as the demo does and log their prompt "
                        "adherence and shape size (0 = never; a few seconds each)")
    p.add_argument("--probe-prompts", default="",
                   help="a text file of captions for the probe (default: 8 of the dataset's test split)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--max-minutes", type=float, default=0, help="save and stop after this long (resume later)")
    p.add_argument("--run-steps", type=int, default=0, help="save and stop after this many steps (resume later)")
    p.add_argument("--export-now", action="store_true",
                   help="only write OUT from the newest checkpoint's EMA weights (a look at a run in progress)")
    args = p.parse_args(argv)
    logs.setup()
    problem = check_args(args)
    if problem:
        print(f"train_demo: error: {problem}", file=sys.stderr)
        return 2
    return train(args)


def check_args(args) -> str:
    if args.frames % 3 or args.frames < 3:
        return f"--frames must be a positive multiple of 3, got {args.frames}"
    if args.size % args.patch:
        return f"--size {args.size} is not a multiple of --patch {args.patch}"
    if args.clip_frames < args.frames:
        return f"--clip-frames {args.clip_frames} is shorter than --frames {args.frames}"
    if args.dim % args.heads:
        return f"--dim {args.dim} is not divisible by --heads {args.heads}"
    if not 0 <= args.self_context <= 1:
        return f"--self-context is a share in [0, 1], got {args.self_context:g}"
    if not 0 <= args.switch <= 1:
        return f"--switch is a share in [0, 1], got {args.switch:g}"
    if args.fg_weight < 0:
        return f"--fg-weight must be >= 0 (0 = every pixel alike), got {args.fg_weight:g}"
    if args.fg_named < 0:
        return f"--fg-named must be >= 0 (1 = every shape alike), got {args.fg_named:g}"
    if args.probe_every < 0:
        return f"--probe-every must be >= 0 (0 = never), got {args.probe_every}"
    if args.probe_prompts:  # checked now: a bad file would otherwise stop the run at its first probe
        from pyramid_jax.metrics import caption_colors

        try:
            prompts = probe_prompts(args.probe_prompts)
        except FileNotFoundError:
            return f"--probe-prompts {args.probe_prompts}: no such file"
        except (OSError, UnicodeDecodeError) as e:
            return f"--probe-prompts {args.probe_prompts}: cannot read it ({getattr(e, 'strerror', None) or e})"
        outside = [p for p in prompts if caption_colors(p) is None]
        if not prompts or outside:
            return (f"--probe-prompts {args.probe_prompts}: " + (f"'{outside[0]}' is not a shapes caption "
                    "(a <colour> <shape> ... on a <colour> <texture> background)" if outside else "no captions"))
    return ""


def clips_of(args, work: str):
    """The training clips through TFDS (built in WORK/data on the first run)."""
    from pyramid_jax.data import shapes_tfds

    data_dir = os.path.join(work, "data")
    name = shapes_tfds.prepare(data_dir, args.size, args.clip_frames, args.clips)
    log.info("clips: %s in %s", name, data_dir)
    return shapes_tfds.data_source(data_dir, name)


def train(args, source=None) -> int:
    """source: the clips (default: the TFDS dataset of args); source[i] -> {"video", "caption"}."""
    import orbax.checkpoint as ocp

    from pyramid_jax.models.umt5 import modeling as umt5
    from pyramid_jax.models.wan.modeling import init_model
    from pyramid_jax.training import make_optimizer, train_step
    from pyramid_jax.models.umt5.params import random_t5_params

    t_start = time.perf_counter()
    work, out = os.path.abspath(args.work), os.path.abspath(args.out)
    vocab = build_vocabulary(os.path.join(work, "text"))
    tokenizer = umt5.Tokenizer(vocab, 32)
    source = clips_of(args, work) if source is None else source
    log.info("%d train clips ready in %.1f s", len(source), time.perf_counter() - t_start)
    batches = Batches(source, tokenizer, args.batch, args.frames, args.seed, with_foreground=args.fg_weight > 0,
                      named=args.fg_named)

    cfg, t5_cfg = dit_config(args), t5_config(tokenizer.sp.get_piece_size())
    graphdef, dit = nnx.split(init_model(cfg, seed=args.seed))
    params = {"dit": dit, "text": jax.tree.map(jnp.asarray, random_t5_params(t5_cfg, args.seed))}
    opt = make_optimizer(lr=args.lr, warmup=args.warmup, total_steps=args.steps)
    opt_state, ema = opt.init(params), jax.tree.map(jnp.copy, params)
    recipe = recipe_of(args)
    log.info("DiT %d params, text encoder %d params; recipe %s", _count(params["dit"]), _count(params["text"]), recipe)

    mgr = ocp.CheckpointManager(os.path.join(work, "ckpt"), options=ocp.CheckpointManagerOptions(max_to_keep=2))
    start, spent = 0, 0.0
    if mgr.latest_step() is not None:
        start = mgr.latest_step()
        params, opt_state, ema, spent = restore(mgr, start, params, opt_state, ema)
        log.info("resumed from %s at step %d (%.1f min of training before)", mgr.directory, start, spent / 60)
    stages = record_stage(work, start, args)
    prompts = probe_prompts(args.probe_prompts) if args.probe_every else []
    key = jax.random.key(args.seed)
    t0, losses, step, done = time.perf_counter(), [], start, start
    stop = start if args.export_now else args.steps if not args.run_steps else min(args.steps, start + args.run_steps)
    for step in range(start, stop):
        frames, ids, mask, fg = batches(step)
        params, opt_state, loss, ema = train_step(graphdef, opt, params, opt_state, jnp.asarray(frames),
                                                  (jnp.asarray(ids), jnp.asarray(mask)), jax.random.fold_in(key, step),
                                                  recipe=recipe, text_cfg=t5_cfg, ema=ema, ema_decay=args.ema,
                                                  foreground=None if fg is None else jnp.asarray(fg))
        losses.append(loss)
        done = step + 1
        if done % 50 == 0 or done == stop or done - start in (1, 3):
            mean = float(np.mean(jax.device_get(losses[-50:])))  # waits for the queued steps
            sec = time.perf_counter() - t0
            rate = (done - start) / sec
            log.info("step %d/%d  loss %.4f  %.2f steps/s  %.1f min, ETA %.1f min", done, args.steps, mean, rate,
                     (spent + sec) / 60, (args.steps - done) / rate / 60)
        out_of_time = args.max_minutes and time.perf_counter() - t_start > 60 * args.max_minutes
        if done % args.save_every == 0 or done == stop or out_of_time:
            save(mgr, done, params, opt_state, ema, spent + time.perf_counter() - t0)
        if args.probe_every and done % args.probe_every == 0:
            t_probe = time.perf_counter()
            got = probe(graphdef, ema, t5_cfg, tokenizer, args, prompts)
            t0 += time.perf_counter() - t_probe  # training minutes stay the training's
            log.info("probe at step %d: adherence %.3f, named shape area %.0f%% of the frame (%d prompts x 2 seeds, "
                     "2 s; %.0f s)", done, got["adherence"], 100 * got["shape_area"], len(prompts),
                     time.perf_counter() - t_probe)
            with open(os.path.join(work, "probes.jsonl"), "a") as fh:
                fh.write(json.dumps(dict(step=done, **got)) + "\n")
        if out_of_time:
            break
    mgr.wait_until_finished()
    spent += time.perf_counter() - t0
    if done < args.steps and not args.export_now:
        log.info("stopped at step %d of %d: run the same command again to continue", done, args.steps)
        return 0
    final_loss = float(np.mean(jax.device_get(losses[-200:]))) if losses else float("nan")
    export(out, vocab, graphdef, ema, cfg, t5_cfg, args, spent, final_loss, done, stages)
    log.info("(%.1f min in all this run)", (time.perf_counter() - t_start) / 60)
    return 0


def _count(tree) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def _pure(params):
    return {"dit": nnx.to_pure_dict(params["dit"]), "text": params["text"]}


def save(mgr, step, params, opt_state, ema, seconds):
    import orbax.checkpoint as ocp

    state = {"params": _pure(params), "opt": opt_state, "ema": _pure(ema), "seconds": np.float64(seconds)}
    mgr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore(mgr, step, params, opt_state, ema):
    """(params, opt_state, ema, training seconds so far) of checkpoint `step`."""
    import orbax.checkpoint as ocp

    target = {"params": _pure(params), "opt": opt_state, "ema": _pure(ema), "seconds": np.float64(0)}
    got = mgr.restore(step, args=ocp.args.StandardRestore(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype), target)))
    for tree, pure in ((params, got["params"]), (ema, got["ema"])):
        nnx.replace_by_pure_dict(tree["dit"], pure["dit"])
        tree["text"] = pure["text"]
    return params, got["opt"], ema, float(got["seconds"])


def record_stage(work: str, start: int, args) -> list[dict]:
    """WORK/stages.json: from which step each run's arguments held (a run resumed with other
    arguments, e.g. a later --fg-weight, is a new stage); returns the stages up to this run."""
    path = os.path.join(work, "stages.json")
    stages = []
    if os.path.exists(path):
        with open(path) as fh:
            stages = json.load(fh)
    stages = [s for s in stages if s["from_step"] < start]  # a rerun from an earlier checkpoint replaces the rest
    recipe = {k: v for k, v in vars(args).items() if k not in NOT_RECIPE}
    if args.export_now or (stages and _same_stage(stages[-1]["args"], recipe)):
        return stages
    stages.append({"from_step": start, "args": recipe})
    write_text(path, json.dumps(stages, indent=1))
    return stages


# what a run is told that does not change its weights
NOT_RECIPE = ("out", "work", "export_now", "run_steps", "max_minutes", "probe_every", "probe_prompts")

# options added after runs began: a stage recorded without one ran at its default
LATER_OPTIONS = {"self_context": 0.0, "fg_named": 1.0, "switch": 0.0}


def _same_stage(recorded: dict, recipe: dict) -> bool:
    return all(recorded.get(k, LATER_OPTIONS.get(k)) == v for k, v in recipe.items())


def export(out, vocab, graphdef, ema, cfg, t5_cfg, args, seconds, final_loss, steps, stages=()):
    """The EMA weights after `steps` steps as the demo's files: OUT/dit, OUT/text/umt5,
    OUT/text/spiece.model (final_loss: the mean of this run's last 200 steps, NaN if none;
    stages: what `record_stage` kept)."""
    from pyramid_jax.weights.checkpoint import save_model, save_params

    how = {"training": dict(steps=steps, of_steps=args.steps, minutes=round(seconds / 60, 1),
                            final_loss=round(final_loss, 4),
                            machine=machine(), batch=args.batch, frames=args.frames, size=args.size,
                            recipe={k: v for k, v in vars(args).items() if k not in NOT_RECIPE},
                            stages=list(stages))}
    source = f"tools/train_demo.py: {steps} of {args.steps} steps ({seconds / 60:.0f} min on {machine()}), EMA weights"
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=os.path.dirname(out) or ".")
    try:
        save_model(os.path.join(tmp, "dit"), nnx.merge(graphdef, ema["dit"]), source=source, extra=how)
        save_params(os.path.join(tmp, "text", "umt5"), ema["text"], t5_cfg, source=source, kind="t5", extra=how)
        shutil.copy(vocab, os.path.join(tmp, "text", "spiece.model"))
        os.makedirs(out, exist_ok=True)
        for part in ("dit", "text"):  # replace only what training makes (head maps stay)
            shutil.rmtree(os.path.join(out, part), ignore_errors=True)
            os.rename(os.path.join(tmp, part), os.path.join(out, part))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s (dit, text): %s", out, json.dumps(how["training"], default=str)[:300])


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} CPUs, {jax.devices()[0].platform}, jax {jax.__version__}"


if __name__ == "__main__":
    sys.exit(main())
