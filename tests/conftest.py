"""Shared fixtures: tiny random reference models built at test time (no downloads)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny Wan: dim 64 (2 heads x 32), 2 layers, 4 latent channels, odd 6x10 latents.
TINY = dict(num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
            text_dim=48, freq_dim=32, ffn_dim=96, num_layers=2)


def diffusers_wan(seed=0, **overrides):
    """A random diffusers WanTransformer3DModel with non-trivial weights (fp32, eval)."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    kw = dict(TINY, patch_size=(1, 2, 2), rope_max_seq_len=64, **overrides)
    m = WanTransformer3DModel(**kw).eval()
    with torch.no_grad():
        for p in m.parameters():  # biases and norms start at 0/1: perturb them all
            p.add_(torch.randn_like(p) * 0.05)
    return m


def diffusers_to_upstream_key(key: str) -> str:
    """The upstream Wan name of a diffusers key, written independently of the converter."""
    table = [
        ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
        ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
        ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
        ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
        ("condition_embedder.time_proj.", "time_projection.1."),
        ("proj_out.", "head.head."),
        ("attn1.to_out.0.", "self_attn.o."), ("attn2.to_out.0.", "cross_attn.o."),
        ("attn1.to_", "self_attn."), ("attn2.to_", "cross_attn."),
        ("attn1.", "self_attn."), ("attn2.", "cross_attn."),
        ("norm2.", "norm3."), ("ffn.net.0.proj.", "ffn.0."), ("ffn.net.2.", "ffn.2."),
    ]
    if key == "scale_shift_table":
        return "head.modulation"
    if key.endswith("scale_shift_table"):
        return key.replace("scale_shift_table", "modulation")
    for a, b in table:
        key = key.replace(a, b)
    return key


def save_self_forcing_pt(model, path, wrap=True, ema_scale=None):
    """Save `model` as a Self Forcing-style pickle: {generator_ema, generator}, `model.` keys.

    generator_ema holds the model's weights; generator holds them scaled by ema_scale
    (or identical) so tests can tell which one was read.
    """
    import torch

    import re

    sd = {}
    for k, v in model.state_dict().items():
        up = diffusers_to_upstream_key(k)
        if wrap:  # FSDP + activation-checkpoint wrappers as successor checkpoints carry them
            up = re.sub(r"^blocks\.(\d+)\.", r"blocks.\1._fsdp_wrapped_module._checkpoint_wrapped_module.", up)
        sd["model." + up] = v.clone()
    gen = {k: v * (ema_scale or 1.0) for k, v in sd.items()}
    torch.save({"generator_ema": sd, "generator": gen}, path)


def run_tool(*args, timeout=300, env=None):
    """Run a CLI in a subprocess (env: extra variables); returns CompletedProcess with text output."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_main(main, argv):
    """A CLI's main(argv) in this process (argv as that main takes it), its stdout and stderr
    captured: a CompletedProcess like run_tool's, for tests where the process boundary is not
    what is tested (bad input refused in one line, exit codes)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse refusals
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="session")
def tiny_diffusers():
    return diffusers_wan()
