"""Start/stop steerd inside the lab gateway, and run traffic through the lab.
Shared by `make demo`, the kernel tests and the benchmarks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from ..cli import request
from .netns import ns_popen
from .topology import Lab

PY = sys.executable


#: How the lab runs steerd: this interpreter's steerd (the checkout under test).
STEERD = (PY, "-m", "steerd.daemon")


class SteerdProcess:
    """steerd in the lab's gateway namespace; *command* runs another steerd (an
    installed console script, say) instead of this interpreter's."""

    def __init__(self, lab: Lab, config_path: str, extra_args: tuple[str, ...] = (),
                 log_path: str | None = None, command: tuple[str, ...] = STEERD,
                 ready_timeout: float | None = None):
        self.lab, self.config_path, self.command = lab, config_path, command
        self.log_path = log_path or os.path.join(lab.run_dir, "steerd.log")
        self.log = open(self.log_path, "ab")
        self.proc = ns_popen(lab.gw, [*command, "--config", config_path, *extra_args],
                             stdout=self.log, stderr=subprocess.STDOUT)
        if ready_timeout is None:
            self._wait_ready()      # the class's own default (a subclass may set a longer one)
        else:
            self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"steerd exited with {self.proc.returncode}:\n{self.tail()}")
            if os.path.exists(self.lab.socket):
                try:
                    request(self.lab.socket, {"cmd": "status"})
                    return
                except Exception:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"steerd not ready after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        with open(self.log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")

    def status(self) -> dict:
        return request(self.lab.socket, {"cmd": "status"})["status"]

    def events(self) -> list[dict]:
        return request(self.lab.socket, {"cmd": "events"})["events"]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def cleanup(self) -> str:
        res = subprocess.run(["ip", "netns", "exec", self.lab.gw, *self.command,
                              "--config", self.config_path, "--cleanup"], capture_output=True, text=True)
        return res.stdout + res.stderr


class Receiver:
    """The per-flow receiver in the site namespace."""

    def __init__(self, lab: Lab, port: int = 5001, name: str = "rx"):
        self.out = os.path.join(lab.run_dir, f"{name}.json")
        self.proc = ns_popen(lab.site, [PY, "-m", "steerd.lab.traffic", "recv", "--port", str(port),
                                        "--out", self.out], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def snapshot(self) -> dict[int, dict[str, int]]:
        """Per flow id: packets per site interface so far."""
        if os.path.exists(self.out):
            os.unlink(self.out)
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(100):
            if os.path.exists(self.out):
                try:
                    with open(self.out, encoding="utf-8") as f:
                        return {int(k): v for k, v in json.load(f).items()}
                except ValueError:
                    pass  # caught mid-write
            time.sleep(0.05)
        raise TimeoutError("receiver did not dump its counters")

    def reset(self) -> None:
        """Forget what was received so far (the next snapshot starts from now)."""
        self.proc.send_signal(signal.SIGUSR2)
        time.sleep(0.05)

    def first_seen(self) -> dict[int, dict[str, float]]:
        """Per flow: monotonic time of its first packet on each interface (after a snapshot)."""
        with open(self.out + ".first", encoding="utf-8") as f:
            return {int(k): v for k, v in json.load(f).items()}

    def stop(self) -> dict[int, dict[str, int]]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        with open(self.out, encoding="utf-8") as f:
            return {int(k): v for k, v in json.load(f).items()}


def send(lab: Lab, flows: int, dst: str = "10.20.0.0/16", duration: float = 2.0, pps: float = 20000,
         port: int = 5001, first_flow: int = 0, background: bool = False):
    cmd = [PY, "-m", "steerd.lab.traffic", "send", "--flows", str(flows), "--dst", dst,
           "--duration", str(duration), "--pps", str(pps), "--port", str(port),
           "--first-flow", str(first_flow)]
    p = ns_popen(lab.core, cmd, stdout=subprocess.PIPE, text=True)
    if background:
        return p
    out, _ = p.communicate(timeout=duration + 60)
    return int(out.strip() or 0)


def send_up(lab: Lab, tunnel: str, pps: float, duration: float, on: float = 0.0,
            off: float = 0.0) -> subprocess.Popen:
    """Upstream traffic from the site through *tunnel* (background; kill or wait)."""
    t = lab.tunnel(tunnel)
    cmd = [PY, "-m", "steerd.lab.traffic", "up", "--dev", t.site_if, "--dst", t.gw_addr,
           "--pps", str(pps), "--duration", str(duration), "--on", str(on), "--off", str(off)]
    return ns_popen(lab.site, cmd, stdout=subprocess.PIPE, text=True)


def flow_tunnels(per_flow: dict[int, dict[str, int]]) -> dict[int, str]:
    """Each flow's main interface (where most of its packets arrived)."""
    return {f: max(ifs, key=ifs.get) for f, ifs in per_flow.items() if ifs}


def split(per_flow: dict[int, dict[str, int]]) -> Counter:
    return Counter(flow_tunnels(per_flow).values())


def wait_for(pred, timeout: float, step: float = 0.05):
    """Poll *pred* until it returns something truthy (returned), or *timeout*
    seconds pass (then its last value is returned, falsy)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if v := pred():
            return v
        time.sleep(step)
    return pred()
