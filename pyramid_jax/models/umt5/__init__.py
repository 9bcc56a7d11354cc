"""The umT5-XXL text encoder: `modeling` (the nnx module, the encoder's math, the tokenizer)
and `params` (its checkpoint name table: transformers and upstream layouts)."""
