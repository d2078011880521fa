"""Start (once per lab) the site's probe reflector and set probe delay/jitter.

The reflector replaces the kernel's echo replies in the site namespace, so
every tunnel's probes are answered by it, impaired or not."""
from __future__ import annotations

import os
import subprocess
import sys

from .netns import ns_popen
from .reflector import write_impairment
from .topology import TUNNELS, Lab


class ReflectorHandle:
    def __init__(self, lab: Lab):
        self.state_file = os.path.join(lab.run_dir, "impair.json")

    def set(self, ifname: str, delay_ms: float, jitter_ms: float) -> None:
        write_impairment(self.state_file, ifname, delay_ms=delay_ms, jitter_ms=jitter_ms)


def ensure_reflector(lab: Lab) -> ReflectorHandle:
    handle = ReflectorHandle(lab)
    pidfile = os.path.join(lab.run_dir, "reflector.pid")
    if os.path.exists(pidfile):
        with open(pidfile, encoding="utf-8") as f:
            pid = int(f.read())
        if os.path.exists(f"/proc/{pid}"):
            return handle
    ifaces = ",".join(t.site_if for t in TUNNELS)
    proc = ns_popen(lab.site, [sys.executable, "-m", "steerd.lab.reflector", "--interfaces", ifaces,
                               "--state-file", handle.state_file, "--kernel-echo-off"],
                    stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    if not line.startswith("reflector ready"):
        raise RuntimeError(f"reflector did not start: {line!r}")
    with open(pidfile, "w", encoding="utf-8") as f:
        f.write(str(proc.pid))
    return handle
