"""Read PyTorch / safetensors checkpoints into flat {name: numpy array} dicts.

torch is optional and imported only for .pt/.pth files; safetensors are parsed directly
(the format is a JSON header plus raw little-endian buffers), so bf16 reads exactly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import warnings

import ml_dtypes
import numpy as np

from pyramid_jax.errors import first_line
from pyramid_jax.models.table import ConversionError

log = logging.getLogger(__name__)

_WRAPPER_SEGMENTS = re.compile(r"(_fsdp_wrapped_module\.|_checkpoint_wrapped_module\.|_orig_mod\.)")

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def clean_key(key: str) -> str:
    """Drop FSDP / checkpoint / torch.compile wrapper segments and a leading `model.`."""
    key = _WRAPPER_SEGMENTS.sub("", key)
    return key[len("model."):] if key.startswith("model.") else key


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A .safetensors file -> {name: array} (memory-mapped, any dtype incl. bf16)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ConversionError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise ConversionError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConversionError(f"{path}: not a safetensors file (header is not JSON)") from None
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    buf = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if data_len else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if end > data_len:
            raise ConversionError(f"{path}: truncated file (tensor {name} ends at byte {end}, "
                                  f"data has {data_len})")
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        out[name] = np.asarray(buf[begin:end]).view(dtype).reshape(info["shape"])
    return out


def _torch_to_numpy(t) -> np.ndarray:
    import torch  # optional (the convert extra): only .pt/.pth files need it

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def read_torch(path: str, ema: bool = True) -> dict[str, np.ndarray]:
    """A .pt/.pth file -> {name: array}. Loads with weights_only=True, never runs pickled code.

    Self Forcing-style files hold `generator_ema` and `generator`: EMA is picked unless
    ema=False.
    """
    try:
        import torch
    except ImportError:
        raise ConversionError("reading .pt/.pth needs torch: pip install -e '.[convert]'") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; errors suffice
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ConversionError(
                f"{path}: refused, the pickle needs more than tensors to load (it could run "
                "code); re-save it as a plain state dict or safetensors", detail=str(e)) from None
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({first_line(e, 80)})",
                              detail=str(e)) from None
    if isinstance(obj, dict):
        pick = ("generator_ema", "generator") if ema else ("generator",)
        for name in pick:
            if isinstance(obj.get(name), dict):
                log.info("using %r from %s", name, path)
                obj = obj[name]
                break
        else:
            if not ema and "generator_ema" in obj:
                raise ConversionError(f"{path}: --no-ema asked for `generator`, which is absent")
            for name in ("state_dict", "model", "module"):
                if isinstance(obj.get(name), dict) and len(obj) <= 3:
                    obj = obj[name]
                    break
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{path}: no state dict inside (got {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "dtype"):
            raise ConversionError(f"{path}: entry {k!r} is not a tensor ({type(v).__name__})")
        out[k] = _torch_to_numpy(v)
    return out


def read_checkpoint(src: str, ema: bool = True, subfolder: str | None = None) -> dict[str, np.ndarray]:
    """Any supported source -> {cleaned name: array}.

    src: a .pt/.pth/.bin file, a .safetensors file, or a diffusers folder (sharded or not;
    `subfolder`, e.g. "transformer", is used when src is a whole pipeline folder).
    """
    if not os.path.exists(src):
        raise ConversionError(f"{src}: no such file or folder")
    if os.path.isdir(src):
        folder = src
        if subfolder and not _safetensor_files(src) and os.path.isdir(os.path.join(src, subfolder)):
            folder = os.path.join(src, subfolder)
        files = _safetensor_files(folder)
        if not files:
            raise ConversionError(f"{src}: folder holds no .safetensors files")
        sd = {}
        for f in files:
            log.info("reading %s", f)
            sd.update(read_safetensors(f))
    elif src.endswith(".safetensors"):
        log.info("reading %s", src)
        sd = read_safetensors(src)
    else:
        log.info("reading %s", src)
        sd = read_torch(src, ema=ema)
    return {clean_key(k): v for k, v in sd.items()}


def _safetensor_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))
