"""Wan VAE decoder: parity with diffusers AutoencoderKLWan through the converter; streaming."""

from __future__ import annotations

import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import rel_err, run_tool
from pyramid_jax.models.vae import modeling as vae
from pyramid_jax.cli import convert
from pyramid_jax.weights.checkpoint import load_vae

NRB = 1  # residual blocks per stage (2 in Wan2.1); 1 keeps the test fast


@pytest.fixture(scope="module")
def ref_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    m = AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=NRB).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def to_upstream(sd, nrb=NRB, stages=4):
    """diffusers -> upstream Wan VAE names, written independently of the converter."""
    res = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
           "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
           "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}
    out = {}
    for k, v in sd.items():
        n = k
        if k.startswith("post_quant_conv."):
            n = k.replace("post_quant_conv.", "conv2.")
        elif k.startswith("quant_conv."):
            n = k.replace("quant_conv.", "conv1.")
        elif k.startswith("decoder.conv_in."):
            n = k.replace("conv_in", "conv1")
        elif k.startswith("decoder.norm_out."):
            n = k.replace("norm_out", "head.0")
        elif k.startswith("decoder.conv_out."):
            n = k.replace("conv_out", "head.2")
        elif m := re.match(r"decoder\.mid_block\.resnets\.(\d)\.(.+)", k):
            n = f"decoder.middle.{2 * int(m.group(1))}.{res[m.group(2)]}"
        elif m := re.match(r"decoder\.mid_block\.attentions\.0\.(.+)", k):
            n = f"decoder.middle.1.{m.group(1)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(.+)", k):
            n = f"decoder.upsamples.{int(m.group(1)) * (nrb + 2) + int(m.group(2))}.{res[m.group(3)]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.(.+)", k):
            n = f"decoder.upsamples.{int(m.group(1)) * (nrb + 2) + nrb + 1}.{m.group(2)}"
        elif k.startswith("encoder."):
            n = _upstream_encoder_key(k, res)
        out[n] = v.clone()
    return out


def _upstream_encoder_key(k, res):
    """diffusers -> upstream Wan VAE encoder names (its flat down list keeps its indices)."""
    for a, b in (("encoder.conv_in.", "encoder.conv1."), ("encoder.norm_out.", "encoder.head.0."),
                 ("encoder.conv_out.", "encoder.head.2.")):
        if k.startswith(a):
            return k.replace(a, b)
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.(.+)", k):
        return f"encoder.downsamples.{m.group(1)}.{res.get(m.group(2), m.group(2))}"
    if m := re.match(r"encoder\.mid_block\.resnets\.(\d)\.(.+)", k):
        return f"encoder.middle.{2 * int(m.group(1))}.{res[m.group(2)]}"
    if m := re.match(r"encoder\.mid_block\.attentions\.0\.(.+)", k):
        return f"encoder.middle.1.{m.group(1)}"
    raise KeyError(k)


def _diffusers_decode(m, z):
    mean = torch.tensor(vae.LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.LATENTS_STD).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        return m.decode(z / (1.0 / std) + mean, return_dict=False)[0].numpy()  # [B, 3, T, H, W]


def _convert(m, tmp_path, layout, nrb=NRB):
    """m written as diffusers or upstream files, converted to tmp_path/vae."""
    if layout == "diffusers":
        m.save_pretrained(tmp_path / "src", safe_serialization=True)
        src = tmp_path / "src"
    else:
        src = tmp_path / "Wan2.1_VAE.pth"
        torch.save(to_upstream(m.state_dict(), nrb=nrb), src)
    assert convert.main(["--src", str(src), "--dst", str(tmp_path / "vae"), "--kind", "vae"]) == 0


@pytest.mark.parametrize("layout", ["diffusers", "upstream"])
def test_vae_decode_parity_and_streaming(ref_vae, tmp_path, layout):
    _convert(ref_vae, tmp_path, layout)
    decoder = load_vae(str(tmp_path / "vae"))
    cfg = decoder.cfg
    assert cfg.base_dim == 16 and cfg.num_res_blocks == NRB and cfg.temperal_upsample == (True, True, False)

    z = torch.randn(1, 16, 4, 5, 7, generator=torch.Generator().manual_seed(1))  # odd latent size
    ref = _diffusers_decode(ref_vae, z)
    zj = jnp.asarray(z.numpy().transpose(0, 2, 3, 4, 1))
    whole = np.asarray(decoder(zj)).transpose(0, 4, 1, 2, 3)
    assert whole.shape == ref.shape == (1, 3, 1 + 4 * 3, 40, 56)
    err = rel_err(whole, ref)
    print(f"{layout}: VAE decode rel err {err:.2e}")
    assert err <= 1e-5

    state = decoder.init_state(1, (5, 7))
    frames = []
    for i in range(4):  # streaming: one latent frame per call, state carried across
        out, state = decoder.decode_frame(zj[:, i:i + 1], state, first=i == 0)
        frames.append(np.asarray(out))
        assert out.shape[1] == (1 if i == 0 else 4)
    stream = np.concatenate(frames, 1).transpose(0, 4, 1, 2, 3)
    assert rel_err(stream, whole) <= 1e-6


def test_vae_converter_names_missing_key(ref_vae, tmp_path):
    sd = to_upstream(ref_vae.state_dict())
    del sd["decoder.head.2.bias"]
    torch.save(sd, tmp_path / "bad.pth")
    r = run_tool("tools/convert_checkpoint.py", "--src", str(tmp_path / "bad.pth"), "--dst", str(tmp_path / "o"),
                 "--kind", "vae")
    assert r.returncode != 0 and "missing keys: decoder.conv_out.bias" in r.stderr
    assert not (tmp_path / "o").exists()


