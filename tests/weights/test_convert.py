"""tools/convert_checkpoint.py refuses bad inputs with one clear line and writes nothing."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import run_main, run_tool, save_self_forcing_pt
from pyramid_jax.cli import convert


class NotATensor:  # a pickled object that weights_only loading must refuse
    pass


def _upstream_sd(tiny_diffusers, tmp_path):
    path = tmp_path / "good.pt"
    save_self_forcing_pt(tiny_diffusers, path, wrap=False)
    return torch.load(path, weights_only=True)["generator_ema"]


def _bad_file(kind, tiny_diffusers, tmp_path):
    """Write a broken checkpoint of the given kind; return (path, text the error must contain)."""
    if kind in ("missing", "unknown", "shape"):
        sd = _upstream_sd(tiny_diffusers, tmp_path)
        if kind == "missing":
            del sd["model.blocks.1.ffn.2.bias"]
            want = "missing keys: blocks.1.ffn.2.bias"
        elif kind == "unknown":
            sd["model.blocks.0.extra_gate.weight"] = torch.zeros(3)
            want = "unknown keys: blocks.0.extra_gate.weight"
        else:
            sd["model.blocks.0.self_attn.q.bias"] = torch.zeros(65)
            want = "blocks.0.self_attn.q.bias [65] (expected [64])"
        path = tmp_path / f"{kind}.pt"
        torch.save({"generator_ema": sd}, path)
        return path, want
    if kind == "truncated":
        tiny_diffusers.save_pretrained(tmp_path / "d", safe_serialization=True)
        src = tmp_path / "d" / "diffusion_pytorch_model.safetensors"
        data = src.read_bytes()
        path = tmp_path / "truncated.safetensors"
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated"
    if kind == "truncated_pt":
        path = tmp_path / "good.pt"
        save_self_forcing_pt(tiny_diffusers, path, wrap=False)
        data = path.read_bytes()
        path = tmp_path / "truncated.pt"
        path.write_bytes(data[: len(data) // 2])
        return path, "not a readable PyTorch checkpoint"
    if kind == "not_checkpoint":
        path = tmp_path / "notes.pt"
        path.write_text("this is not a checkpoint\n")
        return path, "not a readable PyTorch checkpoint"
    if kind == "unsafe_pickle":
        path = tmp_path / "unsafe.pt"
        torch.save({"generator_ema": {"w": torch.zeros(2)}, "extra": NotATensor()}, path)
        return path, "refused"
    if kind == "missing_file":
        return tmp_path / "nope.pt", "no such file"
    raise AssertionError(kind)


KINDS = ["missing", "unknown", "shape", "truncated", "truncated_pt", "not_checkpoint", "unsafe_pickle",
         "missing_file"]


@pytest.mark.parametrize("kind", KINDS)
def test_refusals(kind, tiny_diffusers, tmp_path):
    src, want = _bad_file(kind, tiny_diffusers, tmp_path)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    dst = out_parent / "ckpt"
    r = run_main(convert.main, ["--src", str(src), "--dst", str(dst), "--num-heads", "2"])
    assert r.returncode != 0
    err_lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(err_lines) == 1, r.stderr
    assert want in err_lines[0], err_lines[0]
    assert len(err_lines[0].replace(str(src), "")) <= 160, err_lines[0]  # readable, whatever torch says
    assert os.listdir(out_parent) == []  # neither dst nor a temporary directory


def test_verbose_shows_what_torch_said(tiny_diffusers, tmp_path):
    src, _ = _bad_file("truncated_pt", tiny_diffusers, tmp_path)
    r = run_tool("tools/convert_checkpoint.py", "--src", str(src), "--dst", str(tmp_path / "o"), "--verbose")
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) >= 2 and "not a readable PyTorch checkpoint" in lines[0]


def test_unknown_heads_asks_for_flag(tiny_diffusers, tmp_path):
    tiny_diffusers.save_pretrained(tmp_path / "d", safe_serialization=True)
    r = run_tool("tools/convert_checkpoint.py", "--src", str(tmp_path / "d"), "--dst", str(tmp_path / "o"))
    assert r.returncode != 0 and "--num-heads" in r.stderr
    assert not (tmp_path / "o").exists()


def test_existing_destination_is_refused(tiny_diffusers, tmp_path):
    tiny_diffusers.save_pretrained(tmp_path / "d", safe_serialization=True)
    (tmp_path / "o").mkdir()
    r = run_tool("tools/convert_checkpoint.py", "--src", str(tmp_path / "d"), "--dst", str(tmp_path / "o"),
                 "--num-heads", "2")
    assert r.returncode != 0 and "already exists" in r.stderr
    assert os.listdir(tmp_path / "o") == []


def test_happy_path_cli(tiny_diffusers, tmp_path):
    tiny_diffusers.save_pretrained(tmp_path / "d", safe_serialization=True)
    r = run_tool("tools/convert_checkpoint.py", "--src", str(tmp_path / "d"), "--dst", str(tmp_path / "o"),
                 "--num-heads", "2", "--dtype", "bfloat16")
    assert r.returncode == 0, r.stderr
    assert "diffusers layout" in r.stdout and "2 layers" in r.stdout
    assert sorted(os.listdir(tmp_path / "o")) == ["config.json", "params"]


@pytest.mark.parametrize("kind", ["dit", "dit without qk/cross norms", "vae", "t5"])
def test_name_tables_cover_their_models(kind):
    """One table per model names every parameter of nnx.eval_shape(model) exactly once, and
    checkpoint -> params -> checkpoint is the identity."""
    import numpy as np

    from pyramid_jax.models.umt5.modeling import UMT5Config
    from pyramid_jax.models.vae.modeling import VAEConfig
    from pyramid_jax.models.wan.modeling import WanConfig
    from pyramid_jax.models.umt5 import params as t5_names
    from pyramid_jax.models.vae import params as vae_names
    from pyramid_jax.models.wan import params as wan_names
    from pyramid_jax.models.table import check_covers, checkpoint_from, checkpoint_shapes, params_from

    if kind.startswith("dit"):
        cfg = WanConfig(dim=32, ffn_dim=48, num_heads=2, num_layers=3, in_channels=4, out_channels=4, text_dim=8,
                        freq_dim=16, qk_norm=kind == "dit", cross_attn_norm=kind == "dit")
        names, abstract, layers = wan_names.names(cfg), wan_names.abstract_params(cfg), cfg.num_layers
    elif kind == "vae":
        cfg = VAEConfig(base_dim=8, num_res_blocks=1)
        names, abstract, layers = vae_names.names(cfg), vae_names.abstract_params(cfg), 0
    else:
        cfg = UMT5Config(vocab_size=50, d_model=16, d_kv=4, num_heads=4, d_ff=24, num_layers=2)
        names, abstract, layers = t5_names.names(cfg), t5_names.abstract_params(cfg), 0
    check_covers(names, abstract)
    rng = np.random.default_rng(0)
    sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in checkpoint_shapes(names, abstract, layers).items()}
    again = checkpoint_from(params_from(sd, names, abstract, layers), names, layers)
    assert sorted(again) == sorted(sd) and all(np.array_equal(again[k], sd[k]) for k in sd)
