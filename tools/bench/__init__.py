"""The sections of tools/benchmark.py: one module each, and SECTIONS, the order main runs them in."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from . import (attention, codecs, compare, devices, end_to_end, forward, kv_error, plan, policies, rollout,
               side_by_side, step)


@dataclass(frozen=True)
class Section:
    """A section: on when `args.<flag>` is set; `run(args, env)` prints its table(s) and returns its rows."""

    flag: str
    run: Callable[[argparse.Namespace, dict], list[dict]]


SECTIONS = (
    Section("forward", forward.run),
    Section("rollout", rollout.run),
    Section("attention", attention.run),
    Section("step", step.run),
    Section("devices", devices.run),
    Section("codecs", codecs.run),
    Section("end_to_end", end_to_end.run),
    Section("plan", plan.run),
    Section("kv_error", kv_error.run),
    Section("policies", policies.run),
    Section("compare", compare.run),
    Section("long", rollout.run_long),
    Section("side_by_side", side_by_side.run),
)
