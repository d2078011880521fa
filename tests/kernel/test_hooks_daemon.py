"""Event hooks through the daemon (issue 17, item 12): a hook that hangs does
not delay failover, and a failing one is counted in the metrics and logged."""
from __future__ import annotations

import os
import stat
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from steerd.lab.impair import set_drop
from steerd.lab.netns import ns_sh
from steerd.lab.runner import send, wait_for

pytestmark = pytest.mark.kernel


def script(lab, name: str, body: str) -> str:
    path = os.path.join(lab.run_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def metric(lab, name: str, hook: str) -> float:
    text = ns_sh(lab.gw, sys.executable, "-c",
                 "import urllib.request;print(urllib.request.urlopen("
                 "'http://127.0.0.1:9469/metrics', timeout=5).read().decode())")
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels.get("hook") == hook:
                return s.value
    raise KeyError(name)



def test_slow_hook_does_not_delay_failover_failing_hook_is_counted(lab, start_steerd, receiver):
    seen = os.path.join(lab.run_dir, "seen")
    slow = script(lab, "slow", f"cat > {seen}.$$; sleep 30\n")       # busy from the start on
    fail = script(lab, "fail", "echo 'pager unreachable' >&2; exit 7\n")
    cfg = lab.config(hooks=[{"on": ["started", "link_down", "link_up"], "run": slow, "timeout": "20s"},
                            {"on": ["link_down"], "run": fail, "timeout": "2s"}])
    steerd = start_steerd(cfg)
    sender = send(lab, 600, duration=8.0, pps=6000, background=True)
    time.sleep(2.0)
    before = receiver.snapshot()
    set_drop(lab, "pri-wan2", blackhole=True)
    t0 = time.monotonic()
    # the slow hook is still busy with 'started' (link_down waits its turn)
    assert wait_for(lambda: next(t for t in steerd.status()["tunnels"]
                                 if t["name"] == "pri-wan2")["state"] == "down", 3.0)
    detected = time.monotonic() - t0
    sender.communicate(timeout=30)
    after = receiver.stop()
    on_p2 = [f for f, ifs in before.items() if list(ifs) == ["gw-p2"]]
    assert on_p2 and all(set(after[f]) - {"gw-p2"} for f in on_p2)
    assert detected < 2.0, f"down after {detected:.2f}s"     # the failover budget, as without hooks
    assert wait_for(lambda: metric(lab, "steerd_hook_failures_total", fail) == 1, 5.0)
    assert metric(lab, "steerd_hook_runs_total", fail) == 1
    assert metric(lab, "steerd_hook_failures_total", slow) == 0   # still running, not failed
    assert f"hook {fail} (link_down): exit status 7: pager unreachable" in steerd.tail(200)
    # the slow hook got 'started' on stdin; link_down waits behind it
    got = [n for n in os.listdir(lab.run_dir) if n.startswith("seen.")]
    assert len(got) == 1