def _diffusers_encode(m, video):
    """The normalised posterior mean, as upstream's WanVAE.encode returns it. video [B, 3, T, H, W]."""
    mean = torch.tensor(vae.LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.LATENTS_STD).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        mu = m.encode(video).latent_dist.mean
        return ((mu - mean) * (1.0 / std)).numpy()


@pytest.mark.parametrize("layout", ["diffusers", "upstream"])
def test_vae_encode_parity(ref_vae, tmp_path, layout):
    """The encoder from the same files as the decoder equals upstream's chunked encode (first
    frame alone, then 4 at a time with causal caches) for 1, 5 and 9 frames."""
    from pyramid_jax.weights.checkpoint import load_vae_encoder

    _convert(ref_vae, tmp_path, layout)
    encoder = load_vae_encoder(str(tmp_path / "vae"))
    for frames in (1, 5, 9):
        video = torch.rand(1, 3, frames, 24, 40, generator=torch.Generator().manual_seed(frames)) * 2 - 1
        want = _diffusers_encode(ref_vae, video)
        got = np.asarray(encoder(jnp.asarray(video.numpy().transpose(0, 2, 3, 4, 1)))).transpose(0, 4, 1, 2, 3)
        assert got.shape == want.shape == (1, 16, 1 + (frames - 1) // 4, 3, 5)
        err = rel_err(got, want)
        print(f"{layout}: {frames} frames, encode rel err {err:.2e}")
        assert err <= 1e-5


def test_old_vae_checkpoint_still_decodes_and_refuses_to_encode(ref_vae, tmp_path):
    """A checkpoint converted from a file without an encoder loads as a decoder; asking it for
    an encoder is one line that says what to do."""
    from pyramid_jax.weights.checkpoint import CheckpointError, load_vae_encoder

    sd = {k: v for k, v in to_upstream(ref_vae.state_dict()).items() if not k.startswith(("encoder.", "conv1."))}
    torch.save(sd, tmp_path / "decoder_only.pth")
    assert convert.main(["--src", str(tmp_path / "decoder_only.pth"), "--dst", str(tmp_path / "vae"),
                         "--kind", "vae"]) == 0
    assert load_vae(str(tmp_path / "vae")).cfg.base_dim == 16
    with pytest.raises(CheckpointError, match="holds no VAE encoder .* convert Wan2.1_VAE.pth again"):
        load_vae_encoder(str(tmp_path / "vae"))


@pytest.mark.slow
def test_vae_encode_parity_at_full_size(tmp_path):
    """Wan2.1's own sizes (base_dim 96, 2 residual blocks per stage), random weights, from an
    upstream-named Wan2.1_VAE.pth: 9 frames, chunked as upstream encodes them."""
    from diffusers import AutoencoderKLWan

    from pyramid_jax.weights.checkpoint import load_vae_encoder

    torch.manual_seed(1)
    m = AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    _convert(m, tmp_path, "upstream", nrb=2)
    encoder = load_vae_encoder(str(tmp_path / "vae"))
    video = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1
    want = _diffusers_encode(m, video)
    got = np.asarray(encoder(jnp.asarray(video.numpy().transpose(0, 2, 3, 4, 1)))).transpose(0, 4, 1, 2, 3)
    assert got.shape == want.shape == (1, 16, 3, 4, 4)
    err = rel_err(got, want)
    print(f"full size: 9 frames, encode rel err {err:.2e}")
    assert err <= 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SELF_FORCING_DIR"),
                    reason="set SELF_FORCING_DIR to a Self Forcing checkout to compare with its own WanVAE_")
def test_vae_encode_equals_upstream_wan_vae(tmp_path):
    """Upstream's own class (wan/modules/vae.py of a Self Forcing checkout, the Wan2.1 code):
    WanVAE_ at full size with random weights, its state dict saved as Wan2.1_VAE.pth and
    converted; encode(x, [mean, 1 / std]) for 1, 5 and 9 frames."""
    import importlib.util

    from pyramid_jax.weights.checkpoint import load_vae_encoder

    path = os.path.join(os.environ["SELF_FORCING_DIR"], "wan", "modules", "vae.py")
    spec = importlib.util.spec_from_file_location("upstream_wan_vae", path)
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)
    torch.manual_seed(2)
    m = upstream.WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], dropout=0.0).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch.save(m.state_dict(), tmp_path / "Wan2.1_VAE.pth")
    assert convert.main(["--src", str(tmp_path / "Wan2.1_VAE.pth"), "--dst", str(tmp_path / "vae"), "--kind", "vae"]) == 0
    encoder = load_vae_encoder(str(tmp_path / "vae"))
    scale = [torch.tensor(vae.LATENTS_MEAN), 1.0 / torch.tensor(vae.LATENTS_STD)]
    for frames in (1, 5, 9):
        video = torch.rand(1, 3, frames, 32, 32, generator=torch.Generator().manual_seed(frames)) * 2 - 1
        with torch.no_grad():
            want = m.encode(video, scale).numpy()
        got = np.asarray(encoder(jnp.asarray(video.numpy().transpose(0, 2, 3, 4, 1)))).transpose(0, 4, 1, 2, 3)
        assert got.shape == want.shape == (1, 16, 1 + (frames - 1) // 4, 4, 4)
        err = rel_err(got, want)
        print(f"upstream WanVAE_: {frames} frames, encode rel err {err:.2e}")
        assert err <= 1e-4
