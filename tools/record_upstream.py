"""Upstream Self Forcing's numbers, recorded for the tests (which must run without upstream):
run here with a checkout of Self Forcing, the files go to tests/upstream_recordings/.

  python tools/record_upstream.py --upstream ~/src/Self-Forcing [--what continue|taehv|all]

continue (tests/upstream_recordings/upstream_continue/): upstream's video extension. A tiny random Self
Forcing model run by upstream's own `CausalInferencePipeline.inference(noise, prompts,
initial_latent=...)` on this CPU, its random draws written as our replay file and what it made
saved beside them, so that `generate --config.replay=...` is held to upstream's numbers.
Files:
  dit.pt                     the model, a Self Forcing file ({"generator_ema": {"model.*": ...}})
  replay.npz                 context [B, Lt, text_dim], noise [B, F, C, h, w], renoise
                             [N, B, 3, C, h, w] (upstream's draws, in its order), initial_latent
                             [B, F0, C, h, w] (the given frames)
  CASE_upstream.npz          latents [B, F0 + F, C, h, w]: upstream's output (the given frames,
                             then the made ones), and the case's cache settings
for CASE in global (local_attn_size -1) and window6_sink1 (local_attn_size 6, sink_size 1).
Both cases draw the same re-noise (torch's global generator, seeded alike before each).

taehv (tests/upstream_recordings/upstream_taehv.npz): upstream's TAEHV class (demo_utils/taehv.py) at full
size, its weights `taehv_names.random_checkpoint(seed)` (numpy-drawn: the test makes the same
file), decode_video (parallel and sequential) of latents [1, 6, 16, 2, 3] and encode_video of
frames [1, 8, 3, 16, 24], with the inputs.

For continue, upstream is run as it is (its pipeline, its wrapper, its model, its scheduler), around it:
- the weights come from this tool, not from wan_models/ (CausalWanModel.from_pretrained is
  replaced by the tiny model); the text encoder and the VAE are stubs (the prompt embeddings
  are given; the decode is not compared);
- its KV caches are sized for the tiny model: its __init__ hard-codes the 1.3B model's 30
  blocks, 12 x 128 heads and 1560 tokens a frame (the cache sizes follow its own formula:
  local_attn_size frames, or 32760 tokens for the global cache);
- each sample is run alone: its initial-latent pass builds the timestep as [B, 1], which
  converts flow to x0 with B sigmas for B * 3 frames and fails for batch > 1. Every sample
  draws its own re-noise; the replay file stacks them on the batch axis.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import types

# The model (a tiny Wan in upstream's constructor names) and the run.
TINY = dict(dim=32, ffn_dim=64, freq_dim=32, num_heads=2, num_layers=2, text_len=8, text_dim=24, in_dim=16,
            out_dim=16)
BATCH, GIVEN, FRAMES, LATENT_HW = 2, 6, 9, (4, 6)  # 2 given chunks, 3 made
CASES = {"global": dict(local_attn_size=-1, sink_size=0), "window6_sink1": dict(local_attn_size=6, sink_size=1)}
STEPS = [1000, 750, 500, 250]  # Self Forcing's config: warped, shift 5, context_noise 0


def make_model(up, seed: int = 0):
    """A random CausalWanModel with every weight perturbed (upstream zero-inits its head)."""
    import torch

    torch.manual_seed(seed)
    model = up.causal_model.CausalWanModel(**TINY).eval()
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    return model


def _caches(batch: int, model, tokens_per_frame: int, local_attn_size: int) -> tuple[list, list]:
    """Upstream's _initialize_kv_cache / _initialize_crossattn_cache for this model's sizes."""
    import torch

    heads, dh = model.num_heads, model.dim // model.num_heads
    size = 32760 if local_attn_size == -1 else local_attn_size * tokens_per_frame
    kv = [dict(k=torch.zeros(batch, size, heads, dh), v=torch.zeros(batch, size, heads, dh),
               global_end_index=torch.tensor([0]), local_end_index=torch.tensor([0])) for _ in range(model.num_layers)]
    text = [dict(k=torch.zeros(batch, model.text_len, heads, dh), v=torch.zeros(batch, model.text_len, heads, dh),
                 is_init=False) for _ in range(model.num_layers)]
    return kv, text


class _Text(object):
    """Stands for WanTextEncoder: the prompt embeddings are given."""

    def __init__(self, context):
        self.context = context

    def __call__(self, text_prompts):
        return {"prompt_embeds": self.context}


class _Vae(object):
    """Stands for WanVAEWrapper: upstream decodes its output at the end; not compared."""

    def decode_to_pixel(self, latent, use_cache=False):
        return latent


def run_case(up, generator_ema: dict, case: dict, context, noise, initial):
    """Upstream's inference, one sample at a time. Returns (latents [B, F0 + F, C, h, w],
    renoise [N, B, 3, C, h, w]) as numpy."""
    import numpy as np
    import torch

    wrapper_mod = up.wan_wrapper
    wrapper_mod.CausalWanModel.from_pretrained = classmethod(lambda cls, path, **kw: cls(**TINY, **kw).eval())
    args = types.SimpleNamespace(denoising_step_list=STEPS, warp_denoising_step=True, num_frame_per_block=3,
                                 independent_first_frame=False, context_noise=0,
                                 model_kwargs=dict(timestep_shift=5.0, **case))
    latents, renoise = [], []
    for b in range(noise.shape[0]):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every timestep
            pipe = up.causal_inference.CausalInferencePipeline(
                args, device="cpu", text_encoder=_Text(context[b:b + 1]), vae=_Vae())
        pipe.generator.load_state_dict(generator_ema)  # as upstream's inference.py loads a checkpoint
        model = pipe.generator.model
        tpf = (noise.shape[3] // 2) * (noise.shape[4] // 2)
        pipe.num_transformer_blocks, pipe.frame_seq_length = model.num_layers, tpf
        pipe.kv_cache1, pipe.crossattn_cache = _caches(1, model, tpf, case["local_attn_size"])
        draws, randn_like = [], torch.randn_like

        def recorded(x, *a, **kw):
            e = randn_like(x, *a, **kw)
            draws.append(e.clone())
            return e

        torch.randn_like = recorded
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                _, out = pipe.inference(noise[b:b + 1], ["given"], initial_latent=initial[b:b + 1], return_latents=True)
        finally:
            torch.randn_like = randn_like
        steps_between = len(STEPS) - 1
        assert len(draws) == noise.shape[1] // 3 * steps_between, len(draws)
        latents.append(out[0].numpy())
        renoise.append(np.stack([d.reshape(3, *d.shape[1:]).numpy() for d in draws]))  # [N, 3, C, h, w]
    return np.stack(latents), np.stack(renoise, axis=1)


def record_continue(repo: str, out: str, seed: int = 0) -> dict:
    """Run every case; write the files. Returns {case: path of its upstream latents}."""
    import numpy as np
    import torch

    import upstream_modules

    up = upstream_modules.load(repo)
    os.makedirs(out, exist_ok=True)
    model = make_model(up, seed)
    ema = {f"model.{k}": v.clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"generator_ema": ema}, os.path.join(out, "dit.pt"))
    g = torch.Generator().manual_seed(seed + 1)
    c, (h, w) = TINY["in_dim"], LATENT_HW
    context = torch.randn(BATCH, TINY["text_len"], TINY["text_dim"], generator=g)
    noise = torch.randn(BATCH, FRAMES, c, h, w, generator=g)
    initial = torch.randn(BATCH, GIVEN, c, h, w, generator=g)
    written, drawn = {}, None
    for name, case in CASES.items():
        torch.manual_seed(seed + 2)  # upstream's re-noise comes from torch's global generator
        latents, renoise = run_case(up, ema, case, context, noise, initial)
        if drawn is None:
            drawn = renoise
            np.savez(os.path.join(out, "replay.npz"), context=context.numpy(), noise=noise.numpy(),
                     renoise=renoise, initial_latent=initial.numpy())
        assert np.array_equal(renoise, drawn), "the cases drew different re-noise"
        path = os.path.join(out, f"{name}_upstream.npz")
        np.savez(path, latents=latents, **{k: np.int64(v) for k, v in case.items()})
        written[name] = path
        print(f"{name}: latents {list(latents.shape)}, renoise {list(renoise.shape)} -> {path}")
    return written


def record_taehv(repo: str, out: str, seed: int = 0) -> str:
    """Upstream's TAEHV on random weights; returns the npz path."""
    import importlib.util

    import numpy as np
    import torch

    from pyramid_jax.models.taehv import params as taehv_names

    spec = importlib.util.spec_from_file_location("upstream_taehv", os.path.join(repo, "demo_utils", "taehv.py"))
    up = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(up)
    model = up.TAEHV(checkpoint_path=None).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in taehv_names.random_checkpoint(seed=seed).items()})
    rng = np.random.default_rng(seed + 1)
    latents = rng.standard_normal((1, 6, 16, 2, 3)).astype(np.float32)
    frames = rng.random((1, 8, 3, 16, 24)).astype(np.float32)
    with torch.no_grad():
        z, v = torch.from_numpy(latents), torch.from_numpy(frames)
        got = dict(decode_parallel=model.decode_video(z, parallel=True),
                   decode_sequential=model.decode_video(z, parallel=False),
                   encode_parallel=model.encode_video(v, parallel=True, show_progress_bar=False),
                   encode_sequential=model.encode_video(v, parallel=False, show_progress_bar=False))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "upstream_taehv.npz")
    np.savez(path, seed=np.int64(seed), latents=latents, frames=frames, **{k: t.numpy() for k, t in got.items()})
    print(f"taehv: decode {list(got['decode_parallel'].shape)}, encode {list(got['encode_parallel'].shape)} -> {path}")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="a Self Forcing checkout")
    p.add_argument("--what", default="all", choices=["continue", "taehv", "all"])
    p.add_argument("--out", default="tests/upstream_recordings", help="folder for the files (continue: its upstream_continue/)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.what in ("continue", "all"):
        record_continue(a.upstream, os.path.join(a.out, "upstream_continue"), a.seed)
    if a.what in ("taehv", "all"):
        record_taehv(a.upstream, a.out, a.seed)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
