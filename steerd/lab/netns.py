"""Thin helpers to run commands in network namespaces (the lab's only seam)."""
from __future__ import annotations

import json
import subprocess
from typing import Sequence


def sh(*cmd: str, check: bool = True, input: str | None = None) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def ns_sh(ns: str, *cmd: str, check: bool = True, input: str | None = None) -> str:
    return sh("ip", "netns", "exec", ns, *cmd, check=check, input=input)


def ns_popen(ns: str, cmd: Sequence[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)


def namespaces() -> list[str]:
    out = sh("ip", "-j", "netns", "list", check=False)
    return [n["name"] for n in json.loads(out or "[]")]


def sysctl(ns: str, *assignments: str) -> None:
    """sysctl("gw", "net.ipv4.ip_forward=1", ...)"""
    ns_sh(ns, "sysctl", "-qw", *assignments)
