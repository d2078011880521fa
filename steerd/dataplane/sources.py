"""The classifier's C sources: where they are and how bcc is handed them.

A wheel carries them as package data (setup.py maps the top-level ``ebpf/`` to
``steerd/ebpf`` at build time); a checkout, or an editable install of one, has
no ``steerd/ebpf`` and compiles the top-level ``ebpf/`` itself, so an edit there
is what the next start compiles. This is the only place that knows either path.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

#: The checkout's sources (a sibling of the package directory).
_CHECKOUT = Path(__file__).resolve().parents[2] / "ebpf"


def ebpf_dir() -> Path:
    """The directory holding steer.c and its headers."""
    packaged = resources.files("steerd") / "ebpf"
    if packaged.is_dir():
        return Path(str(packaged))
    if _CHECKOUT.is_dir():
        return _CHECKOUT
    raise FileNotFoundError(f"steerd's eBPF C sources are missing: neither {packaged} (an installed "
                            f"wheel) nor {_CHECKOUT} (a checkout) exists; reinstall steerd "
                            "from its wheel (deploy/install.sh)")


def inline_includes(src: str, base_dir: str | Path | None = None, _seen: set[str] | None = None) -> str:
    """Paste local ``#include "x.h"`` files into *src* (relative to *base_dir*,
    default `ebpf_dir()`).

    bcc rewrites map accesses (``map.lookup(...)``) only in its main file; in an
    included header they compile to an indirect call the verifier rejects. So a
    program that uses rules.h must be handed to bcc with the header inlined."""
    seen = _seen if _seen is not None else set()
    base = Path(base_dir) if base_dir is not None else ebpf_dir()

    def repl(m: re.Match[str]) -> str:
        path = (base / m.group(1)).resolve()
        if str(path) in seen:
            return ""
        if not path.exists():
            return m.group(0)  # e.g. rules.h absent: its #include sits under #ifdef WITH_RULES
        seen.add(str(path))
        return inline_includes(path.read_text(), path.parent, seen)

    return re.sub(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', repl, src, flags=re.M)
