"""Text-to-video as a library: check a config, load what it names, encode the prompts, roll
out, decode and write. `generate`, `batch`, `classify_heads`, the notebook and the studio
call these; `generate_and_write(spec)` is the whole of `python -m pyramid_jax.generate`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import numpy as np

from pyramid_jax import init_frames, media, video
from pyramid_jax.attention import check_backend
from pyramid_jax.cache import trace as trace_lib
from pyramid_jax.cache.head_map import ANCHOR, TYPE_NAMES, VEIL, WAVE, HeadType, save_head_map_json
from pyramid_jax.cache.policies import make_policy
from pyramid_jax.cache.pool import KV_DTYPES, PoolSpec
from pyramid_jax.errors import UserError, os_reason
from pyramid_jax.heads.online import ONLINE, OnlineTyping
from pyramid_jax.spec import RunSpec
from pyramid_jax.models.wan.modeling import CausalWan, WanConfig, init_model
from pyramid_jax.sampling.rollout import RandomNoise, ReplayNoise, Rollout, Sampler, rollout, text_kv_of
from pyramid_jax.sampling.schedule import FlowSchedule
from pyramid_jax.text import TextEncoder, parse_schedule, prompt_context, prompts_of, schedule_contexts
from pyramid_jax.weights.checkpoint import CheckpointError, load_model, load_vae_encoder, read_config

log = logging.getLogger("pyramid_jax")


# ---- checks ------------------------------------------------------------------------
def check_config(spec: RunSpec) -> None:
    """The run's inputs make sense (files exist, sizes fit): checked before any model loads."""
    f = spec.sampler.frames_per_chunk
    if f < 1:
        raise UserError(f"frames_per_chunk must be >= 1, got {f}")
    if not spec.inputs.replay and (spec.inputs.num_frames <= 0 or spec.inputs.num_frames % f):
        raise UserError(f"num_frames ({spec.inputs.num_frames}) must be a positive multiple of the chunk size "
                        f"frames_per_chunk ({f})")
    try:
        check_backend(spec.model.attention, jax.default_backend() if spec.model.attention == "pallas" else None)
    except ValueError as e:
        raise UserError(str(e)) from None
    given = spec.inputs
    if not (given.prompt.strip() or given.prompts_file or given.prompt_embeds or given.replay
            or given.prompt_schedule.strip()):
        raise UserError("no prompt: set prompt, prompt_schedule, prompts_file, prompt_embeds or replay")
    if spec.inputs.prompt_schedule.strip():
        check_schedule(spec)
    if spec.model.dtype not in ("float32", "bfloat16"):
        raise UserError(f"dtype must be float32 or bfloat16, got {spec.model.dtype!r}")
    if not isinstance(spec.sampler.guidance_scale, (int, float)) or spec.sampler.guidance_scale < 0:
        raise UserError("guidance_scale must be a number >= 0 (1 = no guidance), got "
                        f"{spec.sampler.guidance_scale!r}")
    eta = spec.sampler.renoise_eta
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise UserError(f"renoise_eta must be a number in [0, 1] (1 = all fresh noise), got {eta!r}")
    if spec.cache.kv_dtype not in KV_DTYPES:
        raise UserError(f"unknown cache.kv_dtype {spec.cache.kv_dtype!r}; choose one of "
                        f"{', '.join(d or '(the model dtype)' for d in KV_DTYPES)}")
    _check_files(spec)
    _check_init(spec)


def model_config(spec: RunSpec) -> WanConfig:
    """The DiT's config without loading it: its checkpoint's config.json, or `spec.model.shape`."""
    try:
        return read_config(spec.model.checkpoint)[1] if spec.model.checkpoint else spec.model.shape
    except (CheckpointError, ValueError) as e:
        raise UserError(str(e)) from None


def _check_init(spec) -> None:
    """init_video / init_image read, fit the model, and a latent model has an encoder for them."""
    given = init_frames.field_of(spec)
    if given is None:
        return
    if spec.inputs.replay:
        raise UserError(f"{given[0]} cannot go with replay (a replay file holds its own initial_latent)")
    cfg = model_config(spec)
    init_frames.check(spec, cfg, latent_size(spec, cfg))
    if spec.decoder.kind != "pixel" and not given[1].lower().endswith(".npz") and not (
            spec.decoder.kind in video.decoder_checkpoints(spec) or spec.decoder.random):
        raise UserError(f"{given[0]} needs a VAE encoder: set vae.checkpoint (tools/convert_checkpoint.py "
                        f"--kind {'taehv' if spec.decoder.kind == 'taehv' else 'vae'}) or give latents (.npz)")


