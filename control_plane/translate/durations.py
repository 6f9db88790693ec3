"""Durations as Envoy wants them: whole milliseconds in a ``google.protobuf.Duration``."""

from __future__ import annotations


def set_duration(duration: object, seconds: float) -> None:
    """Set ``duration`` (a Duration field, filled in place) to ``seconds``, in milliseconds."""
    duration.FromMilliseconds(round(seconds * 1000))  # type: ignore[attr-defined]
