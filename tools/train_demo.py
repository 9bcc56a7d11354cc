"""Train a small causal Wan-architecture DiT on the procedural shapes videos (pixel space).

  python tools/train_demo.py --out runs/demo_train --steps 2000 [--batch 4 --frames 12 --size 32]

Resumable: the run directory keeps orbax checkpoints of (params, optimizer state, step) and
a rerun continues from the newest one. At the end the model is written as a pyramid_jax DiT
checkpoint (`OUT/model`, loadable by `load_model`). Captions are encoded by the placeholder
(hash) text embedding until a tiny umT5 is trained on the caption vocabulary.

This is the first stage of the demo model (diffusion-forcing pretraining with block-causal
attention and per-chunk noise); few-step self-rollout training and the VAE are to follow.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

log = logging.getLogger("train_demo")


def demo_dit_config(size: int):
    from pyramid_jax.models.wan import WanConfig

    return WanConfig(dim=128, ffn_dim=384, num_heads=4, num_layers=4, in_channels=3, out_channels=3,
                     patch_size=(1, 4, 4), text_len=32, text_dim=64, freq_dim=64)


def batches(seed: int, batch: int, frames: int, size: int, text_len: int, text_dim: int):
    """Endless (x0 [B, F, 3, S, S] in [-1, 1], context [B, Lt, D]) from shape clips."""
    from pyramid_jax.data.shapes import sample
    from pyramid_jax.generate import placeholder_context
    from pyramid_jax.training import to_model_frames

    i = 0
    while True:
        xs, ctx = [], []
        for _ in range(batch):
            video, caption = sample(seed * 1_000_003 + i, frames, size, size)
            xs.append(to_model_frames(video))
            ctx.append(placeholder_context(caption, text_len, text_dim))
            i += 1
        yield np.stack(xs), np.stack(ctx)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=12, help="frames per clip (a multiple of 3)")
    p.add_argument("--size", type=int, default=32, help="frame height and width (a multiple of 4)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=200)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)  # no-libtpu probe noise
    if args.frames % 3 or args.size % 4:
        print("train_demo: error: --frames must be a multiple of 3 and --size of 4", file=sys.stderr)
        return 2

    import orbax.checkpoint as ocp

    from pyramid_jax.models.wan import init_model
    from pyramid_jax.training import make_optimizer, make_train_step
    from pyramid_jax.weights.checkpoint import save_model

    cfg = demo_dit_config(args.size)
    model = init_model(cfg, seed=args.seed)
    graphdef, params = nnx.split(model)
    opt = make_optimizer(lr=args.lr)
    opt_state = opt.init(params)
    out = os.path.abspath(args.out)
    mgr = ocp.CheckpointManager(os.path.join(out, "ckpt"), options=ocp.CheckpointManagerOptions(max_to_keep=2))
    start = 0
    if mgr.latest_step() is not None:
        start = mgr.latest_step()
        target = {"params": nnx.to_pure_dict(params), "opt": opt_state}
        restored = mgr.restore(start, args=ocp.args.StandardRestore(jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), target)))
        nnx.replace_by_pure_dict(params, restored["params"])
        opt_state = restored["opt"]
        log.info("resumed from %s at step %d", mgr.directory, start)
    step_fn = make_train_step(graphdef, opt)
    data = batches(args.seed, args.batch, args.frames, args.size, cfg.text_len, cfg.text_dim)
    for _ in range(start):  # the data stream is deterministic: skip what was seen
        next(data)
    key = jax.random.key(args.seed)
    t0, losses = time.perf_counter(), []
    for step in range(start, args.steps):
        x0, ctx = next(data)
        params, opt_state, loss = step_fn(params, opt_state, jnp.asarray(x0), jnp.asarray(ctx),
                                          jax.random.fold_in(key, step))
        losses.append(float(loss))
        if (step + 1) % 20 == 0 or step + 1 == args.steps:
            rate = len(losses) / (time.perf_counter() - t0)
            log.info("step %d/%d  loss %.4f  %.2f steps/s", step + 1, args.steps, np.mean(losses[-20:]), rate)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            mgr.save(step + 1, args=ocp.args.StandardSave({"params": nnx.to_pure_dict(params), "opt": opt_state}))
    mgr.wait_until_finished()
    final = os.path.join(out, "model")
    if os.path.exists(final):
        import shutil

        shutil.rmtree(final)
    save_model(final, nnx.merge(graphdef, params), source=f"train_demo {args.steps} steps")
    log.info("wrote %s", final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
