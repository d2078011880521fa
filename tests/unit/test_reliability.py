"""Issue 11: the daemon never silently stops protecting traffic. Each test names
the finding it guards (item N). The real daemon loop, control socket and reload
code run on the fake data path; faults are injected into that fake."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import signal
import socket
import time

import pytest
import yaml
from click.testing import CliRunner

from steerd import sdnotify
from steerd.cli import main as steerctl
from steerd.config import parse_config
from steerd.daemon import Daemon, DaemonFailed, state_path
from steerd.dataplane import Layout, load_layouts
from steerd.testing.fake_dataplane import FakeDataplane
from steerd.events import EventLog
from steerd.health import Transition
from steerd.lab.topology import Lab
from steerd.rules import Limits

SMALL = Limits(max_rules=64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_config(tmp_path, **top) -> dict:
    return Lab("r").config(control_socket=str(tmp_path / "s.sock"),
                           metrics={"listen": f"127.0.0.1:{_free_port()}"}, **top)


def write(tmp_path, raw: dict) -> str:
    path = tmp_path / "steerd.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def rules_text(n: int) -> str:
    return "rules:\n" + "".join(f"  - {{name: r{i}, match: {{dst: 10.20.{i}.0/24}}, wan: wan1}}\n"
                                for i in range(n))


@contextlib.asynccontextmanager
async def running(tmp_path, raw: dict, dp_class=FakeDataplane, daemon_class=Daemon, **dp_kw):
    """The daemon's run() as a task of this loop; stopped (and awaited) after."""
    path = write(tmp_path, raw)
    cfg = parse_config(open(path).read(), path)
    d = daemon_class(cfg, dp_class(Layout.from_config(cfg), **dp_kw), probing=False)
    d._install_signals = lambda loop: None
    task = asyncio.create_task(d.run())
    for _ in range(250):
        if d.controller is not None and os.path.exists(cfg.control_socket):
            break
        await asyncio.sleep(0.02)
    try:
        yield d
    finally:
        d.stop_event.set()
        with contextlib.suppress(DaemonFailed):
            await asyncio.wait_for(task, 5)


def transition(d: Daemon, name: str, new: str) -> None:
    i = d.cfg.index_of(name)
    d._transitions(i, [Transition(name, d.controller.states[i], new, "test", time.monotonic())],
                   time.monotonic())


def types(d: Daemon) -> list[str]:
    return [e.type for e in d.events.events]


# ------------------------------------------------------------------ item 1

def test_item1_events_on_a_full_disk_never_raise():
    log = EventLog(path="/dev/full")             # every write: ENOSPC
    assert log.emit("link_down", "test", "t1") is not None
    assert log.write_errors == 1 and log.events[-1].type == "link_down"


def test_item1_link_down_is_programmed_when_the_events_file_is_full(tmp_path):
    async def scenario():
        async with running(tmp_path, base_config(tmp_path, events={"file": "/dev/full"})) as d:
            transition(d, "pri-wan2", "down")
            i = d.cfg.index_of("pri-wan2")
            assert d.controller.states[i] == "down"
            assert d.dp.usable[i] is False and i not in d.dp.slots[0].tunnel
            assert d.events.write_errors >= 1
    asyncio.run(scenario())


class FlakyDataplane(FakeDataplane):
    """A transient bpf map error: the first write of `usable` and of the counters fail."""

    def __init__(self, layout, **kw):
        super().__init__(layout, **kw)
        self.fail = {"set_usable": 0, "counters": 1}

    def set_usable(self, usable, site=0):
        if self.fail["set_usable"]:
            self.fail["set_usable"] -= 1
            raise OSError(28, "No space left on device (injected)")
        super().set_usable(usable, site)

    def counters(self):
        if self.fail["counters"]:
            self.fail["counters"] -= 1
            raise OSError(24, "Too many open files (injected)")
        return [(7, 700)] * len(self.layout.tunnels)


