"""Name tables: how a checkpoint's tensors become a model's parameters.

A table is a list of `Name`s, one per parameter of the model: the checkpoint key it comes
from (canonical names; "{i}" is a layer index: one tensor per layer, stacked), its path in
the model's parameter tree, and the layout change between them. The model's own shapes
(`nnx.eval_shape`) say what every key must hold, so a table lists names, never shapes. Each
model's table is its `params.py`; `weights/` reads files and writes checkpoints with them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the problem in one line,
    `detail` keeps what the reading library said (shown with --verbose)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


def check_state_dict(sd: dict, want: dict[str, tuple[int, ...]]) -> None:
    """Raise ConversionError naming every unknown, missing and mis-shaped key of sd."""
    problems = []
    missing = sorted(set(want) - set(sd))
    unknown = sorted(set(sd) - set(want))
    shaped = sorted(k for k in set(want) & set(sd) if tuple(sd[k].shape) != want[k])
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unknown:
        problems.append("unknown keys: " + ", ".join(unknown))
    if shaped:
        problems.append("wrong shapes: " + ", ".join(
            f"{k} {list(sd[k].shape)} (expected {list(want[k])})" for k in shaped))
    if problems:
        raise ConversionError("; ".join(problems))


def _same(a):
    return a


def swap_last(a):
    """Linear weights: torch [out, in] <-> [in, out]."""
    return a.swapaxes(-1, -2)


@dataclasses.dataclass(frozen=True)
class Name:
    """One parameter: from checkpoint `key` (None: the checkpoint of this config has no such
    tensor; `fill(shape)` makes it) to the tree at `path`."""

    key: str | None
    path: tuple
    to_param: Callable = _same  # checkpoint layout -> parameter layout (numpy or jax arrays)
    to_ckpt: Callable = _same  # parameter layout -> checkpoint layout (for the expected shapes)
    fill: Callable | None = None

    @property
    def per_layer(self) -> bool:
        return self.key is not None and "{i}" in self.key


def get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _put(tree: dict, path, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _paths(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))
    else:
        yield prefix


def check_covers(names: list[Name], abstract: dict) -> None:
    """Every parameter of the model (abstract: its tree of shapes) has exactly one name."""
    named = [n.path for n in names]
    params = list(_paths(abstract))
    twice = sorted({p for p in named if named.count(p) > 1})
    missing = sorted(set(params) - set(named), key=str)
    extra = sorted(set(named) - set(params), key=str)
    if twice or missing or extra:
        raise AssertionError(f"name table vs model: named twice {twice}, unnamed {missing}, not in the model {extra}")


def checkpoint_shapes(names: list[Name], abstract: dict, layers: int = 0) -> dict[str, tuple]:
    """Every key a checkpoint of this model holds, with its shape (from the model's shapes)."""
    out = {}
    for n in names:
        if n.key is None:
            continue
        shape = tuple(get(abstract, n.path).shape)
        if n.per_layer:
            shape = shape[1:]
        ckpt = tuple(jax.eval_shape(n.to_ckpt, jax.ShapeDtypeStruct(shape, np.float32)).shape)
        for i in range(layers) if n.per_layer else (None,):
            out[n.key.format(i=i)] = ckpt
    return out


def params_from(sd: dict, names: list[Name], abstract: dict, layers: int = 0) -> dict:
    """The model's parameter tree from a checkpoint's tensors (numpy), after checking that its
    keys and shapes are exactly the model's: ConversionError names every difference."""
    check_covers(names, abstract)
    check_state_dict(sd, checkpoint_shapes(names, abstract, layers))
    out: dict = {}
    for n in names:
        if n.key is None:
            value = n.fill(tuple(get(abstract, n.path).shape))
        elif n.per_layer:
            value = np.stack([np.asarray(n.to_param(np.asarray(sd[n.key.format(i=i)]))) for i in range(layers)])
        else:
            value = np.asarray(n.to_param(np.asarray(sd[n.key])))
        _put(out, n.path, np.ascontiguousarray(value))
    return out


def checkpoint_from(params: dict, names: list[Name], layers: int = 0) -> dict:
    """The inverse: canonical checkpoint tensors from a parameter tree (tests, random weights)."""
    out = {}
    for n in names:
        if n.key is None:
            continue
        value = np.asarray(get(params, n.path))
        for i in range(layers) if n.per_layer else (None,):
            out[n.key.format(i=i)] = np.asarray(n.to_ckpt(value[i] if n.per_layer else value))
    return out

