"""KV slot pool, page plans and cache policies (pure, jit-safe functions of the state)."""
