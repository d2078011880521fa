"""Values the VM lab measures (times, RTTs), printed at the end of the session."""
from __future__ import annotations

MEASURED: dict[str, str] = {}


def measured(name: str, text: str) -> None:
    MEASURED[name] = text
    print(f"[measured] {name}: {text}")
