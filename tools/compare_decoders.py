"""TAEHV's quality cost: the same latents decoded by the Wan VAE and by TAEHV, both streaming
as `generate` decodes them, and TAEHV's frames scored against the Wan VAE's (PSNR over uint8
frames, per video and per frame position).

  python tools/compare_decoders.py --vae checkpoints/wan_vae --taehv checkpoints/taehv \\
      --latents outputs/video.npz [--json bench_results/decoders_psnr.json]

--latents: an npz with `latents` [B, F, 16, h, w] (what generate's save_latents writes; the
DiT's latents); without it, --random-latents N draws N latent frames of 60x104 from a normal
distribution (a smoke run: random latents are not what a DiT makes, so say which was used).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """dB between uint8 arrays (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def decode(kind: str, model, latents: np.ndarray) -> np.ndarray:
    """latents [B, F, C, h, w] -> uint8 frames [B, 1 + 4 (F - 1), 8h, 8w, 3], a chunk at a time."""
    from pyramid_jax.models.taehv import modeling as taehv
    from pyramid_jax.models.vae import modeling as vae

    stream = (taehv.StreamingTAEHV if kind == "taehv" else vae.StreamingDecoder)(model, latents.shape[0],
                                                                                  latents.shape[3:5])
    return np.concatenate([stream.push(latents[:, s:s + 3]) for s in range(0, latents.shape[1], 3)], axis=1)


def compare(wan, taehv_model, latents: np.ndarray) -> dict:
    a, b = decode("wan", wan, latents), decode("taehv", taehv_model, latents)
    assert a.shape == b.shape, (a.shape, b.shape)
    return dict(videos=int(a.shape[0]), video_frames=int(a.shape[1]), size=f"{a.shape[3]}x{a.shape[2]}",
                psnr_dB=psnr(b, a), psnr_per_video_dB=[psnr(b[i], a[i]) for i in range(a.shape[0])],
                psnr_first_frame_dB=psnr(b[:, 0], a[:, 0]), psnr_last_frame_dB=psnr(b[:, -1], a[:, -1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", required=True, help="Wan VAE checkpoint (convert_checkpoint.py --kind vae)")
    p.add_argument("--taehv", required=True, help="TAEHV checkpoint (convert_checkpoint.py --kind taehv)")
    p.add_argument("--latents", default="", help="npz with latents [B, F, 16, h, w]")
    p.add_argument("--random-latents", type=int, default=0, help="else: this many random latent frames")
    p.add_argument("--hw", default="60x104", help="latent size of --random-latents")
    p.add_argument("--json", default="", help="where to write the result")
    a = p.parse_args(argv)
    from pyramid_jax.weights.checkpoint import CheckpointError, load_taehv, load_vae

    try:
        wan, tae = load_vae(a.vae), load_taehv(a.taehv)
    except CheckpointError as e:
        print(f"compare_decoders: error: {e}", file=sys.stderr)
        return 2
    if a.latents:
        latents, source = np.load(a.latents)["latents"].astype(np.float32), a.latents
    elif a.random_latents > 0:
        h, w = (int(v) for v in a.hw.split("x"))
        latents = np.random.default_rng(0).standard_normal((1, a.random_latents, 16, h, w)).astype(np.float32)
        source = f"random normal latents, {a.random_latents} frames of {h}x{w}"
    else:
        print("compare_decoders: error: give --latents FILE or --random-latents N", file=sys.stderr)
        return 2
    row = dict(compare(wan, tae, latents), latents=source, vae=a.vae, taehv=a.taehv)
    print(f"TAEHV vs the Wan VAE on {source}: PSNR {row['psnr_dB']:.2f} dB over {row['videos']} video(s) of "
          f"{row['video_frames']} frames ({row['size']}); first frame {row['psnr_first_frame_dB']:.2f} dB, "
          f"last {row['psnr_last_frame_dB']:.2f} dB")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json + ".tmp", "w") as fh:
            json.dump(row, fh, indent=2)
        os.replace(a.json + ".tmp", a.json)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