def check_schedule(spec) -> None:
    """prompt_schedule parses, starts at chunk boundaries inside the video, and goes with
    prompts (not with encoded prompts or a replay, which hold one text per video)."""
    for field, value in (("prompt_embeds", spec.inputs.prompt_embeds), ("replay", spec.inputs.replay),
                         ("save_replay", spec.output.save_replay)):
        if value:
            raise UserError(f"prompt_schedule cannot go with {field} (one text per video): unset one")
    try:  # batch gives each line's prompt as the opening one
        entries = parse_schedule(spec.inputs.prompt_schedule,
                                 spec.inputs.prompt or ("(each line)" if spec.inputs.prompts_file else ""))
    except ValueError as e:
        raise UserError(str(e)) from None
    f = spec.sampler.frames_per_chunk
    for frame, _ in entries:
        if frame % f or frame >= spec.inputs.num_frames:
            raise UserError(f"prompt_schedule frame {frame} must be a multiple of frames_per_chunk ({f}) "
                            f"below num_frames ({spec.inputs.num_frames}): a chunk has one prompt")


def _check_files(spec) -> None:
    for field in ("replay", "prompts_file", "prompt_embeds"):
        path = getattr(spec.inputs, field)
        if path and not os.path.isfile(path):
            raise UserError(f"{field} {path!r}: no such file")
    cfg = model_config(spec)  # the policy and its head file, before any model loads
    build_policy(spec, cfg, latent_size(spec, cfg), spec.inputs.num_frames)
    if spec.decoder.kind not in ("wan", "taehv", "pixel"):
        raise UserError(f"unknown vae.kind {spec.decoder.kind!r}; choose wan, taehv or pixel")
    if spec.output.fps <= 0:
        raise UserError(f"fps must be positive, got {spec.output.fps}")
    for kind, path in video.decoder_checkpoints(spec).items():
        if not os.path.isdir(path):
            field = "vae.taehv_checkpoint" if path == spec.decoder.taehv_checkpoint else "vae.checkpoint"
            source = ("taew2_1.pth with tools/convert_checkpoint.py --kind taehv" if kind == "taehv" else
                      "Wan2.1_VAE.pth with tools/convert_checkpoint.py --kind vae")
            raise UserError(f"{field} {path!r} not found: convert {source}, or set --config.{field}=''")
    if spec.model.checkpoint and not os.path.isdir(spec.model.checkpoint):
        raise UserError(f"checkpoint {spec.model.checkpoint!r} not found: convert one with "
                        "tools/convert_checkpoint.py, or set --config.checkpoint='' for random weights")


# ---- what a run loads once ---------------------------------------------------------
def load_dit(spec) -> CausalWan:
    """The DiT of the config: its checkpoint, or random weights of `spec.model.shape` (announced)."""
    if spec.model.checkpoint:
        try:
            return load_model(spec.model.checkpoint, dtype=spec.model.dtype, attention_backend=spec.model.attention)
        except (CheckpointError, ValueError) as e:
            raise UserError(str(e)) from None
    try:
        cfg = spec.model.shape
        model = init_model(cfg, seed=0, attention_backend=spec.model.attention)
    except ValueError as e:
        raise UserError(str(e)) from None
    log.warning("NO CHECKPOINT: random weights (dim %d, %d layers); the video will show noise",
                cfg.dim, cfg.num_layers)
    return model


def make_sampler(spec) -> Sampler:
    sched = FlowSchedule(shift=spec.sampler.shift)
    try:
        steps = sched.warp(spec.sampler.denoising_step_list) if spec.sampler.warp_denoising_step else np.asarray(
            spec.sampler.denoising_step_list, np.float32)
    except ValueError as e:
        raise UserError(str(e)) from None
    return Sampler(timesteps=tuple(float(t) for t in steps), context_noise=float(spec.sampler.context_noise),
                   frames_per_chunk=spec.sampler.frames_per_chunk, schedule=sched,
                   guidance_scale=float(spec.sampler.guidance_scale),
                   renoise_eta=float(spec.sampler.renoise_eta))


