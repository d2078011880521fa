"""Where a benchmark leaves its figures for `make bench`'s report.

`make bench` (tests/bench/run_all.py) sets STEERD_BENCH_JSON to a file per
bench; a bench run by hand has no such variable and records nothing.
"""
from __future__ import annotations

import json
import os
from typing import Any


def record(**figures: Any) -> None:
    """Merge *figures* into this bench's JSON file (if `make bench` asked for one)."""
    path = os.environ.get("STEERD_BENCH_JSON")
    if not path:
        return
    data: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    data.update(figures)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def verdict(ok: bool) -> str:
    """The word every bench prints beside a goal; run_all counts MISSED as a failure."""
    return "OK" if ok else "MISSED"
