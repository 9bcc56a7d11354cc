"""A run, typed: the ml_collections config (the public interface: config files and
--config.FIELD=VALUE flags) read once at the edge into frozen dataclasses, which the library
takes. Each group says what one part of a run needs.

  config field                                     spec
  checkpoint, model, dtype, attention.backend      model  (ModelSpec)
  text_encoder.*                                   text   (TextSpec)
  vae.*                                            decoder (DecoderSpec)
  cache.*                                          cache  (CacheSpec)
  frames_per_chunk, denoising_step_list,           sampler (SamplerSpec)
    warp_denoising_step, shift, context_noise,
    guidance_scale, renoise_eta
  mesh.*, batch_size                               mesh   (MeshSpec)
  prompt, prompts_file, prompt_schedule,           inputs (InputSpec)
    prompt_embeds, replay, seed, num_frames,
    height, width, init_video, init_image
  output, save_latents, save_replay, fps,          output (OutputSpec)
    init_in_output, trace_cache
"""

from __future__ import annotations

import dataclasses

from pyramid_jax.errors import UserError
from pyramid_jax.models.wan.modeling import WanConfig

RENAMED = {"num_frame_per_block": "frames_per_chunk"}  # old config field -> its name now


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    checkpoint: str  # orbax dir; "" = random weights of `shape`
    shape: WanConfig  # the config's `model` fields at the run's dtype (a checkpoint brings its own)
    dtype: str  # float32 | bfloat16: what the weights and activations run in
    attention: str  # the attention backend: reference | pallas


@dataclasses.dataclass(frozen=True)
class TextSpec:
    kind: str  # umt5 | placeholder | none
    checkpoint: str
    tokenizer: str
    device: str  # default | cpu


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    kind: str  # wan | taehv | pixel
    checkpoint: str
    taehv_checkpoint: str
    random: bool
    base_dim: int
    num_res_blocks: int


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    policy: str
    local_attn_size: int
    sink_size: int
    head_map: str
    kv_dtype: str
    ar_start: int
    num_dummy: int
    local_context_length: int
    spatial_context_length: int
    temporal_context_length: int
    dynamic_context_length: int
    num_frame_patch: int
    sim_retention_ratio: float

    def options(self) -> dict:
        """The head-aware policies' own fields (cache.policies.make_policy's options)."""
        skip = ("policy", "local_attn_size", "sink_size", "head_map", "kv_dtype")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    frames_per_chunk: int
    denoising_step_list: tuple
    warp_denoising_step: bool
    shift: float
    context_noise: float
    guidance_scale: float
    renoise_eta: float


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    data: int  # 0 = the devices left by `model` that divide the batch
    model: int
    batch_size: int  # prompts per step in batch; 0 = mesh.data


@dataclasses.dataclass(frozen=True)
class InputSpec:
    prompt: str
    prompts_file: str
    prompt_schedule: str
    prompt_embeds: str
    replay: str
    seed: int
    num_frames: int  # latent frames to make
    height: int  # pixels
    width: int
    init_video: str
    init_image: str


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    output: str
    save_latents: str
    save_replay: str
    fps: int
    init_in_output: bool
    trace_cache: str


@dataclasses.dataclass(frozen=True)
class RunSpec:
    model: ModelSpec
    text: TextSpec
    decoder: DecoderSpec
    cache: CacheSpec
    sampler: SamplerSpec
    mesh: MeshSpec
    inputs: InputSpec
    output: OutputSpec

    def but(self, **groups) -> "RunSpec":
        """This spec with some fields of some groups changed: spec.but(inputs=dict(seed=3))."""
        return dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g), **v) for g, v in groups.items()})


def _fields(cls, values) -> dict:
    return {f.name: values[f.name] for f in dataclasses.fields(cls)}


def from_config(c) -> RunSpec:
    """The spec of a config (ConfigDict, as config files and flags make it). Raises UserError
    (one line) for a field renamed since, or model fields that make no model."""
    for old in RENAMED:
        if old in c:
            raise UserError(f"config field {old} is now {RENAMED[old]}: rename it in the config file")
    d = c.to_dict()
    try:
        shape = WanConfig.from_dict(dict(d["model"], dtype=d["dtype"]))
    except (TypeError, ValueError) as e:
        raise UserError(f"model: {e}") from None
    return RunSpec(
        model=ModelSpec(d["checkpoint"], shape, d["dtype"], d["attention"]["backend"]),
        text=TextSpec(**_fields(TextSpec, d["text_encoder"])),
        decoder=DecoderSpec(**_fields(DecoderSpec, d["vae"])),
        cache=CacheSpec(**_fields(CacheSpec, d["cache"])),
        sampler=SamplerSpec(**dict(_fields(SamplerSpec, d), denoising_step_list=tuple(d["denoising_step_list"]))),
        mesh=MeshSpec(d["mesh"]["data"], d["mesh"]["model"], d["batch_size"]),
        inputs=InputSpec(**_fields(InputSpec, d)),
        output=OutputSpec(**_fields(OutputSpec, d)),
    )