@dataclasses.dataclass
class LoadedModels:
    """What a run loads once: the DiT, its text encoder, its video decoder weights (None:
    a pixel model, or no VAE configured) and the sampler."""

    dit: CausalWan
    text: TextEncoder
    vae: tuple | None
    sampler: Sampler
    vae_encoder: object = None  # the VAE's encoder, loaded when given frames need it


def encoder_for(spec, models: LoadedModels):
    """The VAE encoder that turns given frames into latents (loaded once, kept on models);
    None for a pixel model, whose frames are its latents."""
    if spec.decoder.kind == "pixel":
        return None
    if models.vae_encoder is None and spec.decoder.kind == "taehv":
        from pyramid_jax.models.taehv.modeling import FramesEncoder

        models.vae_encoder = FramesEncoder(models.vae or video.load_video_weights(spec, models.dit.cfg))
    if models.vae_encoder is None:
        from pyramid_jax.models.vae.modeling import VAEConfig
        from pyramid_jax.models.vae.encoder import WanVAEEncoder
        from pyramid_jax.weights.checkpoint import with_weights
        from pyramid_jax.models.vae.params import random_vae_params

        if spec.decoder.checkpoint:
            try:
                models.vae_encoder = load_vae_encoder(spec.decoder.checkpoint, dtype=spec.model.dtype)
            except CheckpointError as e:
                raise UserError(str(e)) from None
        else:
            vcfg = VAEConfig(base_dim=spec.decoder.base_dim, num_res_blocks=spec.decoder.num_res_blocks,
                             dtype=spec.model.dtype)
            params = random_vae_params(vcfg, encoder=True)
            models.vae_encoder = with_weights(WanVAEEncoder, vcfg, {k: v for k, v in params.items()
                                                                      if k.startswith(("encoder.", "quant_conv."))})
            log.warning("NO VAE CHECKPOINT: a random VAE encoder encodes the given frames")
    return models.vae_encoder


def load_models(spec, text: bool = True, decoder: bool = True) -> LoadedModels:
    """Everything the config names, loaded once (text=False skips the text encoder,
    decoder=False the VAE)."""
    dit = load_dit(spec)
    encoder = TextEncoder(spec, dit.cfg) if text and not (spec.inputs.prompt_embeds or spec.inputs.replay) else None
    return LoadedModels(dit, encoder, video.load_video_weights(spec, dit.cfg) if decoder else None, make_sampler(spec))


# ---- shapes and the cache ----------------------------------------------------------
def latent_size(spec, cfg) -> tuple[int, int]:
    """The latent grid of the config's height/width (pixels for a pixel model)."""
    space = video.strides(spec)[1]
    step_h, step_w = space * cfg.patch_size[1], space * cfg.patch_size[2]
    if spec.inputs.height % step_h or spec.inputs.width % step_w:
        raise UserError(f"height/width ({spec.inputs.height}x{spec.inputs.width}) must be multiples of "
                        f"{step_h}x{step_w}")
    return spec.inputs.height // space, spec.inputs.width // space


