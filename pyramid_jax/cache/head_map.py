"""Head maps: an [L, H] int array of head types (Pyramid Forcing's Anchor / Wave / Veil).

CSV in the reference convention: one row per layer, one column per head, -1 Wave,
1 Anchor, 2 Veil. JSON adds provenance: {"map": [[...]], "model": ..., "prompts": [...],
"thresholds": {...}, "date": ...}.
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


WAVE, ANCHOR, VEIL = HeadType.WAVE, HeadType.ANCHOR, HeadType.VEIL
TYPE_NAMES = {t: t.name.title() for t in HeadType}


class HeadMapError(ValueError):
    """A head map that cannot be used; the message says why."""


def check_map(head_map: np.ndarray, num_layers: int | None = None, num_heads: int | None = None,
              source: str = "head map") -> np.ndarray:
    m = np.asarray(head_map)
    if m.ndim != 2:
        raise HeadMapError(f"{source}: expected a 2-D [layers, heads] map, got shape {list(m.shape)}")
    bad = sorted(set(np.unique(m).tolist()) - set(TYPE_NAMES))
    if bad:
        raise HeadMapError(f"{source}: unknown head types {bad} (use -1 Wave, 1 Anchor, 2 Veil)")
    if num_layers is not None and m.shape[0] != num_layers:
        raise HeadMapError(f"{source}: {m.shape[0]} layers (rows), the model has {num_layers}")
    if num_heads is not None and m.shape[1] != num_heads:
        raise HeadMapError(f"{source}: {m.shape[1]} heads (columns), the model has {num_heads}")
    return m.astype(np.int32)


def load_head_map(path: str, num_layers: int | None = None, num_heads: int | None = None) -> np.ndarray:
    """Read a CSV or JSON head map and check it against the model's [L, H]."""
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
                m = np.asarray(json.load(fh)["map"])
        else:
            m = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise HeadMapError(f"head map {path!r} is unreadable ({first_line(e, 120)})") from None
    return check_map(m, num_layers, num_heads, source=f"head map {path!r}")


def _atomic_write(path: str, text: str) -> None:
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=out_dir)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def save_head_map_csv(path: str, head_map: np.ndarray) -> None:
    m = check_map(head_map)
    _atomic_write(path, "\n".join(",".join(str(int(v)) for v in row) for row in m) + "\n")


def save_head_map_json(path: str, head_map: np.ndarray, **provenance) -> None:
    m = check_map(head_map)
    counts = {TYPE_NAMES[t]: int((m == t).sum()) for t in TYPE_NAMES}
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