def test_item1_a_failed_data_plane_write_is_retried_and_the_loops_live_on(tmp_path):
    async def scenario():
        async with running(tmp_path, base_config(tmp_path), FlakyDataplane) as d:
            # the counters loop met EMFILE on its first turn and goes on
            for _ in range(40):
                if d.counters_cache[0] == (7, 700):
                    break
                await asyncio.sleep(0.1)
            assert d.counters_cache[0] == (7, 700), d.loop_errors
            assert d.loop_errors.get("counters") == 1
            d.dp.fail["set_usable"] = 1
            transition(d, "pri-wan1", "down")     # the write fails...
            i = d.cfg.index_of("pri-wan1")
            assert d.loop_errors.get("dataplane") == 1 and d.dp.usable[i] is True
            for _ in range(30):                   # ...and the next loop turn redoes it
                if d.dp.usable[i] is False:
                    break
                await asyncio.sleep(0.1)
            assert d.dp.usable[i] is False and i not in d.dp.slots[0].tunnel
            assert "loop_error" in types(d)
            # and an operator sees them counted
            from prometheus_client import generate_latest
            from prometheus_client.registry import CollectorRegistry
            from steerd.metrics import SteerdCollector
            reg = CollectorRegistry()
            reg.register(SteerdCollector(d))
            text = generate_latest(reg).decode()
            assert 'steerd_loop_errors_total{where="counters"} 1.0' in text
            assert 'steerd_loop_errors_total{where="dataplane"} 1.0' in text
    asyncio.run(scenario())


class LoopEnds(Daemon):
    async def rebalance_loop(self) -> None:
        await asyncio.sleep(0.2)       # a loop that ends (a bug, an escaped BaseException)


def test_item1_a_loop_that_ends_stops_the_daemon_with_an_error(tmp_path):
    async def scenario():
        path = write(tmp_path, base_config(tmp_path))
        cfg = parse_config(open(path).read(), path)
        d = LoopEnds(cfg, FakeDataplane(Layout.from_config(cfg)), probing=False)
        d._install_signals = lambda loop: None
        with pytest.raises(DaemonFailed, match="rebalance loop ended"):
            await asyncio.wait_for(d.run(), 10)
    asyncio.run(scenario())


def test_item1_watchdog_is_pinged_only_with_a_recent_probe_heartbeat(tmp_path, monkeypatch):
    sock_path = str(tmp_path / "notify")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(sock_path)
    rx.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "40000")          # a ping every 20 ms

    def pings(alive) -> int:
        async def scenario():
            stop = asyncio.Event()
            task = asyncio.create_task(sdnotify.watchdog_loop(stop, alive))
            await asyncio.sleep(0.2)
            stop.set()
            await task
        asyncio.run(scenario())
        n = 0
        with contextlib.suppress(BlockingIOError):
            while rx.recv(64) == b"WATCHDOG=1":
                n += 1
        return n
    assert pings(lambda: True) >= 3
    assert pings(lambda: False) == 0
    # the daemon's own test: the probe loop's heartbeat
    cfg = parse_config(open(write(tmp_path, base_config(tmp_path))).read(), str(tmp_path / "x"))
    d = Daemon(cfg, FakeDataplane(Layout.from_config(cfg)), probing=True)
    d.heartbeat = 100.0
    assert d.probe_alive(101.0) and not d.probe_alive(100.0 + 60)


def test_item1_sd_notify_never_raises(monkeypatch):
    def no_fds(*a, **kw):
        raise OSError(24, "Too many open files")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/nonexistent-steerd-notify")
    monkeypatch.setattr(socket, "socket", no_fds)
    assert sdnotify.notify("WATCHDOG=1") is False


# ------------------------------------------------------------------ item 3

