"""Prompts -> the DiT's text context [B, text_len, text_dim], as a config's `text_encoder` says:
umT5 (a converted encoder and its sentencepiece tokenizer), hash-seeded placeholder embeddings,
or encoded prompts from a file (`prompt_embeds`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os

import jax
import numpy as np

from pyramid_jax.errors import UserError
from pyramid_jax.models.umt5 import modeling as umt5
from pyramid_jax.weights.checkpoint import CheckpointError, load_t5

log = logging.getLogger("pyramid_jax")


def prompts_of(spec) -> list[str]:
    """The config's prompts: prompts_file (one per line) or prompt."""
    if spec.inputs.prompts_file:
        with open(spec.inputs.prompts_file) as fh:
            prompts = [line.strip() for line in fh if line.strip()]
        if not prompts:
            raise UserError(f"prompts_file {spec.inputs.prompts_file!r} holds no prompts")
        return prompts
    return [spec.inputs.prompt]  # pipeline.check_config has made sure there is one


def parse_schedule(spec: str, first_prompt: str = "") -> list[tuple[int, str]]:
    """A prompt schedule "0:PROMPT A;30:PROMPT B" (the latent frame where each prompt starts)
    -> [(0, "PROMPT A"), (30, "PROMPT B")]. Without an entry at frame 0 the video opens with
    first_prompt. Raises ValueError (one line) for a malformed schedule."""
    entries = []
    for part in (x.strip() for x in spec.split(";")):
        frame, sep, prompt = part.partition(":")
        if not part:
            continue
        if not sep or not frame.strip().isdigit() or not prompt.strip():
            raise ValueError(f"prompt_schedule entry {part[:60]!r} is not FRAME:PROMPT")
        entries.append((int(frame), prompt.strip()))
    frames = [f for f, _ in entries]
    if frames != sorted(set(frames)):
        raise ValueError(f"prompt_schedule frames must increase, got {frames}")
    if not frames or frames[0] != 0:
        if not first_prompt.strip():
            raise ValueError("prompt_schedule has no prompt at frame 0 and no prompt is set")
        entries.insert(0, (0, first_prompt))
    return entries


def schedule_contexts(schedules: list[list[tuple[int, str]]], encode) -> list[tuple[int, np.ndarray]]:
    """Per-sample schedules -> [(start frame, context [B, text_len, text_dim])]: the batch's
    context from every frame where some sample's prompt changes. encode: prompts -> context."""
    starts = sorted({f for sched in schedules for f, _ in sched})
    active = lambda sched, t: [p for f, p in sched if f <= t][-1]
    return [(t, encode([active(sched, t) for sched in schedules])) for t in starts]


def placeholder_context(prompt: str, text_len: int, text_dim: int) -> np.ndarray:
    """Hash-seeded stand-in embeddings, one row per word (rest zero). [text_len, text_dim]."""
    words = prompt.split()[:text_len]
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    ctx = np.zeros((text_len, text_dim), np.float32)
    ctx[: len(words)] = np.random.default_rng(seed).standard_normal((len(words), text_dim)) * 0.5
    return ctx


