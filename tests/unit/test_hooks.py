"""Event hooks (steerd.hooks, the `hooks:` config key): real scripts, no root."""
from __future__ import annotations

import asyncio
import json
import os
import stat
import textwrap
import time

import pytest

from steerd.config import Hook, parse_config
from steerd.events import EventLog
from steerd.hooks import HookRunner
from steerd.yamlsrc import ValidationError

BASE = """\
site: s1
ingress: [eth1]
tunnels:
  - {name: t1, ha_role: primary, wan: wan1, interface: ipsec1, public_ip: 192.0.2.1,
     probe_target: 169.254.1.2, bandwidth: {down_mbps: 100}}
"""


def script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def run_events(hooks: list[Hook], emit, settle: float = 3.0) -> HookRunner:
    """Start a runner on a fresh event log, call emit(log), wait until the
    hooks' queues are empty and no run is going (or *settle* seconds)."""
    async def main() -> HookRunner:
        log = EventLog()
        runner = HookRunner(hooks, log)
        runner.start()
        emit(log)
        end = time.monotonic() + settle
        await asyncio.sleep(0.05)
        while time.monotonic() < end and (any(not q.empty() for q in runner._queues)
                                          or runner.busy()):
            await asyncio.sleep(0.02)
        runner.stop()
        return runner
    return asyncio.run(main())


# ------------------------------------------------------------------ running

def test_script_gets_the_event_as_environment_and_json(tmp_path):
    out = tmp_path / "out"
    run = script(tmp_path, "hook", f"""\
        env | grep ^STEERD_ | sort > {out}.env
        cat > {out}.json
        """)
    r = run_events([Hook(frozenset({"link_down"}), run, 5.0)],
                   lambda log: (log.emit("link_up", "5 probes answered", "t1"),   # not subscribed
                                log.emit("link_down", "14 of 14 confirmation probes lost", "t1",
                                         old="up", new="down", site="s1")))
    env = dict(line.split("=", 1) for line in (tmp_path / "out.env").read_text().splitlines())
    assert env["STEERD_EVENT"] == "link_down" and env["STEERD_TUNNEL"] == "t1"
    assert env["STEERD_REASON"] == "14 of 14 confirmation probes lost"
    assert env["STEERD_OLD"] == "up" and env["STEERD_NEW"] == "down" and env["STEERD_SITE"] == "s1"
    assert env["STEERD_TS"].endswith("+00:00")
    ev = json.loads((tmp_path / "out.json").read_text())
    assert ev["type"] == "link_down" and ev["tunnel"] == "t1" and ev["new"] == "down"
    assert ev["ts"] == env["STEERD_TS"]
    assert r.runs == [1] and r.failures == [0]


def test_events_run_in_order_one_at_a_time(tmp_path):
    out = tmp_path / "order"
    run = script(tmp_path, "hook", f"""\
        echo "start $STEERD_EVENT" >> {out}
        sleep 0.1
        echo "end $STEERD_EVENT" >> {out}
        """)
    run_events([Hook(frozenset({"link_down", "link_up"}), run, 5.0)],
               lambda log: (log.emit("link_down", "a", "t1"), log.emit("link_up", "b", "t1")))
    assert out.read_text().split("\n")[:4] == ["start link_down", "end link_down",
                                                "start link_up", "end link_up"]


def test_failing_script_is_counted_and_its_status_logged(tmp_path, caplog):
    run = script(tmp_path, "fail", "echo 'no mail server' >&2; exit 3\n")
    caplog.set_level("INFO", logger="steerd.hooks")
    r = run_events([Hook(frozenset({"link_down"}), run, 5.0)],
                   lambda log: log.emit("link_down", "x", "t1"))
    assert r.runs == [1] and r.failures == [1]
    assert f"hook {run} (link_down): exit status 3: no mail server" in caplog.text


def test_missing_script_is_counted(tmp_path, caplog):
    r = run_events([Hook(frozenset({"link_down"}), str(tmp_path / "gone"), 5.0)],
                   lambda log: log.emit("link_down", "x", "t1"))
    assert r.failures == [1] and "cannot run" in caplog.text


