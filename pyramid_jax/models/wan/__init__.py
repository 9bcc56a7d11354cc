"""The causal Wan2.1 DiT: `modeling` (the nnx module, its config, the chunk call) and `params`
(its checkpoint name table: upstream, diffusers and Self Forcing layouts -> our parameters)."""
