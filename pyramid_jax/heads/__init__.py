"""Head typing (Pyramid Forcing's offline step): calibration rollouts record each head's
profile (`calibrate`), profiles vote a type per head (`classify`: Anchor, Wave or Veil), and
the map is drawn (`figures`). The map's file format and what the cache does with it live in
`cache.head_map` and `cache.pyramid`; the program is `pyramid_jax.cli.classify`.
"""
