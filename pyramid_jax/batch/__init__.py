"""Pod-scale batch generation, resumable.

  python -m pyramid_jax.batch --config=configs/NAME.py --prompts=FILE --out=DIR [--config.F=V ...]

Prompts: .txt (one per line) or .jsonl ({"prompt", optional "seed", "name", "num_frames",
"init_video" or "init_image": frames to continue, a path relative to the prompts file; the
content of that file is part of the prompt's resume key; such prompts run one at a time).
Per prompt: NAME.npz (latents), NAME.mp4 (decoded by the configured Wan VAE, or the pixels of
a pixel model) and NAME.json (prompt, seed, frames, key, status, error, timings); one
DIR/manifest.json for the run. A rerun keeps a prompt only if its record matches this run's
key (the config and the content of every file it names) and its files open with the shapes
the config implies; the rest is redone. Writes are atomic. A failing prompt is recorded with
its error and the run goes on.

Exit codes: 0 every prompt of this host done; 1 some failed (see their records); 2 bad input or
an output that cannot be written; 3 this host lost the other hosts (one died, was preempted or
stopped): what it finished is kept, and rerunning every host finishes the rest exactly once.

Multi-host: jax.distributed (--coordinator/--num-processes/--process-id, the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables, or --distributed
alone where JAX finds them itself, as on TPU pods). Prompts are split by process index; each
host restores the checkpoint itself and batches over its own devices (mesh.data x mesh.model).

The parts: `jobs` (the prompts file), `records` (run keys, per-prompt records, the manifest),
`runner` (generation, progress), `hosts` (jax.distributed, barriers, the supervising parent);
the program: `pyramid_jax.cli.batch`.
"""
