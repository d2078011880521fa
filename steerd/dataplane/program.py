"""Compile and load the eBPF classifier with bcc; give typed access to its maps.

Maps are pinned under the configured bpffs directory so that a restarted
daemon adopts the live slot table, flow table and counters (bcc reuses a
pinned map of the same name instead of creating a new one).
"""
from __future__ import annotations

import contextlib
import ctypes as ct
import os
import re
import subprocess
from dataclasses import dataclass

from ..abi import DUP_MAX, MAX_TUNNELS, NO_TUNNEL  # noqa: F401  (NO_TUNNEL: re-exported)
from .sources import ebpf_dir, inline_includes

#: hub mode: tunnel id = site id x 6 + position in the site (3 tunnels per HA role)
TUNNELS_PER_SITE = 6

#: Pins of maps an older steerd had and this one replaced (a pinned map keeps its
#: key and value sizes, so a changed layout gets a new name): removed at start
#: and by --cleanup. "flows": the flow table keyed by 5-tuple (now flowtab).
RETIRED_PINS = frozenset({"flows"})


def tunnel_ids(max_sites: int) -> int:
    """Entries of the per-tunnel maps (usable flags, marks, counters)."""
    return max(MAX_TUNNELS, max_sites * TUNNELS_PER_SITE)


@dataclass(frozen=True)
class ProgramParams:
    pin_dir: str
    max_slots: int = 4096            # per site
    flow_table_size: int = 65536
    max_sites: int = 1

    def cflags(self, with_rules: bool) -> list[str]:
        flags = [
            f"-I{ebpf_dir()}",
            f"-DMAX_SLOTS={self.max_slots}",
            f"-DMAX_SITES={self.max_sites}",
            f"-DMAX_TUNNELS={tunnel_ids(self.max_sites)}",
            # each site's ranges (a trie without preallocation: room costs nothing)
            f"-DMAX_RANGES={max(1024, 64 * self.max_sites)}",
            f"-DFLOW_TABLE_SIZE={self.flow_table_size}",
            f'-DPIN_DIR="{self.pin_dir}"',
            f"-DDUP_MAX={DUP_MAX}",
        ]
        if with_rules:
            flags.append("-DWITH_RULES")
        return flags


def _is_bpffs(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            mnt, fstype = parts[4], parts[sep + 1]
            if fstype == "bpf" and (real == mnt or real.startswith(mnt.rstrip("/") + "/")):
                return True
    return False


def ensure_bpffs(pin_dir: str) -> None:
    """Make *pin_dir* exist on a bpf filesystem, mounting one on its parent if needed.

    `ip netns exec` gives each command a fresh /sys, so the lab keeps its pins
    on a bpffs mounted under /run instead of /sys/fs/bpf."""
    parent = os.path.dirname(pin_dir.rstrip("/"))
    if not _is_bpffs(parent):
        os.makedirs(parent, exist_ok=True)
        res = subprocess.run(["mount", "-t", "bpf", "bpf", parent], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{parent} is not on a bpf filesystem and mounting one failed "
                               f"({res.stderr.strip()}); mount it first: mount -t bpf bpf {parent}")
    os.makedirs(pin_dir, exist_ok=True)


class Classifier:
    """The loaded program: `fd` for tc, maps by name."""

    def __init__(self, params: ProgramParams):
        from bcc import BPF  # imported late: unit tests and steerctl never need bcc

        ensure_bpffs(params.pin_dir)
        _remove_retired(params.pin_dir)
        self.params = params
        from .rulemaps import rules_cflags
        self.with_rules = (ebpf_dir() / "rules.h").exists()
        # bcc rewrites map calls only in its main file: headers are pasted in
        src = inline_includes((ebpf_dir() / "steer.c").read_text())
        cflags = params.cflags(self.with_rules) + (rules_cflags() if self.with_rules else [])
        self.bpf = BPF(text=src.encode(), cflags=cflags)
        self.fn = self.bpf.load_func("steer", BPF.SCHED_CLS)
        self.fd: int = self.fn.fd
        # egress classifier for capped tunnels (HTB priority bands)
        self.qos_fd: int = self.bpf.load_func("qos_classify", BPF.SCHED_CLS).fd
        # tunnel egress while a rule duplicates (ebpf/dup.h)
        self.dup_fd: int = self.bpf.load_func("dup_egress", BPF.SCHED_CLS).fd
        # tunnel ingress of the sites with reply_on_arrival_tunnel (ebpf/arrival.h)
        self.arrival_fd: int = self.bpf.load_func("record_arrival", BPF.SCHED_CLS).fd
        _release_compiler_heap()

    def table(self, name: str):
        return self.bpf[name.encode()]

    def close(self) -> None:
        self.bpf.cleanup()


def _release_compiler_heap() -> None:
    """Hand the heap LLVM used for the compile back to the kernel: glibc keeps
    freed memory in its arenas, most of the daemon's RSS for the rest of its
    life otherwise (tests/bench/footprint measures it). Not glibc (no
    malloc_trim): nothing to do."""
    try:
        ct.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _remove_retired(pin_dir: str) -> None:
    """Unpin maps of an older layout: a running older program keeps its map
    until the new one replaces it on the interface."""
    for name in RETIRED_PINS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pin_dir, name))


def pinned_names() -> set[str]:
    """The names steerd's programs pin (every PIN(name) in the C sources),
    and those older versions pinned (RETIRED_PINS)."""
    names: set[str] = set(RETIRED_PINS)
    for src in sorted(ebpf_dir().glob("*.[ch]")):
        names.update(re.findall(r"\bPIN\((\w+)\)", src.read_text()))
    return names - {"name"}       # the macro's own definition


def remove_pins(pin_dir: str) -> list[str]:
    """Unpin what steerd pinned (the maps live on while a program uses them), and
    nothing else: a bpffs directory shared with another tool keeps that tool's
    pins, and is removed only when nothing is left in it."""
    removed = []
    if not os.path.isdir(pin_dir):
        return removed
    ours = pinned_names()
    for name in sorted(os.listdir(pin_dir)):
        if name in ours:
            os.unlink(os.path.join(pin_dir, name))
            removed.append(name)
    if not os.listdir(pin_dir):
        os.rmdir(pin_dir)
    return removed