def test_item3_sa_state_follows_tunnel_names_across_a_reload(tmp_path):
    async def scenario():
        raw = base_config(tmp_path)
        async with running(tmp_path, raw) as d:
            d._on_sa_change("pri-wan1", False, "SA deleted")          # index 0 loses its SAs
            assert d.controller.states[0] == "down"
            # reload: pri-wan1 moves to the end, pri-wan2 is renamed
            new = dict(raw)
            tunnels = [dict(t) for t in raw["tunnels"]]
            tunnels = tunnels[1:] + tunnels[:1]
            tunnels[0]["name"] = "pri-wan2b"
            new["tunnels"] = tunnels
            write(tmp_path, new)
            assert (await d.reload())["ok"]
            # the old name's SA loss is ignored, not a KeyError
            d._on_sa_change("pri-wan2", False, "SA deleted")
            assert d.loop_errors == {}
            # the tunnel now at index 0 was never without SAs: probes bring it up
            transition(d, "pri-wan2b", "down")
            transition(d, "pri-wan2b", "up")
            assert d.controller.states[d.cfg.index_of("pri-wan2b")] == "up"
            # pri-wan1 (now last) is still held down by its missing SAs
            transition(d, "pri-wan1", "up")
            assert d.controller.states[d.cfg.index_of("pri-wan1")] == "down"
            d._on_sa_change("pri-wan1", True, "SA installed")
            transition(d, "pri-wan1", "up")
            assert d.controller.states[d.cfg.index_of("pri-wan1")] == "up"
    asyncio.run(scenario())


# ------------------------------------------------------------------ item 4

class SlowRelayout(FakeDataplane):
    def relayout(self, new):
        time.sleep(0.5)
        super().relayout(new)


def test_item4_a_link_change_during_a_relayout_is_not_overwritten(tmp_path):
    async def scenario():
        raw = base_config(tmp_path)
        async with running(tmp_path, raw, SlowRelayout) as d:
            new = dict(raw, tunnels=raw["tunnels"][:5])           # drop sec-wan3: relayout
            write(tmp_path, new)
            reload = asyncio.create_task(d.reload())
            await asyncio.sleep(0.2)                               # inside the relayout
            transition(d, "pri-wan2", "down")
            assert (await reload)["ok"]
            i = d.cfg.index_of("pri-wan2")
            assert d.controller.states[i] == "down"
            assert d.dp.usable[i] is False
            assert i not in d.dp.slots[0].tunnel, "the dead tunnel got slots back after the relayout"
    asyncio.run(scenario())


# ------------------------------------------------------------------ item 5

def test_item5_a_rule_capacity_error_rejects_the_whole_reload(tmp_path):
    async def scenario():
        raw = base_config(tmp_path)
        async with running(tmp_path, raw, rule_limits=SMALL) as d:
            (tmp_path / "rules.yaml").write_text(rules_text(65))     # over the maps' 64
            write(tmp_path, dict(raw, tunnels=raw["tunnels"][:5], rules_file="rules.yaml"))
            reply = await d.reload()
            assert not reply["ok"] and "nothing changed" in reply["error"]
            assert "at most 64 rules" in reply["text"]
            assert len(d.cfg.tunnels) == 6 and len(d.dp.layout.tunnels) == 6
            assert d.ruleset is None and d.config_errors == 1
            assert types(d)[-1] == "config_rejected"
    asyncio.run(scenario())


class BrokenRelayout(FakeDataplane):
    def relayout(self, new):
        raise RuntimeError("netlink went away (injected)")


def test_item5_sighup_reload_failures_are_counted_and_evented(tmp_path):
    async def scenario():
        raw = base_config(tmp_path)
        async with running(tmp_path, raw, BrokenRelayout) as d:
            loop = asyncio.get_running_loop()
            Daemon._install_signals(d, loop)        # the real handlers (main thread here)
            try:
                write(tmp_path, dict(raw, tunnels=raw["tunnels"][:5]))
                os.kill(os.getpid(), signal.SIGHUP)
                for _ in range(50):
                    if d.config_errors:
                        break
                    await asyncio.sleep(0.05)
            finally:
                for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            assert d.config_errors == 1 and "reload_failed" in types(d)
            ev = [e for e in d.events.events if e.type == "reload_failed"][0]
            assert "netlink went away" in ev.reason
    asyncio.run(scenario())


class CountingRelayout(FakeDataplane):
    def __init__(self, layout, **kw):
        super().__init__(layout, **kw)
        self.inside = self.most = 0

    def relayout(self, new):
        self.inside += 1
        self.most = max(self.most, self.inside)
        time.sleep(0.2)
        super().relayout(new)
        self.inside -= 1