def load_embeds(path: str) -> np.ndarray:
    try:
        data = np.load(path)
    except Exception as e:
        raise UserError(f"prompt_embeds {path!r}: not a readable .npy/.npz ({type(e).__name__})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = [k for k in ("context", "prompt_embeds") if k in data.files] or data.files
        if not keys:
            raise UserError(f"prompt_embeds {path!r}: empty npz")
        data = data[keys[0]]
    return np.asarray(data, np.float32)


class TextEncoder:
    """Prompts -> context [B, text_len, text_dim] float32, as configured by `text_encoder`."""

    def __init__(self, spec, cfg):
        self.kind, self.cfg = spec.text.kind, cfg
        if self.kind == "placeholder":
            log.warning("NO TEXT ENCODER: prompts become hash-seeded placeholder embeddings")
        elif self.kind == "umt5":
            self._load_umt5(spec.text, spec.model.dtype)
        elif self.kind != "none":
            raise UserError(f"unknown text_encoder.kind {self.kind!r}; choose umt5, placeholder or none")

    def _load_umt5(self, tc, dtype):
        for field in ("checkpoint", "tokenizer"):
            path = getattr(tc, field)
            if not path or not os.path.exists(path):
                raise UserError(f"text_encoder.{field} {path!r} not found (convert the umT5 encoder with "
                                "tools/convert_checkpoint.py --kind t5; the tokenizer is the spiece.model file)")
        self.device = jax.devices("cpu")[0] if tc.device == "cpu" else None
        try:
            with self._on_device():
                encoder = load_t5(tc.checkpoint, dtype=dtype)
        except CheckpointError as e:
            raise UserError(str(e)) from None
        t5_cfg = encoder.cfg
        if t5_cfg.d_model != self.cfg.text_dim:
            raise UserError(f"the text encoder's width {t5_cfg.d_model} differs from the DiT's text_dim "
                            f"{self.cfg.text_dim}")
        self.tokenizer = umt5.Tokenizer(tc.tokenizer, self.cfg.text_len)
        self.t5_params = encoder.params()
        self._encode = jax.jit(lambda p, i, m: umt5.encode_prompts(p, t5_cfg, i, m))
        log.info("text encoder umT5 from %s (%d layers) on %s", tc.checkpoint, t5_cfg.num_layers,
                 "the host CPU" if self.device else "the default device")

    def _on_device(self):
        return jax.default_device(self.device) if self.device else contextlib.nullcontext()

    def count_tokens(self, prompt: str) -> int:
        """Tokens the encoder reads of `prompt` (with umT5: its end token included)."""
        if self.kind == "umt5":
            return len(self.tokenizer.sp.encode(umt5.clean_text(prompt))) + 1
        return len(prompt.split())

    def __call__(self, prompts: list[str]) -> np.ndarray:
        cfg = self.cfg
        if self.kind == "placeholder":
            return np.stack([placeholder_context(p, cfg.text_len, cfg.text_dim) for p in prompts])
        if self.kind == "umt5":
            try:
                ids, mask = self.tokenizer(prompts)
            except ValueError as e:
                raise UserError(str(e)) from None
            with self._on_device():
                return np.asarray(self._encode(self.t5_params, ids, mask), np.float32)
        raise UserError("a text prompt needs a text encoder: set text_encoder.kind=umt5 (with its checkpoint "
                        "and tokenizer), or pass encoded prompts with --config.prompt_embeds=FILE.npy")


def prompt_context(spec, cfg, encoder: TextEncoder | None = None) -> np.ndarray:
    """The config's encoded prompts [B, text_len, text_dim] float32 (prompt_embeds, or the
    prompts through `encoder`, made from the config when not given)."""
    if spec.inputs.prompt_embeds:
        ctx = load_embeds(spec.inputs.prompt_embeds)
        if ctx.ndim == 2:
            ctx = ctx[None]
        if ctx.ndim != 3 or ctx.shape[-1] != cfg.text_dim:
            raise UserError(f"prompt_embeds {spec.inputs.prompt_embeds!r} has shape {list(ctx.shape)}; the model "
                            f"expects [B, L, {cfg.text_dim}] (or [L, {cfg.text_dim}])")
        if ctx.shape[1] > cfg.text_len:
            raise UserError(f"prompt_embeds has {ctx.shape[1]} rows, more than text_len {cfg.text_len}")
        pad = np.zeros((ctx.shape[0], cfg.text_len - ctx.shape[1], cfg.text_dim), np.float32)
        log.info("prompt embeddings from %s (%d prompts)", spec.inputs.prompt_embeds, ctx.shape[0])
        return np.concatenate([ctx, pad], axis=1)
    return (encoder or TextEncoder(spec, cfg))(prompts_of(spec))
