"""Head maps: an [L, H] int array of head types, for every head-aware policy.

CSV in the reference convention: one row per layer, one column per head, -1 Wave,
1 Anchor, 2 Veil (Pyramid Forcing); 3 first, 4 mid, 5 last (Dummy Forcing's groups; "last"
heads are its dummy heads); 6 static, 7 dynamic (Forcing-KV). JSON adds provenance:
{"map": [[...]], "model": ..., "prompts": [...], "thresholds": {...}, "date": ...}.
Forcing-KV's own head files ({"layers": [{"layer_idx", "static_head", "dynamic_head"}, ...]})
are read as published.
"""

from __future__ import annotations

import datetime
import enum
import json
import os
import tempfile

import numpy as np

from pyramid_jax.errors import first_line

class HeadType(enum.IntEnum):
    """A head's type; the values are the CSV codes of the published maps."""

    WAVE = -1
    ANCHOR = 1
    VEIL = 2
    FIRST = 3
    MID = 4
    LAST = 5
    STATIC = 6
    DYNAMIC = 7


WAVE, ANCHOR, VEIL = HeadType.WAVE, HeadType.ANCHOR, HeadType.VEIL
FIRST, MID, LAST = HeadType.FIRST, HeadType.MID, HeadType.LAST
STATIC, DYNAMIC = HeadType.STATIC, HeadType.DYNAMIC
TYPE_NAMES = {t: t.name.title() for t in HeadType}
# the types each head-aware policy's maps hold
PYRAMID_TYPES = (WAVE, ANCHOR, VEIL)
DUMMY_TYPES = (FIRST, MID, LAST)
FORCING_KV_TYPES = (STATIC, DYNAMIC)


class HeadMapError(ValueError):
    """A head map that cannot be used; the message says why."""


def check_map(head_map: np.ndarray, num_layers: int | None = None, num_heads: int | None = None,
              source: str = "head map", types=PYRAMID_TYPES) -> np.ndarray:
    """The map as [L, H] int32, or HeadMapError: not 2-D, a type outside `types`, or a shape
    that is not the model's."""
    m = np.asarray(head_map)
    if m.ndim != 2:
        raise HeadMapError(f"{source}: expected a 2-D [layers, heads] map, got shape {list(m.shape)}")
    bad = sorted(set(np.unique(m).tolist()) - {int(t) for t in types})
    if bad:
        names = ", ".join(f"{int(t)} {TYPE_NAMES[t]}" for t in types)
        raise HeadMapError(f"{source}: unknown head types {bad} (use {names})")
    if num_layers is not None and m.shape[0] != num_layers:
        raise HeadMapError(f"{source}: {m.shape[0]} layers (rows), the model has {num_layers}")
    if num_heads is not None and m.shape[1] != num_heads:
        raise HeadMapError(f"{source}: {m.shape[1]} heads (columns), the model has {num_heads}")
    return m.astype(np.int32)


def load_head_map(path: str, num_layers: int | None = None, num_heads: int | None = None,
                  types=PYRAMID_TYPES) -> np.ndarray:
    """Read a CSV or JSON head map (or, where `types` are Forcing-KV's, its published head file)
    and check it against the model's [L, H]."""
    if not path:
        raise HeadMapError("cache.policy=pyramid needs cache.head_map (a CSV/JSON head map); use "
                           "head_maps/self_forcing.csv for Self Forcing, or make one with "
                           "`python tools/classify_heads.py --config=... --out MAP.csv`")
    if not os.path.isfile(path):
        raise HeadMapError(f"head map {path!r} not found; make one with "
                           "`python tools/classify_heads.py --config=... --out MAP.csv`")
    try:
        if path.endswith(".json"):
            with open(path) as fh:
                doc = json.load(fh)
            if isinstance(doc, dict) and "map" in doc:
                m = np.asarray(doc["map"])
            elif tuple(types) == FORCING_KV_TYPES and isinstance(doc, (dict, list)):
                m = forcing_kv_groups(doc, num_layers, num_heads, source=f"head file {path!r}")
            else:
                raise HeadMapError(f"head file {path!r} is in neither format: a head map JSON has "
                                   "\"map\" [[...]]" + (", a Forcing-KV head file \"layers\" [{\"static_head\", "
                                   "\"dynamic_head\"}, ...]" if tuple(types) == FORCING_KV_TYPES else ""))
        else:
            m = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except HeadMapError:
        raise
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise HeadMapError(f"head map {path!r} is unreadable ({first_line(e, 120)})") from None
    return check_map(m, num_layers, num_heads, source=f"head map {path!r}", types=types)


def forcing_kv_groups(doc, num_layers: int | None, num_heads: int | None, source: str) -> np.ndarray:
    """A Forcing-KV head file as an [L, H] STATIC / DYNAMIC map.

    doc: {"layers": [...]} (or the list itself, or a dict of layer -> item); each item lists
    `static_head` and `dynamic_head` (or the aliases its loader reads), which must split the
    layer's heads; a layer the file leaves out is all dynamic, as upstream reads it.
    """
    declared = doc if isinstance(doc, dict) else {}
    for field, model in (("num_layers", num_layers), ("num_heads", num_heads)):
        if model is not None and field in declared and int(declared[field]) != model:
            raise HeadMapError(f"{source}: made for {declared[field]} {field[4:]}, the model has {model}")
    layers = doc.get("layers", doc) if isinstance(doc, dict) else doc
    items = list(enumerate(layers)) if isinstance(layers, list) else [
        (int(k), item) for k, item in layers.items() if str(k).isdigit()]
    if not items or not all(isinstance(item, dict) for _, item in items):
        raise HeadMapError(f"{source} is in neither format: no per-layer static_head / dynamic_head lists")
    n_l = num_layers or 1 + max(int(item.get("layer_idx", i)) for i, item in items)
    n_h = num_heads or 1 + max([int(h) for _, item in items for key in _STATIC + _DYNAMIC for h in item.get(key) or []],
                               default=0)
    m = np.full((n_l, n_h), int(DYNAMIC), np.int32)
    for i, item in items:
        layer = int(item.get("layer_idx", i))
        if not 0 <= layer < n_l:
            raise HeadMapError(f"{source}: layer {layer} does not exist (the model has {n_l} layers)")
        static = sorted({int(h) for key in _STATIC for h in item.get(key) or []})
        dynamic = sorted({int(h) for key in _DYNAMIC for h in item.get(key) or []})
        if sorted(static + dynamic) != list(range(n_h)):
            raise HeadMapError(f"{source}: layer {layer}'s static and dynamic heads {static} + {dynamic} do not "
                               f"split its {n_h} heads")
        m[layer, static] = int(STATIC)
    return m


# the names upstream's loader accepts for each group
_STATIC = ("static_head", "static_heads", "local_head", "local_heads", "spatial_head", "spatial_heads")
_DYNAMIC = ("dynamic_head", "dynamic_heads", "temporal_head", "temporal_heads")


def _atomic_write(path: str, text: str) -> None:
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=out_dir)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def save_head_map_csv(path: str, head_map: np.ndarray) -> None:
    m = check_map(head_map, types=tuple(HeadType))
    _atomic_write(path, "\n".join(",".join(str(int(v)) for v in row) for row in m) + "\n")


def save_head_map_json(path: str, head_map: np.ndarray, **provenance) -> None:
    m = check_map(head_map, types=tuple(HeadType))
    counts = {TYPE_NAMES[t]: int((m == t).sum()) for t in TYPE_NAMES if (m == t).any()}
    doc = {"map": m.tolist(), "counts": counts,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           **provenance}
    _atomic_write(path, json.dumps(doc, indent=1, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