def test_item5_reloads_are_serialised(tmp_path):
    async def scenario():
        raw = base_config(tmp_path)
        async with running(tmp_path, raw, CountingRelayout) as d:
            write(tmp_path, dict(raw, tunnels=raw["tunnels"][:5]))
            first = asyncio.create_task(d.reload())
            await asyncio.sleep(0.05)
            write(tmp_path, dict(raw, tunnels=raw["tunnels"][:4]))
            replies = await asyncio.gather(first, d.reload())
            assert all(r["ok"] for r in replies), replies
            assert d.dp.most == 1 and len(d.cfg.tunnels) == 4 and d.config_generation == 3
    asyncio.run(scenario())


# ------------------------------------------------------------------ item 6

def test_item6_config_check_runs_the_capacity_check(tmp_path):
    raw = base_config(tmp_path, rules_file="rules.yaml")
    # 3,300 scattered IPv6 /128 destinations: each costs its own path of table chunks
    rnd = random.Random(1)
    (tmp_path / "rules.yaml").write_text("rules:\n" + "".join(
        f'  - {{name: h{i}, match: {{dst: "{ipaddress.IPv6Address(rnd.getrandbits(128))}/128"}}, '
        'wan: wan1}\n' for i in range(3300)))
    res = CliRunner().invoke(steerctl, ["config", "check", write(tmp_path, raw)])
    assert res.exit_code == 2, res.output
    assert "IPv6 table chunks" in res.output


def test_item6_dry_run_compiles_against_the_maps(tmp_path):
    async def scenario():
        async with running(tmp_path, base_config(tmp_path), rule_limits=SMALL) as d:
            reply = await d.rules_apply(rules_text(65), "r.yaml", dry_run=True)
            assert not reply["ok"] and "at most 64 rules" in reply["text"]
            assert (await d.rules_apply(rules_text(64), "r.yaml", dry_run=True))["ok"]
            assert d.ruleset is None
    asyncio.run(scenario())


# ------------------------------------------------------------------ item 9

@pytest.mark.parametrize("key,value", [
    ("metrics", {"listen": "0.0.0.0:9469"}), ("control_group", "adm"),
    ("events", {"file": "/tmp/elsewhere.jsonl"}), ("control_socket", "/tmp/other.sock")])
def test_item9_reload_rejects_settings_only_a_restart_applies(tmp_path, key, value):
    async def scenario():
        raw = base_config(tmp_path)
        async with running(tmp_path, raw) as d:
            write(tmp_path, dict(raw, **{key: value}))
            reply = await d.reload()
            assert not reply["ok"]
            assert key in reply["text"] and "needs a restart" in reply["text"]
            assert d.config_errors == 1
    asyncio.run(scenario())


# ------------------------------------------------------------------ item 10

class CountingFlows(FakeDataplane):
    walks = 0

    def flow_counts(self):
        CountingFlows.walks += 1
        return super().flow_counts()


def test_item10_status_does_not_walk_the_flow_table_per_request(tmp_path):
    from steerd.cli import request

    async def scenario():
        async with running(tmp_path, base_config(tmp_path), CountingFlows) as d:
            def many():
                for _ in range(30):
                    request(d.cfg.control_socket, {"cmd": "status"})
            t0 = time.monotonic()
            await asyncio.to_thread(many)
            elapsed = time.monotonic() - t0
            assert CountingFlows.walks <= 1 + elapsed / 1.0 + 1, CountingFlows.walks
    asyncio.run(scenario())


