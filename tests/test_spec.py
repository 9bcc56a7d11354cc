"""pyramid_jax.spec: every config field lands in one typed group, read once; renamed and bad
fields are refused in one line; a spec is frozen and changed only by copy (`but`)."""

from __future__ import annotations

import dataclasses

import pytest

from pyramid_jax.config import base_config, parse_spec
from pyramid_jax.errors import UserError
from pyramid_jax.models.wan.modeling import WanConfig
from pyramid_jax.spec import RunSpec, from_config

# config field -> where the spec keeps it (the table in spec.py's docstring)
WHERE = {"checkpoint": "model.checkpoint", "dtype": "model.dtype", "attention.backend": "model.attention",
         "batch_size": "mesh.batch_size", "mesh.data": "mesh.data", "mesh.model": "mesh.model"}
WHERE.update({f"text_encoder.{k}": f"text.{k}" for k in ("kind", "checkpoint", "tokenizer", "device")})
WHERE.update({f"vae.{k}": f"decoder.{k}" for k in ("kind", "checkpoint", "taehv_checkpoint", "random", "base_dim",
                                                     "num_res_blocks")})
WHERE.update({f"cache.{k}": f"cache.{k}" for k in (
    "policy", "local_attn_size", "sink_size", "head_map", "kv_dtype", "ar_start", "num_dummy", "local_context_length",
    "spatial_context_length", "temporal_context_length", "dynamic_context_length", "num_frame_patch",
    "sim_retention_ratio")})
WHERE.update({k: f"sampler.{k}" for k in ("frames_per_chunk", "denoising_step_list", "warp_denoising_step", "shift",
                                          "context_noise", "guidance_scale", "renoise_eta")})
WHERE.update({k: f"inputs.{k}" for k in ("prompt", "prompts_file", "prompt_schedule", "prompt_embeds", "replay", "seed",
                                         "num_frames", "height", "width", "init_video", "init_image")})
WHERE.update({k: f"output.{k}" for k in ("output", "save_latents", "save_replay", "fps", "init_in_output",
                                          "trace_cache")})


def leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and k != "model":
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def get(spec, path):
    for part in path.split("."):
        spec = getattr(spec, part)
    return spec


def test_every_config_field_lands_in_one_group():
    c = base_config()
    c.prompt, c.seed, c.cache.policy, c.vae.kind, c.mesh.model, c.fps = "a red ball", 7, "deep_sink", "taehv", 2, 12
    spec = from_config(c)
    fields = dict(leaves(c.to_dict()))
    assert sorted(set(fields) - {"model"}) == sorted(WHERE)  # a new config field needs a place in the spec
    for field, path in WHERE.items():
        want = fields[field]
        assert get(spec, path) == (tuple(want) if isinstance(want, (list, tuple)) else want), field
    assert spec.model.shape == WanConfig.from_dict(dict(c.model.to_dict(), dtype=c.dtype))  # at the run's dtype
    assert isinstance(spec, RunSpec) and spec.sampler.denoising_step_list == (1000, 750, 500, 250)


def test_a_spec_is_frozen_and_changed_by_copy():
    spec = from_config(base_config())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.inputs.seed = 3
    other = spec.but(inputs=dict(seed=3), cache=dict(policy="pyramid"))
    assert (other.inputs.seed, other.cache.policy, other.inputs.num_frames) == (3, "pyramid", spec.inputs.num_frames)
    assert (spec.inputs.seed, spec.cache.policy) == (0, "window")


def test_refusals_are_one_line():
    c = base_config()
    c.num_frame_per_block = 3
    with pytest.raises(UserError, match="^config field num_frame_per_block is now frames_per_chunk"):
        from_config(c)
    with pytest.raises(UserError, match="^model: "):
        parse_spec(["x", "--config=configs/tiny_random.py", "--config.model.prediction=eps"])