def pool_spec(spec, cfg, latent_hw) -> PoolSpec:
    """The cache's static shape facts for the model and latent size."""
    lh, lw = latent_hw
    if lh % cfg.patch_size[1] or lw % cfg.patch_size[2]:
        raise UserError(f"latent size {lh}x{lw} is not divisible by the patch {cfg.patch_size[1:]}")
    return PoolSpec(cfg.num_layers, cfg.num_heads, cfg.head_dim, (lh // cfg.patch_size[1], lw // cfg.patch_size[2]),
                    spec.sampler.frames_per_chunk, cfg.rope_theta, spec.cache.kv_dtype)


def online_typing(spec, cfg, latent_hw) -> OnlineTyping | None:
    """Pyramid with cache.head_map=online: the typing phase of the video (heads.online)."""
    if spec.cache.policy != "pyramid" or spec.cache.head_map != ONLINE:
        return None
    return OnlineTyping(pool_spec(spec, cfg, latent_hw))


def build_policy(spec, cfg, latent_hw, num_frames):
    """The config's cache policy for a rollout of num_frames latent frames (with online typing:
    the policy of its typing phase)."""
    pool = pool_spec(spec, cfg, latent_hw)
    typing = online_typing(spec, cfg, latent_hw)
    if typing is not None:
        return typing.first
    try:
        return make_policy(spec.cache.policy, pool, num_frames, spec.cache.local_attn_size,
                           spec.cache.sink_size, spec.cache.head_map, seed=spec.inputs.seed,
                           rows=replay_rows(spec), **spec.cache.options())
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None


def types_online(spec) -> bool:
    """Whether the run's policy types its heads as it goes (dummy_forcing without a head map)."""
    return spec.cache.policy == "dummy_forcing" and not spec.cache.head_map


def groups_path(spec) -> str:
    """Where an online-typed run writes its head groups: beside the output, `<stem>.heads.json`."""
    return os.path.splitext(spec.output.output or video.latents_path(spec))[0] + ".heads.json"


def write_groups(spec, cache) -> None:
    """Log the groups the run chose and write them as a head map (cache.head_map of a later run)."""
    kinds = np.asarray(cache.own.head_kind)
    if not kinds.any():
        log.info("no head groups: the video ended before chunk %d typed them", spec.cache.ar_start)
        return
    counts = ", ".join(f"{TYPE_NAMES[HeadType(t)].lower()} {int((kinds == t).sum())}" for t in np.unique(kinds))
    log.info("head groups chosen in chunk %d: %s (per layer: %s)", spec.cache.ar_start, counts,
             " ".join("".join(TYPE_NAMES[HeadType(t)][0] for t in row) for row in kinds))
    path = groups_path(spec)
    save_head_map_json(path, kinds, policy="dummy_forcing", seed=spec.inputs.seed, ar_start=spec.cache.ar_start,
                       num_dummy=spec.cache.num_dummy, mass=np.asarray(cache.own.mass),
                       prompt=spec.inputs.prompt)
    log.info("wrote head groups %s (reuse them with --config.cache.head_map=%s)", path, path)


def write_online_map(spec, typing: OnlineTyping) -> None:
    """Log the pyramid map typed online and write it beside the output (a head map)."""
    if typing.head_map is None:
        log.info("no online head map: the video ended before frame %d", typing.frames)
        return
    m = typing.head_map
    log.info("heads typed online from the first %d frames: %s", typing.frames,
             ", ".join(f"{TYPE_NAMES[t]} {int((m == t).sum())}" for t in (ANCHOR, WAVE, VEIL)))
    path = groups_path(spec)
    save_head_map_json(path, m, policy="pyramid", typed="online", frames=typing.frames, seed=spec.inputs.seed,
                       prompt=spec.inputs.prompt)
    log.info("wrote the head map %s (reuse it with --config.cache.head_map=%s)", path, path)


def replay_rows(spec):
    """dummy_forcing's typing rows [L, R] from the replay file (key `dummy_rows`), or None."""
    if spec.cache.policy != "dummy_forcing" or not spec.inputs.replay or not os.path.isfile(spec.inputs.replay):
        return None
    with np.load(spec.inputs.replay) as z:
        return np.asarray(z["dummy_rows"]) if "dummy_rows" in z.files else None


# ---- one generation ----------------------------------------------------------------
@dataclasses.dataclass
class GenerationInputs:
    """What one generation starts from: encoded prompts [B, Lt, text_dim] and its noise."""

    context: np.ndarray
    noise: RandomNoise | ReplayNoise
    num_frames: int
    latent_hw: tuple[int, int]
    switches: tuple = ()  # (start frame, context [B, Lt, text_dim]) of each later prompt
    initial: np.ndarray | None = None  # given frames to continue: latents [B, F0, C, h, w]

    @property
    def batch(self) -> int:
        return self.context.shape[0]

    @property
    def given_frames(self) -> int:
        return 0 if self.initial is None else self.initial.shape[1]


def with_initial(spec, models: LoadedModels, job: GenerationInputs) -> GenerationInputs:
    """The job continuing the config's init_video / init_image, if it names one."""
    if init_frames.field_of(spec) is None:
        return job
    initial = init_frames.initial_latents(spec, models.dit.cfg, job.latent_hw, encoder_for(spec, models), job.batch)
    return dataclasses.replace(job, initial=initial)


def generation_inputs(spec, models: LoadedModels) -> GenerationInputs:
    """The config's prompts (encoded) and seed, or its replay file (context and noise)."""
    cfg = models.dit.cfg
    if not spec.inputs.replay:
        hw = latent_size(spec, cfg)
        if spec.inputs.prompt_schedule.strip():
            return with_initial(spec, models, scheduled_inputs(spec, models, prompts_of(spec), spec.inputs.seed, hw))
        context = prompt_context(spec, cfg, models.text)
        shape = (context.shape[0], spec.inputs.num_frames, cfg.in_channels, *hw)
        noise = RandomNoise(spec.inputs.seed, shape, models.sampler)
        return with_initial(spec, models, GenerationInputs(context, noise, spec.inputs.num_frames, hw))
    context, noise, renoise, initial = load_replay(spec.inputs.replay, cfg)
    try:
        source = ReplayNoise(noise, renoise, models.sampler)
    except ValueError as e:
        raise UserError(f"replay {spec.inputs.replay!r}: {e}") from None
    log.info("replay from %s: batch %d, %d latent frames, latent %dx%d%s", spec.inputs.replay, *noise.shape[:2],
             *noise.shape[3:], "" if initial is None else f", after {initial.shape[1]} given frames")
    return GenerationInputs(context, source, noise.shape[1], noise.shape[3:], initial=initial)


def scheduled_inputs(spec, models: LoadedModels, prompts: list[str], seeds, latent_hw,
                     num_frames: int | None = None) -> GenerationInputs:
    """The inputs of `prompts` (one per sample) under the config's prompt_schedule: each sample's
    prompt opens its video unless the schedule sets frame 0."""
    cfg, frames = models.dit.cfg, num_frames or spec.inputs.num_frames
    scheduled = spec.inputs.prompt_schedule.strip()
    schedules = [parse_schedule(spec.inputs.prompt_schedule, p) for p in prompts] if scheduled else [
        [(0, p)] for p in prompts]
    (_, context), *switches = schedule_contexts(schedules, models.text)
    log.info("prompt schedule: %s", "; ".join(f"{t}: {p}" for t, p in schedules[0]) if len(schedules) == 1
             else f"switches at latent frames {[t for t, _ in switches]}")
    noise = RandomNoise(seeds, (len(prompts), frames, cfg.in_channels, *latent_hw), models.sampler)
    return GenerationInputs(context, noise, frames, latent_hw, tuple(switches))


def load_replay(path: str, cfg):
    """context [B, Lt, text_dim], noise [B, F, C, h, w], renoise [N, B, F_chunk, C, h, w] and,
    if the file has it, initial_latent [B, F0, C, h, w] (the given frames; else None)."""
    try:
        data = np.load(path)
        context, noise, renoise = (np.asarray(data[k], np.float32) for k in ("context", "noise", "renoise"))
        initial = np.asarray(data["initial_latent"], np.float32) if "initial_latent" in data.files else None
    except KeyError as e:
        raise UserError(f"replay {path!r} lacks {e}; it needs context, noise and renoise") from None
    except Exception as e:
        raise UserError(f"replay {path!r}: not a readable npz ({type(e).__name__})") from None
    if context.ndim != 3 or context.shape[-1] != cfg.text_dim:
        raise UserError(f"replay context has shape {list(context.shape)}; the model expects "
                        f"[B, L, {cfg.text_dim}]")
    if noise.ndim != 5 or noise.shape[2] != cfg.in_channels or noise.shape[0] != context.shape[0]:
        raise UserError(f"replay noise has shape {list(noise.shape)}; expected [B={context.shape[0]}, F, "
                        f"{cfg.in_channels}, h, w]")
    if initial is not None and (initial.ndim != 5 or initial.shape[0] != noise.shape[0]
                                or initial.shape[2:] != noise.shape[2:]):
        raise UserError(f"replay initial_latent has shape {list(initial.shape)}; expected [B={noise.shape[0]}, F0, "
                        f"{', '.join(map(str, noise.shape[2:]))}]")
    return context, noise, renoise, initial  # frames vs the chunk: ReplayNoise / prefill check


def generate(spec, models: LoadedModels, job: GenerationInputs, sink: video.VideoSink | None = None, *,
             record_noise: bool = False, mesh=None) -> Rollout:
    """Roll out one generation, streaming each chunk into `sink`, with a progress line per chunk."""
    cfg, f = models.dit.cfg, spec.sampler.frames_per_chunk
    chunks, start, given = job.num_frames // f, time.perf_counter(), job.given_frames
    policy = build_policy(spec, cfg, job.latent_hw, given + job.num_frames)
    typing = online_typing(spec, cfg, job.latent_hw)
    log.info("generating %d x %d latent frames (%d chunks of %d)%s at latent %dx%d, %s, cache %s",
             job.batch, job.num_frames, chunks, f, f" after {given} given" if given else "", *job.latent_hw,
             cfg.dtype, spec.cache.policy)
    stride = video.strides(spec)[0]
    if sink is not None and given:  # the decoder runs through the given frames first (its state)
        sink.push(job.initial, write=spec.output.init_in_output)

    def progress(k, x0, seconds):
        if sink is not None:  # decode in step with generation, straight into the mp4s
            sink.push(x0)
        frames = job.batch * (x0.shape[1] * stride - (stride - 1 if k == 0 and not given else 0))
        log.info("chunk %d/%d: frames %d-%d in %.2f s (%.1f video frames/s)%s", k + 1, chunks, given + k * f,
                 given + (k + 1) * f - 1, seconds, frames / seconds, " incl. compile" if k == 0 else "")

    texts = [(t // f, text_kv_of(models.dit, ctx, mesh, models.sampler)) for t, ctx in ((0, job.context), *job.switches)]
    text_at = lambda k: [kv for start, kv in texts if start <= k][-1]
    result = rollout(models.dit, policy, models.sampler, text_at, job.noise, chunks, on_chunk=progress,
                     record_noise=record_noise, mesh=mesh, initial=job.initial, trace=bool(spec.output.trace_cache),
                     keep_cache=types_online(spec), typing=typing)
    if typing is not None:
        write_online_map(spec, typing)
    log.info("done: %d latent frames in %.1f s", job.num_frames, time.perf_counter() - start)
    return result


def generate_and_write(spec, mesh_for=None) -> Rollout:
    """`python -m pyramid_jax.generate`: check, load, generate, write (mp4s, latents, replay).
    mesh_for(batch, cfg): the mesh the batch runs on (None: one device)."""
    check_config(spec)
    video.check_outputs(spec)
    models = load_models(spec, decoder=bool(spec.output.output))
    job = generation_inputs(spec, models)
    mesh = None if mesh_for is None else mesh_for(job.batch, models.dit.cfg)
    if mesh is not None:
        log.info("mesh: %s", dict(mesh.shape))
    decoder = video.video_decoder(spec, job.batch, job.latent_hw, models.vae) if spec.output.output else None
    sink = (video.VideoSink(spec, video.output_paths(spec.output.output, job.batch), decoder) if spec.output.output
            else None)
    try:
        result = generate(spec, models, job, sink, record_noise=bool(spec.output.save_replay), mesh=mesh)
        write_files(spec, result, job)
        if sink is not None:
            sink.close(result.latents)
    except OSError as e:  # a full disk, a vanished directory: the partial files go
        if sink is not None:
            sink.abort()
        raise UserError(f"writing the outputs failed: {os_reason(e)}") from None
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    return result


def write_files(spec, result: Rollout, job: GenerationInputs) -> None:
    """The latents (given frames first) and, if asked, the replay file (what this run drew,
    and the given frames as initial_latent)."""
    media.save_npz(video.latents_path(spec), latents=result.latents)
    log.info("wrote latents %s %s", video.latents_path(spec), list(result.latents.shape))
    if result.trace is not None:
        trace_lib.save(spec.output.trace_cache, result.trace, policy=spec.cache.policy)
        log.info("wrote the cache trace %s (%d entries)", spec.output.trace_cache, len(result.trace))
    if types_online(spec) and result.cache is not None:
        write_groups(spec, result.cache)
    if spec.output.save_replay:
        given = {} if job.initial is None else {"initial_latent": job.initial}
        if types_online(spec) and result.cache is not None:  # the rows its typing drew
            given["dummy_rows"] = np.asarray(result.cache.own.rows)
        media.save_npz(spec.output.save_replay, context=job.context, noise=result.noise, renoise=result.renoise,
                       **given)
        log.info("wrote replay %s", spec.output.save_replay)