def test_item10_a_big_rules_apply_does_not_stall_the_loop(tmp_path):
    """The loop keeps turning while 10,000 rules are parsed and compiled: its
    largest stall is well under the apply's own duration (all of it on main)."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    from rulegen import rules_yaml
    text = rules_yaml(10000)

    async def scenario():
        async with running(tmp_path, base_config(tmp_path)) as d:
            lags = []

            async def ticker():
                while True:
                    t = time.monotonic()
                    await asyncio.sleep(0.005)
                    lags.append(time.monotonic() - t - 0.005)
            tick = asyncio.create_task(ticker())
            t0 = time.monotonic()
            reply = await d.rules_apply(text, "big.yaml", dry_run=True)
            took = time.monotonic() - t0
            tick.cancel()
            assert reply["ok"], reply.get("text")
            assert max(lags) < took / 2, f"loop stalled {max(lags):.2f}s of a {took:.2f}s apply"
    asyncio.run(scenario())


# ------------------------------------------------------------------ item 12

def test_item12_the_layout_is_recorded_after_every_change(tmp_path):
    async def scenario():
        raw = base_config(tmp_path)
        async with running(tmp_path, raw) as d:
            write(tmp_path, dict(raw, tunnels=raw["tunnels"][:5]))
            assert (await d.reload())["ok"]
            recorded = load_layouts(state_path(d.cfg))
            names = [{t.name for t in k.tunnels} for k in recorded]
            assert {"sec-wan3"} <= names[0] and "sec-wan3" not in names[-1]
            assert recorded[-1] == d.dp.layout
    asyncio.run(scenario())


# ------------------------------------------------------------------ issue 12 item 2

def test_a_reload_that_fails_over_or_back_emits_the_ha_events(tmp_path):
    async def scenario():
        raw = base_config(tmp_path, failback_hold="0s")
        async with running(tmp_path, raw) as d:
            transition(d, "pri-wan1", "down")
            transition(d, "pri-wan2", "down")
            assert d.controller.active_role(0) == "primary"          # pri-wan3 still carries
            without3 = [t for t in raw["tunnels"] if t["name"] != "pri-wan3"]
            write(tmp_path, dict(raw, tunnels=without3))
            assert (await d.reload())["ok"]
            assert d.controller.active_role(0) == "secondary"
            assert "ha_failover" in types(d)
            write(tmp_path, raw)                                  # pri-wan3 is back, healthy
            assert (await d.reload())["ok"]
            assert d.controller.active_role(0) == "primary"
            assert "ha_failback" in types(d)
            st = json.loads(json.dumps([e.as_dict() for e in d.events.events]))
            assert [e["type"] for e in st].index("ha_failover") < [e["type"] for e in st].index(
                "ha_failback")
    asyncio.run(scenario())


# ------------------------------------------------------------------ item 2

def test_item2_connections_are_capped_and_refused_at_once(tmp_path):
    from steerd import control
    from steerd.cli import request

    async def scenario():
        async with running(tmp_path, base_config(tmp_path)) as d:
            def hog_then_probe():
                held = []
                try:
                    for _ in range(control.MAX_CLIENTS):
                        s = socket.socket(socket.AF_UNIX)
                        s.connect(d.cfg.control_socket)
                        held.append(s)
                    time.sleep(0.3)          # all accepted and counted (idle, no request)
                    extra = socket.socket(socket.AF_UNIX)
                    extra.settimeout(2)
                    extra.connect(d.cfg.control_socket)
                    t0 = time.monotonic()
                    reply = json.loads(extra.makefile("rb").readline())
                    waited = time.monotonic() - t0
                    extra.close()
                finally:
                    for s in held:
                        s.close()
                time.sleep(0.3)
                return reply, waited, request(d.cfg.control_socket, {"cmd": "status"})["ok"]
            reply, waited, ok_after = await asyncio.to_thread(hog_then_probe)
            assert reply["ok"] is False and "too many connections" in reply["error"]
            assert waited < 1.0 and ok_after
    asyncio.run(scenario())


def test_item2_caps_per_user_leave_room_for_root():
    from steerd import control
    c = control.Clients()
    for _ in range(control.MAX_CLIENTS_PER_USER):
        assert c.admit(1000) is None
    assert "uid 1000" in c.admit(1000)
    uid = 2000
    while c.admit(uid) is None or c.admit(uid + 1) is None:   # many members fill their share
        uid += 2
    assert c.admit(0) is None                                  # root still gets in
    c.leave(1000)
    assert c.admit(1000) is None


@pytest.mark.parametrize("req", [{"cmd": "events", "since": "yesterday"},
                                 {"cmd": "events", "since": [1]},
                                 {"cmd": "rules_apply", "text": 5}])
def test_mistyped_requests_get_an_answer_not_a_traceback(tmp_path, req, caplog):
    from steerd.cli import request_lines

    async def scenario():
        async with running(tmp_path, base_config(tmp_path)) as d:
            reply = await asyncio.to_thread(lambda: next(request_lines(d.cfg.control_socket, req)))
            assert reply["ok"] is False
    asyncio.run(scenario())
    assert "Traceback" not in caplog.text and "control request failed" not in caplog.text


def test_a_second_daemon_on_the_same_socket_refuses_and_leaves_the_first_alone(tmp_path):
    from steerd import control
    from steerd.cli import request

    async def scenario():
        raw = base_config(tmp_path)
        async with running(tmp_path, raw) as d:
            inode = os.stat(d.cfg.control_socket).st_ino
            second = Daemon(d.cfg, FakeDataplane(Layout.from_config(d.cfg)), probing=False)
            second._install_signals = lambda loop: None
            with pytest.raises(control.AlreadyRunning, match="another steerd"):
                await asyncio.wait_for(second.run(), 5)
            assert second.dp.slots is None                        # it touched nothing
            assert os.stat(d.cfg.control_socket).st_ino == inode   # the socket is the first's
            ok = await asyncio.to_thread(request, d.cfg.control_socket, {"cmd": "status"})
            assert ok["ok"]
    asyncio.run(scenario())


# ------------------------------------------------------------------ should-fix list

def test_remove_pins_removes_only_steerds_own(tmp_path):
    from steerd.dataplane.program import pinned_names, remove_pins
    d = tmp_path / "pins"
    d.mkdir()
    for name in ("slots", "flows", "someone_elses_map"):
        (d / name).write_text("")
    assert sorted(remove_pins(str(d))) == ["flows", "slots"]
    assert os.listdir(d) == ["someone_elses_map"]
    (d / "someone_elses_map").unlink()
    (d / "tunnels").write_text("")
    assert remove_pins(str(d)) == ["tunnels"] and not d.exists()
    assert {"slots", "flowtab", "flows", "tunnels", "steer_cfg"} <= pinned_names()


def test_events_file_is_rotated(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path=str(path), max_bytes=2000, debounce=0)
    for i in range(100):
        log.emit("link_down", f"test {i}", "t1")
    assert path.stat().st_size < 2000 + 300
    assert (tmp_path / "events.jsonl.1").exists()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["reason"] == "test 99"


def test_event_debounce_uses_the_monotonic_clock(monkeypatch):
    log = EventLog(debounce=5.0)
    log.emit("link_down", "same", "t1")
    wall = time.time()
    monkeypatch.setattr(time, "time", lambda: wall + 3600)     # the wall clock jumps an hour
    assert log.emit("link_down", "same", "t1") is None          # still a repeat
    assert log.events[-1].extra["repeated"] == 2


def test_a_missing_rules_file_is_reported_and_a_reload_keeps_the_rules(tmp_path):
    async def scenario():
        (tmp_path / "rules.yaml").write_text(rules_text(3))
        raw = base_config(tmp_path, rules_file="rules.yaml")
        async with running(tmp_path, raw) as d:
            assert len(d.ruleset.rules) == 3
            (tmp_path / "rules.yaml").unlink()                 # briefly absent (an editor's save)
            reply = await d.reload()
            assert not reply["ok"] and "rules_file" in reply["text"]
            assert len(d.ruleset.rules) == 3                    # the pins stay
    asyncio.run(scenario())
    # at start: the daemon runs, without rules, and says so
    async def start():
        raw = base_config(tmp_path, rules_file="absent.yaml")
        async with running(tmp_path, raw) as d:
            assert d.ruleset is None
            assert any("absent.yaml" in e.reason for e in d.events.events)
    asyncio.run(start())


def test_retired_pins_are_removed_at_start_and_by_cleanup(tmp_path):
    """A pin of an older map layout (RETIRED_PINS) cannot be adopted by the
    new program: it goes at start and with --cleanup; other pins stay."""
    from steerd.dataplane.program import RETIRED_PINS, _remove_retired, remove_pins
    for name in (*RETIRED_PINS, "slots", "someone_elses_map"):
        (tmp_path / name).write_text("")
    _remove_retired(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["slots", "someone_elses_map"]
    (tmp_path / "flows").write_text("")
    assert sorted(remove_pins(str(tmp_path))) == ["flows", "slots"]
