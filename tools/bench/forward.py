"""--forward: CausalWan forward time (jitted, text K/V cached and not) vs diffusers, fp32."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from .common import SIZES, _median_seconds, print_table, size_list


def bench_forward(sizes, repeats):
    """Forward time of CausalWan (jitted, text K/V cached and not) vs diffusers, fp32."""
    import torch
    from diffusers import WanTransformer3DModel
    from flax import nnx

    from pyramid_jax.models.wan.modeling import WanConfig
    from pyramid_jax.models.wan import params as wan_names
    from pyramid_jax.weights.checkpoint import model_from_params

    rows = []
    for name in sizes:
        fields, nf, hh, ww, lt = SIZES[name]
        torch.manual_seed(0)
        ref = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=fields["num_heads"],
            attention_head_dim=fields["dim"] // fields["num_heads"], in_channels=fields["in_channels"],
            out_channels=fields["out_channels"], text_dim=fields["text_dim"], freq_dim=fields["freq_dim"],
            ffn_dim=fields["ffn_dim"], num_layers=fields["num_layers"]).eval()
        sd = wan_names.diffusers_to_upstream({k: v.numpy() for k, v in ref.state_dict().items()})
        cfg = WanConfig(text_len=lt, **fields)
        model = model_from_params(cfg, wan_names.params(sd, cfg))

        x = torch.randn(1, fields["in_channels"], nf, hh, ww)
        ctx = torch.randn(1, lt, fields["text_dim"])
        t = torch.tensor([937.5])

        def run_ref():
            with torch.no_grad():
                ref(x, t, ctx, return_dict=False)

        graphdef, state = nnx.split(model)

        @jax.jit
        def step(state, x, t, tkv):
            return nnx.merge(graphdef, state)(x, t, tkv)[0]

        @jax.jit
        def step_with_text(state, x, t, ctx):
            m = nnx.merge(graphdef, state)
            return m(x, t, m.text_kv(ctx))[0]

        xj = jnp.asarray(x.numpy().transpose(0, 2, 1, 3, 4))
        cj = jnp.asarray(ctx.numpy())
        tj = jnp.asarray(t.numpy())
        tkv = jax.jit(lambda s, c: nnx.merge(graphdef, s).text_kv(c))(state, cj)
        ours = _median_seconds(lambda: step(state, xj, tj, tkv).block_until_ready(), repeats)
        ours_text = _median_seconds(lambda: step_with_text(state, xj, tj, cj).block_until_ready(), repeats)
        theirs = _median_seconds(run_ref, repeats)
        rows.append(dict(section="forward", size=name, dim=cfg.dim, layers=cfg.num_layers,
                         heads=cfg.num_heads, frames=nf, latent=f"{hh}x{ww}", text_len=lt,
                         diffusers_s=theirs, ours_s=ours, ours_with_text_s=ours_text,
                         ratio=ours / theirs, ratio_with_text=ours_text / theirs))
    return rows


def run(args, env):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    fw = bench_forward(size_list(args), args.repeats)
    print("\n## forward: CausalWan (jit) vs diffusers WanTransformer3DModel, fp32, batch 1")
    print_table(fw, ["size", "dim", "layers", "frames", "latent", "text_len", "diffusers_s",
                     "ours_s", "ratio", "ours_with_text_s", "ratio_with_text"])
    return fw
