"""The programs, each a `main(argv) -> exit code` on one harness (`cli.harness`).

  generate  one video (or one batch of prompts) from a config    python -m pyramid_jax.generate / pyramid-generate
  batch     thousands of prompts across hosts, resumably          python -m pyramid_jax.batch / pyramid-batch
  serve     the studio: watch and steer a generation live         python -m pyramid_jax.serve / pyramid-serve
  export    the chunk step lowered for a TPU or GPU               python -m pyramid_jax.export / pyramid-export
  classify  type a model's heads (Anchor / Wave / Veil)           tools/classify_heads.py / pyramid-classify-heads
  convert   PyTorch checkpoints -> orbax                          tools/convert_checkpoint.py / pyramid-convert
"""
