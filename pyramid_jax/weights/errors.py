"""Conversion errors and the key / shape check every converter runs (no model imported)."""

from __future__ import annotations


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
