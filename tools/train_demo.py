"""Train the demo model: a small causal Wan-architecture DiT on procedural shapes videos.

  python tools/train_demo.py --out runs/demo --steps 6000 --batch 16 --frames 24 --size 64

Stages, all in OUT:
  text/     a sentencepiece model trained on the caption vocabulary (spiece.model) and a tiny
            umT5 encoder (umt5/, random and frozen: the DiT learns to read its features)
  ckpt/     orbax checkpoints of (params, optimizer state); a rerun resumes from the newest
  model/    the trained DiT as a pyramid_jax checkpoint (`load_model`), and model.npz (flat)

The DiT works in pixel space (patch 1x4x4 on RGB in [-1, 1]): for 64x64 flat-shaded shapes a
pixel model is smaller and sharper than one behind a VAE we would also have to train, and its
output needs no decoder (configs/demo.py: vae.kind="pixel"). Training is diffusion forcing:
block-causal attention, one noise level per 3-frame chunk, and with probability 0.5 the chunks
before a random one are clean context, as at inference.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pyramid_jax import logs

log = logging.getLogger("train_demo")


def demo_dit_config():
    from pyramid_jax.models.wan import WanConfig

    return WanConfig(dim=128, ffn_dim=512, num_heads=4, num_layers=6, in_channels=3, out_channels=3,
                     patch_size=(1, 4, 4), text_len=32, text_dim=64, freq_dim=64)


def demo_t5_config(vocab_size: int):
    from pyramid_jax.models.umt5 import UMT5Config

    return UMT5Config(vocab_size=vocab_size, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2)


def build_text_encoder(out: str, seed: int = 0) -> None:
    """Write OUT/spiece.model (word pieces of every caption word) and OUT/umt5 (tiny, random)."""
    import sentencepiece as spm

    from pyramid_jax.data.shapes import random_clip
    from pyramid_jax.weights.checkpoint import save_params
    from pyramid_jax.weights.t5_names import random_t5_params

    os.makedirs(out, exist_ok=True)
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
        os.replace(os.path.join(tmp, "spiece.model"), os.path.join(out, "spiece.model"))
    cfg = demo_t5_config(len(words) + 3)
    save_params(os.path.join(out, "umt5"), random_t5_params(cfg, seed), cfg,
                source=f"train_demo: random tiny umT5, seed {seed}", kind="t5")
    log.info("text encoder: %d caption words, %d distinct captions -> %s", len(words), len(captions), out)


def encode_captions(text_dir: str, captions: list[str], text_len: int) -> np.ndarray:
    """[N, text_len, d_model] float32 features of the tiny umT5."""
    from pyramid_jax.models import umt5
    from pyramid_jax.weights.checkpoint import load_t5

    encoder = load_t5(os.path.join(text_dir, "umt5"))
    ids, mask = umt5.Tokenizer(os.path.join(text_dir, "spiece.model"), text_len)(captions)
    params, cfg = encoder.params(), encoder.cfg
    enc = jax.jit(lambda i, m: umt5.encode_prompts(params, cfg, i, m))
    with jax.default_matmul_precision("highest"):  # the features generate computes on a CPU in fp32
        return np.concatenate([np.asarray(enc(ids[i:i + 256], mask[i:i + 256])) for i in range(0, len(ids), 256)])


def _clip(args):
    from pyramid_jax.data.shapes import sample

    seed, frames, size = args
    return sample(seed, frames, size, size)


def make_dataset(seed: int, n: int, frames: int, size: int, workers: int):
    """(videos uint8 [N, F, S, S, 3], captions [N]) of deterministic shape clips."""
    jobs = [(seed * 1_000_003 + i, frames, size) for i in range(n)]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            clips = pool.map(_clip, jobs, chunksize=64)
    else:
        clips = [_clip(j) for j in jobs]
    return np.stack([v for v, _ in clips]), [c for _, c in clips]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=24, help="frames per clip (a multiple of 3)")
    p.add_argument("--size", type=int, default=64, help="frame height and width (a multiple of 4)")
    p.add_argument("--clips", type=int, default=8000, help="distinct clips in the training set")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes drawing clips")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--clean-context-prob", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--max-minutes", type=float, default=0, help="stop (and export) after this long; 0 = no limit")
    p.add_argument("--from-npz", default="", help="only write OUT/model from this model.npz")
    args = p.parse_args(argv)
    logs.setup()
    if args.from_npz:
        if not os.path.isfile(args.from_npz):
            print(f"train_demo: error: --from-npz {args.from_npz!r}: no such file", file=sys.stderr)
            return 2
        return export_npz(args.from_npz, os.path.join(os.path.abspath(args.out), "model"))
    if args.frames % 3 or args.size % 4:
        print("train_demo: error: --frames must be a multiple of 3 and --size of 4", file=sys.stderr)
        return 2

    import orbax.checkpoint as ocp

    from pyramid_jax.models.wan import init_model
    from pyramid_jax.training import make_optimizer, train_step

    t_start = time.perf_counter()
    out = os.path.abspath(args.out)
    text_dir = os.path.join(out, "text")
    if not os.path.exists(os.path.join(text_dir, "umt5")):
        build_text_encoder(text_dir, args.seed)
    cfg = demo_dit_config()
    videos, captions = make_dataset(args.seed, args.clips, args.frames, args.size, args.workers)
    ctx = encode_captions(text_dir, captions, cfg.text_len)
    log.info("dataset: %d clips of %d frames at %dx%d (%.0f MB) in %.1f s", len(videos), args.frames,
             args.size, args.size, videos.nbytes / 2**20, time.perf_counter() - t_start)

    model = init_model(cfg, seed=args.seed)
    graphdef, params = nnx.split(model)
    opt = make_optimizer(lr=args.lr, warmup=200)
    opt_state = opt.init(params)
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
    to_frames = jax.jit(lambda v: (v.astype(jnp.float32) / 127.5 - 1.0).transpose(0, 1, 4, 2, 3))
    key = jax.random.key(args.seed)
    t0, losses, step = time.perf_counter(), [], start
    for step in range(start, args.steps):
        idx = np.random.default_rng([args.seed, step]).integers(0, len(videos), args.batch)  # resumable
        params, opt_state, loss = train_step(graphdef, opt, params, opt_state, to_frames(jnp.asarray(videos[idx])),
                                             jnp.asarray(ctx[idx]), jax.random.fold_in(key, step),
                                             clean_context_prob=args.clean_context_prob)
        losses.append(loss)
        done = step + 1
        if done % 100 == 0 or done == args.steps or done - start in (1, 3):
            mean_loss = float(np.mean(jax.device_get(losses[-100:])))  # waits for the queued steps
            seconds = time.perf_counter() - t0
            log.info("step %d/%d  loss %.4f  %.1f s, %.2f steps/s (incl. compile)", done, args.steps, mean_loss,
                     seconds, len(losses) / seconds)
        if done % args.save_every == 0 or done == args.steps:
            mgr.save(done, args=ocp.args.StandardSave({"params": nnx.to_pure_dict(params), "opt": opt_state}))
        if args.max_minutes and time.perf_counter() - t_start > 60 * args.max_minutes:
            log.info("stopping at step %d: --max-minutes %.1f reached", done, args.max_minutes)
            mgr.save(done, args=ocp.args.StandardSave({"params": nnx.to_pure_dict(params), "opt": opt_state}),
                     force=True)
            break
    mgr.wait_until_finished()
    trained = nnx.merge(graphdef, params)
    np.savez(os.path.join(out, "model.npz"), **flat_params(trained))
    export(trained, os.path.join(out, "model"), f"train_demo {step + 1} steps, batch {args.batch}, "
                                                f"{args.frames}x{args.size}x{args.size} clips")
    log.info("(%.1f min in all)", (time.perf_counter() - t_start) / 60)
    return 0


def flat_params(model) -> dict:
    """{"blocks/attn/q/kernel": array, ...}: the model's params as one flat npz-able dict."""
    tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def export(model, dst: str, source: str) -> None:
    """Write `model` as a pyramid_jax DiT checkpoint at dst (replacing one there)."""
    import shutil

    from pyramid_jax.weights.checkpoint import save_model

    if os.path.exists(dst):
        shutil.rmtree(dst)
    save_model(dst, model, source=source)
    log.info("wrote %s", dst)


def export_npz(npz: str, dst: str) -> int:
    """`--from-npz`: rebuild the checkpoint directory from model.npz (e.g. copied off a GPU machine)."""
    from pyramid_jax.models.wan import init_model

    model = init_model(demo_dit_config())
    state = nnx.state(model, nnx.Param)
    data = np.load(npz)
    leaves = [jnp.asarray(data[name]) for name in flat_params(model)]  # same order as the tree
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(jax.tree.structure(nnx.to_pure_dict(state)), leaves))
    nnx.update(model, state)
    export(model, dst, f"train_demo (from {os.path.basename(npz)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
