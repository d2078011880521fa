"""Durations and percentages as operators write them (``1s``, ``100ms``, ``3%``),
for every file steerd reads: the config, its ipsec section and the rules (pure).

Plain values in; out the number, or ``ValueError`` whose message is what was
expected (the validators put it in their problem)."""
from __future__ import annotations

import math
import re
from typing import Callable

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_DURATION_RE = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h)?\s*")
DURATION_EXPECTED = "a duration such as 1s, 100ms, 2m or 1h (a plain number is seconds)"
# Milliseconds divide rather than multiply by 0.001 so "100ms" is exactly 0.1.
_TO_SECONDS: dict[str, Callable[[float], float]] = {
    "ms": lambda n: n / 1000, "s": lambda n: n, "m": lambda n: n * 60, "h": lambda n: n * 3600,
}


def parse_duration(value: object) -> float:
    """Seconds from ``"1s"``, ``"100ms"``, ``"2m"``, ``"1h"`` or a plain number (seconds).

    Negative, infinite and boolean values are refused (YAML ``yes`` is not 1s).
    Raises ``ValueError`` whose message is what was expected.
    """
    if isinstance(value, bool):
        raise ValueError(DURATION_EXPECTED)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
        seconds = _TO_SECONDS[m.group(2) or "s"](float(m.group(1)))
    else:
        raise ValueError(DURATION_EXPECTED)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(DURATION_EXPECTED)
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest of ``Nh``/``Nm``/``Ns``/``Nms`` that :func:`parse_duration` reads back
    as exactly *seconds* (used in messages, ``steerctl`` output and round-trip tests)."""
    best = f"{float(seconds)!r}s"
    # Below a second whole milliseconds read best (100ms, not 0.1s); otherwise the
    # shortest wins, seconds first so that ties ("0s" vs "0h") read naturally.
    ms = seconds * 1000
    if 0 < seconds < 1 and float(ms).is_integer() and parse_duration(f"{int(ms)}ms") == seconds:
        return f"{int(ms)}ms"
    for unit, scale in (("s", 1), ("ms", 0.001), ("m", 60), ("h", 3600)):
        n = seconds / scale
        text = f"{int(n)}{unit}" if float(n).is_integer() and abs(n) < 1e15 else f"{n!r}{unit}"
        try:
            exact = parse_duration(text) == seconds
        except ValueError:
            exact = False
        if exact and len(text) < len(best):
            best = text
    return best


_PERCENT_RE = re.compile(rf"\s*({_NUMBER})\s*%?\s*")
_PERCENT_EXPECTED = "a percentage from 0 to 100, such as 3% or 3"


def parse_percent(value: object) -> float:
    """Percent (0..100) from ``"3%"``, ``"3"`` or a plain number; returns 3.0 for 3 %.

    Raises ``ValueError`` whose message is what was expected.
    """
    if isinstance(value, bool):
        raise ValueError(_PERCENT_EXPECTED)
    if isinstance(value, (int, float)):
        pct = float(value)
    elif isinstance(value, str) and (m := _PERCENT_RE.fullmatch(value)):
        pct = float(m.group(1))
    else:
        raise ValueError(_PERCENT_EXPECTED)
    if not (math.isfinite(pct) and 0 <= pct <= 100):
        raise ValueError(_PERCENT_EXPECTED)
    return pct
