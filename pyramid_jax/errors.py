"""Errors a user sees as one line, and how an exception becomes one."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an output that cannot be written; the CLIs print the message as one line."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line: the first line of its message (or its type name), cut
    to `limit` characters."""
    text = str(e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def os_reason(e: OSError) -> str:
    """'No space left on device', 'Not a directory: /a/b', ... in one short line."""
    reason = e.strerror or first_line(e)
    return f"{reason}: {e.filename}" if e.filename else reason
