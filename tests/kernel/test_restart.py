"""Issue 6: the data path outlives the daemon, a restart adopts it without
moving a flow, and --cleanup leaves the kernel exactly as it found it."""
from __future__ import annotations

import signal
import time

import pytest

from steerd.lab.netns import ns_sh
from steerd.lab.runner import SteerdProcess, send

pytestmark = pytest.mark.kernel


def kernel_state(lab) -> dict[str, str]:
    return {
        "rules4": ns_sh(lab.gw, "ip", "rule", "show"),
        "rules6": ns_sh(lab.gw, "ip", "-6", "rule", "show"),
        "routes": ns_sh(lab.gw, "ip", "route", "show", "table", "all"),
        "routes6": ns_sh(lab.gw, "ip", "-6", "route", "show", "table", "all"),
        "filters": ns_sh(lab.gw, "tc", "filter", "show", "dev", "core0", "ingress"),
        "qdiscs": ns_sh(lab.gw, "tc", "qdisc", "show"),
        "bpffs": ns_sh(lab.gw, "ls", "-R", lab.run_dir + "/bpffs"),
    }


def test_sigkill_loses_no_packet_and_restart_moves_no_flow(lab, receiver):
    path = lab.write_config(lab.config())
    first = SteerdProcess(lab, path, ("--no-probe",))
    sender = send(lab, 1000, duration=9.0, pps=4000, background=True)
    time.sleep(2.0)
    first.stop(signal.SIGKILL)           # crash: no cleanup, no goodbye
    time.sleep(5.0)                       # traffic keeps flowing through the pinned program
    during = receiver.snapshot()
    second = SteerdProcess(lab, path, ("--no-probe",))
    sent = int(sender.communicate(timeout=30)[0])
    time.sleep(0.5)
    per_flow = receiver.stop()
    try:
        received = sum(sum(v.values()) for v in per_flow.values())
        assert received >= sent * 0.999, f"lost {sent - received} of {sent}"
        moved = [f for f, ifs in per_flow.items() if len(ifs) > 1]
        assert moved == [], f"{len(moved)} flows changed tunnel across the restart"
        assert len(per_flow) == 1000 and len(during) == 1000
        assert any(e["type"] == "started" and e["reason"] == "adopted pinned state"
                   for e in second.events())
    finally:
        second.stop()
        second.cleanup()


def test_cleanup_restores_the_kernel_exactly(lab):
    before = kernel_state(lab)
    path = lab.write_config(lab.config())
    p = SteerdProcess(lab, path, ("--no-probe",))
    during = kernel_state(lab)
    assert during["rules4"] != before["rules4"] and "steerd" in during["filters"]
    p.stop()
    # a stopped daemon leaves the data path in place (restarts lose nothing)...
    assert kernel_state(lab)["filters"] == during["filters"]
    out = p.cleanup()
    assert "filters=1" in out
    # ...and --cleanup removes all of it and nothing else
    assert kernel_state(lab) == before
