"""Import upstream Self Forcing's modules from a checkout, on a CPU, in fp32.

Used by the tools that run upstream beside us (side_by_side.py, record_upstream.py). Its
modules are imported as they are, with these changes, all outside its files:
- its package __init__s are skipped (they import the whole training app and its weights);
- demo_utils.memory and wan.modules.t5 are stubs: they ask CUDA for the current device at
  import (the text encoder is never built here: prompt embeddings are given);
- attention runs in fp32 through torch's scaled_dot_product_attention: upstream's CPU
  fallback casts q/k/v to bfloat16 (its default for flash attention), which an fp32 model
  cannot take.
This module imports torch only (never JAX), so a timed upstream process stays pure.
"""

from __future__ import annotations

import os
import sys
import types


def _attention(q, k, v, *args, **kw):
    """[B, L, H, D] -> [B, L, H, D], fp32, no mask (upstream's inference calls pass none)."""
    import torch

    q, k, v = (a.transpose(1, 2) for a in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).contiguous()


def load(repo: str) -> types.SimpleNamespace:
    """Upstream's modules from the checkout at `repo`: causal_model (CausalWanModel),
    and, when asked for through the namespace, wan_wrapper and causal_inference."""
    import importlib

    import torch

    torch.set_grad_enabled(False)
    if not os.path.isfile(os.path.join(repo, "wan", "modules", "causal_model.py")):
        raise SystemExit(f"{repo!r} is not a Self Forcing checkout (no wan/modules/causal_model.py)")
    if repo not in sys.path:
        sys.path.insert(0, repo)
    for name in ("wan", "wan.modules", "pipeline", "demo_utils"):
        mod = types.ModuleType(name)
        mod.__path__ = [os.path.join(repo, *name.split("."))]
        sys.modules[name] = mod
    memory = types.ModuleType("demo_utils.memory")
    memory.gpu = torch.device("cpu")
    memory.get_cuda_free_memory_gb = lambda *a, **k: 0.0
    memory.DynamicSwapInstaller = object
    memory.move_model_to_device_with_memory_preservation = lambda *a, **k: None
    sys.modules["demo_utils.memory"] = memory
    t5 = types.ModuleType("wan.modules.t5")

    def umt5_xxl(*a, **kw):
        raise RuntimeError("upstream's umT5 is not importable on a CPU-only torch; give prompt embeddings")

    t5.umt5_xxl = umt5_xxl
    sys.modules["wan.modules.t5"] = t5

    wan_attention = importlib.import_module("wan.modules.attention")
    wan_attention.attention = wan_attention.flash_attention = _attention
    causal_model = importlib.import_module("wan.modules.causal_model")
    causal_model.attention = _attention

    class Modules(types.SimpleNamespace):
        def __getattr__(self, name):  # the pipeline modules import more: only when asked
            paths = {"wan_wrapper": "utils.wan_wrapper", "causal_inference": "pipeline.causal_inference"}
            if name not in paths:
                raise AttributeError(name)
            return importlib.import_module(paths[name])

    return Modules(causal_model=causal_model)