def test_slow_script_is_killed_with_its_children_and_never_blocks(tmp_path, caplog):
    pidfile = tmp_path / "child.pid"
    run = script(tmp_path, "slow", f"sleep 30 & echo $! > {pidfile}; wait\n")
    ticks: list[float] = []

    async def main() -> HookRunner:
        log = EventLog()
        runner = HookRunner([Hook(frozenset({"link_down"}), run, 0.5)], log)
        runner.start()
        t0 = time.monotonic()
        log.emit("link_down", "x", "t1")
        emitted = time.monotonic() - t0
        for _ in range(40):                 # the loop keeps running every 25 ms meanwhile
            ticks.append(time.monotonic())
            await asyncio.sleep(0.025)
        runner.stop()
        assert emitted < 0.01
        return runner
    r = asyncio.run(main())
    assert r.failures == [1]
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.2
    assert "killed after the 0.5s timeout" in caplog.text
    child = int(pidfile.read_text())
    time.sleep(0.1)
    try:
        with open(f"/proc/{child}/stat", encoding="ascii") as f:
            state = f.read().split()[2]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")


def test_a_stuck_hook_drops_events_beyond_its_queue_and_counts_them(tmp_path):
    run = script(tmp_path, "stuck", "sleep 5\n")

    async def main() -> HookRunner:
        log = EventLog(debounce=0)
        runner = HookRunner([Hook(frozenset({"rebalance"}), run, 10.0)], log)
        runner.start()
        for i in range(105):
            log.emit("rebalance", f"r{i}")
        await asyncio.sleep(0.3)
        runner.stop()
        return runner
    r = asyncio.run(main())
    # a burst: 100 queued (the first of them now running), the rest dropped and counted
    assert r.failures == [105 - 100] and r.runs == [1]


# ------------------------------------------------------------------ config

def test_hooks_config(tmp_path):
    run = script(tmp_path, "hook", "exit 0\n")
    script(tmp_path, "hook2", "exit 0\n")
    cfg = parse_config(BASE + f"hooks:\n  - {{on: [link_down, ha_failover], run: {run}, timeout: 2s}}\n"
                              f"  - {{on: link_up, run: {run}2}}\n", "site.yaml")
    assert cfg.hooks == (Hook(frozenset({"link_down", "ha_failover"}), run, 2.0, 7),
                         Hook(frozenset({"link_up"}), run + "2", 5.0, 8))
    assert parse_config(BASE, "site.yaml").hooks == ()


@pytest.mark.parametrize("hooks, key, expected", [
    ("[{on: [link_dwn], run: RUN}]", "hooks[0].on[0]", "one of"),
    ("[{on: [], run: RUN}]", "hooks[0].on", "a non-empty list of event types"),
    ("[{run: RUN}]", "hooks[0].on", "required key 'on'"),
    ("[{on: [link_down]}]", "hooks[0].run", "required key 'run'"),
    ("[{on: [link_down], run: relative/x}]", "hooks[0].run", "an absolute path"),
    ("[{on: [link_down], run: /nonexistent/steerd-hook}]", "hooks[0].run", "an executable file"),
    ("[{on: [link_down], run: RUN, timeout: 2h}]", "hooks[0].timeout", "<= 10m"),
    ("[{on: [link_down], run: RUN, tmeout: 2s}]", "hooks[0].tmeout", "did you mean 'timeout'"),
    ("[{on: [link_down], run: RUN}, {on: [link_up], run: RUN}]", "hooks[1].run",
     "a script listed once"),
    ("{on: [link_down], run: RUN}", "hooks", "a list of hooks"),
])
def test_bad_hooks_name_line_key_value_and_expectation(tmp_path, hooks, key, expected):
    run = script(tmp_path, "hook", "exit 0\n")
    text = BASE + "hooks: " + hooks.replace("RUN", run) + "\n"
    with pytest.raises(ValidationError) as e:
        parse_config(text, "site.yaml")
    p = next(p for p in e.value.problems if p.key == key)
    assert p.line == 6 and expected in str(p), str(e.value)
    assert str(p).startswith("site.yaml:6:")


def test_non_executable_script_is_refused(tmp_path):
    path = tmp_path / "plain"
    path.write_text("exit 0\n")
    with pytest.raises(ValidationError, match="an executable file"):
        parse_config(BASE + f"hooks: [{{on: [link_down], run: {path}}}]\n", "site.yaml")
