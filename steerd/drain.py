"""Which tunnels the operator drained (`steerctl tunnel drain NAME`), kept in
a file so that a drained tunnel stays out of service across restarts (and
reboots: the state directory, /var/lib/steerd) until it is undrained.

The decision is the controller's (Controller.drain); this is only its record.
"""
from __future__ import annotations

import json
import os


def path_in(state_dir: str) -> str:
    return os.path.join(state_dir, "drained.json")


def load(path: str) -> set[str]:
    """Names of the drained tunnels (none when the file does not exist)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return set()
    return {str(n) for n in data.get("drained", [])}


def save(path: str, names: set[str]) -> None:
    """Write the record atomically (a crash leaves the old or the new one)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"drained": sorted(names)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
