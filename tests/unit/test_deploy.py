"""Deploy artifacts: systemd unit, stop helper, install script, Prometheus alerts,
Grafana dashboard (deploy/**).

The dashboard and alert queries are checked against what the daemon really
exports: steerd.metrics.SteerdCollector is rendered over a small fake daemon, so a
renamed or dropped metric (or label) fails here, not on an operator's screen.

External tools come from Debian packages (installed by `make deps`); each test
that needs one is skipped, naming the package, when it is missing:
promtool (prometheus), systemd-analyze (systemd), shellcheck (shellcheck).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sysconfig
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from steerd.config import HealthConfig
from steerd.health import LinkStats
from steerd.metrics import SteerdCollector
from steerd.status import Readings, SiteStatus, Snapshot, TunnelStatus

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "steerd.service"
STOP_POST = DEPLOY / "steerd-stop-post"
INSTALL = DEPLOY / "install.sh"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = Path(__file__).resolve().parent / "promtool" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "steerd.json"

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian package `{package}`; `make deps` installs it)")
    return path


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


# --------------------------------------------------------------------------------------
# What the daemon exports: SteerdCollector over a fake daemon's view (2 tunnels, one per
# HA role, probed, with rules, quality rules, XFRM counters and a hook).
# --------------------------------------------------------------------------------------
def fake_daemon():
    tunnels = (TunnelStatus("pri-wan1", "branch-01", "primary", "wan1", "ipsec1", "up", False,
                            1.0, 1.0, 100.0, None),
               TunnelStatus("sec-wan1", "branch-01", "secondary", "wan1", "ipsec2", "degraded", False,
                            0.0, 0.0, 50.0, None))
    snap = Snapshot("branch-01", (SiteStatus("branch-01", "primary", ("pri-wan1", "sec-wan1"), 2, 1, 1),),
                    tunnels, link_changes=2)
    stats = [LinkStats(0.0, 0.012, 0.011, 0.0008, 10), LinkStats(0.2, 0.031, 0.030, 0.004, 10)]
    esp = NS(tx_bytes=1, rx_bytes=2, tx_packets=3, rx_packets=4)
    readings = Readings(stats=stats, tx=[(1500, 1_200_000), (0, 0)], flows=[3, 0],
                        probes=[(120, 118), (120, 96)], health=HealthConfig(),
                        esp={"pri-wan1": esp}, sla=[("pri-wan1", "realtime", True)],
                        rule_hits={"voice": 42, "backup": 0}, rules=2, rebalances=3,
                        slots_moved=410, config_errors=1, config_generation=2,
                        loop_errors={"counters": 1}, hooks=[("/usr/local/sbin/notify", 0, 0)],
                        dup_rules=[("voice", "branch-01", (5, 700))], dup_tunnels={"sec-wan1": (5, 700)})
    return NS(view=lambda: (snap, readings))


@pytest.fixture(scope="module")
def exposition() -> str:
    registry = CollectorRegistry()
    registry.register(SteerdCollector(fake_daemon()))
    return generate_latest(registry).decode()


@pytest.fixture(scope="module")
def exported(exposition) -> dict[str, set[str]]:
    """Sample name (as PromQL sees it, e.g. steerd_rebalances_total) -> label names."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_fake_daemon_exports_every_documented_metric(exported):
    """The fake must exercise every branch of the collector, or the checks below
    would wrongly call a conditional metric (rtt, jitter, rule hits) missing."""
    documented = {  # DESIGN.md "Metrics" + steerd/metrics.py
        "steerd_tunnel_up", "steerd_tunnel_degraded", "steerd_tunnel_rtt_seconds",
        "steerd_tunnel_jitter_seconds", "steerd_tunnel_loss_ratio", "steerd_tunnel_weight",
        "steerd_tunnel_share", "steerd_tunnel_tx_packets_total", "steerd_tunnel_tx_bytes_total",
        "steerd_probe_sent_total", "steerd_probe_received_total", "steerd_ha_active_role",
        "steerd_rebalances_total", "steerd_link_state_changes_total",
        "steerd_config_load_errors_total", "steerd_config_generation", "steerd_rule_matches_total",
        "steerd_hook_runs_total", "steerd_hook_failures_total",
    }
    assert documented <= set(exported), sorted(documented - set(exported))
    assert exported["steerd_tunnel_rtt_seconds"] == {"tunnel", "wan", "ha_role", "site"}
    assert exported["steerd_ha_active_role"] == {"role", "site"}
    assert exported["steerd_rule_matches_total"] == {"rule"}
    assert exported["steerd_hook_failures_total"] == {"hook"}


def test_exposition_passes_promtool_check_metrics(exposition):
    promtool = need("promtool", "prometheus")
    res = run([promtool, "check", "metrics"], input=exposition)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), \
        res.stdout + res.stderr


# --------------------------------------------------------------------------------------
# Every PromQL expression of the dashboard and the alerts
# --------------------------------------------------------------------------------------
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for panel targets, annotations and template variable queries."""
    out: list[tuple[str, str]] = []

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "expr" and isinstance(v, str):
                    out.append((where, v))
                else:
                    walk(v, f"{where}/{node.get('title') or node.get('name') or k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    d = dashboard()
    walk(d["panels"], "panels")
    walk(d["annotations"], "annotations")
    for var in d["templating"]["list"]:
        if var["type"] != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
        assert m, f"variable {var['name']}: expected label_values(selector, label), got {q!r}"
        out.append((f"templating/{var['name']}", m.group(1)))
        out.append((f"templating/{var['name']}:label", f"count by ({m.group(2)}) ({m.group(1)})"))
    return out


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def all_exprs() -> list[tuple[str, str]]:
    return dashboard_exprs() + [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]


METRIC_RE = re.compile(r"\b(steerd_[A-Za-z0-9_:]+)\b")
SELECTOR_RE = re.compile(r"\b(steerd_[A-Za-z0-9_:]+)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def test_every_steerd_metric_queried_is_exported(exported):
    missing = [(where, name) for where, expr in all_exprs() for name in METRIC_RE.findall(expr)
               if name not in exported]
    assert not missing, f"queried but not exported by steerd/metrics.py: {missing}"


def test_every_label_queried_exists(exported):
    """Label matchers, grouping clauses and legend/annotation templates name real labels."""
    known = set().union(*exported.values()) | TARGET_LABELS
    bad = []
    for where, expr in all_exprs():
        for name, matchers in SELECTOR_RE.findall(expr):
            for label in MATCHER_RE.findall(matchers):
                if label not in exported.get(name, set()) | TARGET_LABELS:
                    bad.append((where, f"{name}{{{label}}}"))
        for group in GROUPING_RE.findall(expr):
            bad += [(where, f"grouping label {lbl}") for lbl in re.findall(r"\w+", group)
                    if lbl not in known]
    d = json.dumps(dashboard())
    bad += [("dashboard template", lbl) for lbl in re.findall(r"\{\{\s*(\w+)\s*\}\}", d)
            if lbl not in known]
    for r in alert_rules():
        text = json.dumps(r.get("annotations", {}))
        bad += [(f"alert {r['alert']}", lbl) for lbl in re.findall(r"\$labels\.(\w+)", text)
                if lbl not in known]
    assert not bad, bad


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each dashboard query (Grafana variables substituted) as a
    recording rule; label_values() selectors are checked as plain selectors."""
    promtool = need("promtool", "prometheus")
    subst = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h",
             "$instance": "gw1:9469", "$tunnel": ".*"}
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs()):
        for var, value in subst.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {expr!r}"
        rules.append({"record": f"steerd_dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = run([promtool, "check", "rules", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_shape():
    d = dashboard()
    assert d["uid"] and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"datasource", "instance", "tunnel"} <= set(variables)
    used: set[str] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p.get("description"), f"panel {p['title']!r} needs a description (what and why)"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            # one site at a time: every panel query is scoped to the chosen instance
            assert 'instance="$instance"' in t["expr"], (p["title"], t["expr"])
            used |= set(METRIC_RE.findall(t["expr"]))
    # issue 6: per-tunnel RTT, jitter, loss, state, weight, share; traffic; HA role; rebalances
    wanted = {"steerd_tunnel_rtt_seconds", "steerd_tunnel_jitter_seconds", "steerd_tunnel_loss_ratio",
              "steerd_tunnel_up", "steerd_tunnel_degraded", "steerd_tunnel_weight",
              "steerd_tunnel_share", "steerd_tunnel_tx_bytes_total", "steerd_ha_active_role",
              "steerd_rebalances_total"}
    assert wanted <= used, sorted(wanted - used)
    events = {a["name"]: a for a in d["annotations"]["list"] if "expr" in a}
    assert {"Tunnel down", "HA failover", "Config reloaded"} <= set(events)
    for a in events.values():
        assert 'instance="$instance"' in a["expr"], a["name"]


# --------------------------------------------------------------------------------------
# Alerts
# --------------------------------------------------------------------------------------
def test_alert_rules_pass_promtool_check():
    promtool = need("promtool", "prometheus")
    res = run([promtool, "check", "rules", str(ALERTS)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_alert_rules_unit_tests():
    promtool = need("promtool", "prometheus")
    res = run([promtool, "test", "rules", str(ALERT_TESTS)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_alerts_cover_issue_6_and_each_is_tested_firing():
    rules = {r["alert"]: r for r in alert_rules()}
    required = {"SteerdTunnelDown", "SteerdHAFailover", "SteerdTunnelLossOverSLA",
                "SteerdTunnelJitterOverSLA", "SteerdConfigLoadErrors", "SteerdDown",
                "SteerdProbesStalled"}
    assert required <= set(rules), sorted(required - set(rules))
    assert 'steerd_ha_active_role{role="secondary"} == 1' in rules["SteerdHAFailover"]["expr"]
    for name, r in rules.items():
        assert r["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description"} <= set(r["annotations"]), name
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
    quiet = {c["alertname"] for t in tests for c in t.get("alert_rule_test", [])
             if not c.get("exp_alerts")}
    assert set(rules) <= fired, f"alerts without a firing test: {sorted(set(rules) - fired)}"
    assert set(rules) - {"SteerdTunnelLatencyOverSLA"} <= quiet, \
        f"alerts without a not-firing test: {sorted(set(rules) - quiet)}"


# --------------------------------------------------------------------------------------
# systemd unit
# --------------------------------------------------------------------------------------
def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with its two steerd paths pointed at files that exist here
    (systemd-analyze verify checks that Exec*= binaries exist and are executable):
    a stand-in steerd, and the real stop helper from the tree."""
    fake = tmp_path / "steerd"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    text = UNIT.read_text()
    for path, repl in (("/opt/steerd/current/bin/steerd", str(fake)),
                       ("/usr/local/lib/steerd/steerd-stop-post", str(STOP_POST))):
        assert path in text, f"{path} not in the unit any more: update this test and install.sh"
        text = text.replace(path, repl)
    out = tmp_path / "steerd.service"
    out.write_text(text)
    return out


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = need("systemd-analyze", "systemd")
    res = run([analyze, "verify", str(verifiable_unit(tmp_path))])
    # verify exits 0 on unknown keys and bad values too; it only warns: demand silence.
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), \
        res.stdout + res.stderr


def test_unit_sandbox_exposure_stays_low(tmp_path):
    """systemd's own sandbox score (0 = locked down, 10 = none); 3.x when written,
    most of it root, CAP_SYS_ADMIN/CAP_NET_ADMIN and the host network: all needed."""
    analyze = need("systemd-analyze", "systemd")
    res = run([analyze, "security", "--offline=yes", "--threshold=40", "--no-pager",
               str(verifiable_unit(tmp_path))])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr


def test_unit_settings():
    s = unit_settings(UNIT.read_text())
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["Restart"] == "on-failure" and one["WatchdogSec"]
    # restarts must keep the data path: nothing may clean up except the helper's decision
    assert not any("--cleanup" in v for k, vs in s.items() if k.startswith("Exec") for v in vs)
    start = one["ExecStart"].split()
    stop_post = one["ExecStopPost"].split()
    assert stop_post[0].endswith("/steerd-stop-post") and stop_post[1] == "%n"
    assert start[start.index("--config") + 1] == stop_post[2], "cleanup must read the same config"
    # measured (see the unit's comments); CAP_SYS_ADMIN only because bcc reopens
    # pinned maps by id on a restart
    caps = set(one["CapabilityBoundingSet"].split())
    assert caps == {"CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_NET_RAW", "CAP_CHOWN",
                    "CAP_SYS_ADMIN"}
    # ...and with CAP_SYS_ADMIN in the set, mount() must stay denied: a bpffs mounted
    # inside the service's private mount namespace would lose the pins on restart
    assert "@mount" in one["SystemCallFilter"] and one["SystemCallFilter"].startswith("~")
    assert one["NoNewPrivileges"] == "yes" and one["ProtectSystem"] == "strict"
    assert one["RuntimeDirectory"] == "steerd" and one["StateDirectory"] == "steerd"
    # these break steerd (see the comments in the unit): keep them out.
    # ProtectKernelTunables=yes makes /sys/fs/bpf read-only whatever ReadWritePaths= says.
    for key in ("ProtectKernelModules", "ProtectKernelTunables"):
        assert key not in s, key
    for key in ("PrivateDevices", "MemoryDenyWriteExecute", "ProtectHome", "PrivateTmp"):
        assert one[key] == "yes", key
    assert "/sys/fs/bpf" in one["ReadWritePaths"].split()
    assert {"/sys", "/proc/sys"} <= set(one["ReadOnlyPaths"].split())


def test_unit_lets_the_daemon_write_what_the_example_config_names():
    """control socket, events file and bpffs pins of the example config must be
    writable under ProtectSystem=strict."""
    from steerd.config import load_config
    s = unit_settings(UNIT.read_text())
    writable = ([f"/run/{d}" for d in s["RuntimeDirectory"]] +
                [f"/var/lib/{d}" for d in s["StateDirectory"]] +
                [p for v in s.get("ReadWritePaths", []) for p in v.split()] + ["/tmp"])
    cfg = load_config(str(DEPLOY / "steerd.example.yaml"))
    for path in (cfg.control_socket, cfg.events_file, cfg.dataplane.bpffs):
        assert path and any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), \
            (path, writable)


# --------------------------------------------------------------------------------------
# steerd-stop-post: clean up on `systemctl stop` only
# --------------------------------------------------------------------------------------
@pytest.fixture
def stop_post(tmp_path):
    """Run the helper with a fake `systemctl` (reports FAKE_JOB as the unit's job,
    or fails when FAKE_JOB=fail) and a fake steerd that records its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(
        '#!/bin/sh\n'
        'echo "$@" >> "$FAKE_LOG.systemctl"\n'
        '[ "$FAKE_JOB" = fail ] && { echo "Failed to connect to bus" >&2; exit 1; }\n'
        'for u; do :; done\n'          # last argument: the unit
        '[ -n "$FAKE_JOB" ] && echo "  4711 $u $FAKE_JOB running"\n'
        'echo "  4712 other.service start waiting"\n'
        'exit 0\n')
    (bindir / "steerd").write_text('#!/bin/sh\necho "$@" >> "$FAKE_LOG"\nexit "${FAKE_RC:-0}"\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    log = tmp_path / "calls"

    def call(job: str, mode: str | None = None, rc: int = 0, result: str = "success"):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_", "EXIT_", "STEERD_"))}
        env.update(PATH=f"{bindir}:{env['PATH']}", FAKE_JOB=job, FAKE_LOG=str(log),
                   FAKE_RC=str(rc), STEERD_BIN=str(bindir / "steerd"), SERVICE_RESULT=result,
                   EXIT_CODE="exited", EXIT_STATUS="0")
        if mode:
            env["STEERD_STOP_CLEANUP"] = mode
        if log.exists():
            log.unlink()
        res = run(["/bin/sh", str(STOP_POST), "steerd.service", "/etc/steerd/steerd.yaml"], env=env)
        calls = log.read_text().splitlines() if log.exists() else []
        return res, calls

    return call


@pytest.mark.parametrize("job, result, cleans", [
    ("stop", "success", True),        # systemctl stop, shutdown
    ("stop", "timeout", True),        # stop that needed SIGKILL: still a stop
    ("restart", "success", False),    # systemctl restart / try-restart (upgrade)
    ("", "signal", False),            # crash, kill -9: auto-restart runs without a job
    ("", "watchdog", False),
    ("", "success", False),           # `systemctl kill`: daemon exited by itself
    ("start", "exit-code", False),    # failed start: the previous programming stays
    ("fail", "success", False),       # cannot ask systemd: keep traffic flowing
])
def test_stop_post_decision(stop_post, job, result, cleans):
    res, calls = stop_post(job, result=result)
    assert res.returncode == 0, res.stderr
    assert calls == (["--cleanup --config /etc/steerd/steerd.yaml"] if cleans else [])
    assert ("removing" if cleans else "keeping the data path") in res.stderr


def test_stop_post_override_and_failure(stop_post, tmp_path):
    assert stop_post("restart", mode="always")[1] == ["--cleanup --config /etc/steerd/steerd.yaml"]
    assert stop_post("stop", mode="never")[1] == []
    # a failed cleanup fails the stop job, so `systemctl status` shows it
    res, calls = stop_post("stop", rc=2)
    assert res.returncode == 2 and calls
    # the job is looked up for the unit systemd passed (%n)
    assert "steerd.service" in (tmp_path / "calls.systemctl").read_text()


def test_shell_scripts_pass_shellcheck():
    shellcheck = need("shellcheck", "shellcheck")
    res = run([shellcheck, "--shell=sh", str(INSTALL), str(STOP_POST)])
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------------------
# install.sh into a temporary root
# --------------------------------------------------------------------------------------
def install_into(root: Path, *args: str, via_destdir: bool = False) -> subprocess.CompletedProcess:
    """Offline and fast: no dependency resolution (--no-deps), no PyPI (--no-index),
    setuptools from the system. The dependencies come from this test's own venv via
    PYTHONPATH, which only install.sh's import check and our checks below use;
    PYTHONPATH never processes .pth files, so `steerd` itself still comes from the
    installed release, not from this checkout's editable install."""
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    env.pop("STEERD_EBPF_DIR", None)
    cmd = [str(INSTALL), "--pip-args", "--no-deps --no-index --no-build-isolation", *args]
    if via_destdir:
        env["DESTDIR"] = str(root)
    else:
        cmd[1:1] = ["--root", str(root)]
    return run(cmd, env=env, timeout=300)


def installed_python(root: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    env.pop("STEERD_EBPF_DIR", None)
    return run([str(root / "opt/steerd/current/bin/python"), "-c", code, *args], env=env,
               cwd=str(root))


@pytest.mark.slow
def test_install_into_temp_root(tmp_path):
    if not Path("/usr/bin/python3").exists():
        pytest.skip("install.sh builds its venv with Debian's /usr/bin/python3")
    root = tmp_path / "root"
    tree_had_build = (ROOT / "build").exists()

    res = install_into(root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "staged into" in res.stdout

    # the release and the `current` switch
    current = root / "opt/steerd/current"
    assert current.is_symlink() and os.readlink(current).startswith("releases/")
    release = os.readlink(current)
    bindir = current / "bin"
    for script in ("steerd", "steerctl"):
        first = (bindir / script).read_text().splitlines()[0]
        # the final path, not the staging one
        assert re.fullmatch(rf"#!/opt/steerd/{release}/bin/python3?", first), first
        assert os.readlink(root / "usr/local/bin" / script) == f"/opt/steerd/current/bin/{script}"
    assert not any(str(root) in p.read_text(errors="replace") for p in bindir.iterdir()
                   if p.is_file() and not p.is_symlink())
    assert "include-system-site-packages = true" in (current / "pyvenv.cfg").read_text()

    # the C sources came with the wheel, inside the release, where steerd finds them
    assert not (root / "usr/share/steerd/ebpf").exists()
    res = installed_python(root, "import steerd; from steerd.dataplane.sources import ebpf_dir;"
                                 "print(steerd.__file__); print(ebpf_dir())")
    assert res.returncode == 0, res.stderr
    module, ebpf = map(Path, res.stdout.split())
    assert str(module).startswith(str(root / "opt/steerd") + "/"), module   # not this checkout
    assert ebpf == module.parent / "ebpf"
    shipped = {f.name for f in (ROOT / "ebpf").iterdir() if not f.name.endswith("_test.c")}
    assert "steer.c" in shipped and {f.name for f in ebpf.iterdir()} == shipped
    for name in shipped:
        assert (ebpf / name).read_bytes() == (ROOT / "ebpf" / name).read_bytes(), name
    assert stat.S_IMODE((root / "etc/steerd").stat().st_mode) == 0o755

    # unit, helper, configs, docs
    unit = root / "usr/local/lib/systemd/system/steerd.service"
    assert unit.read_text() == UNIT.read_text()
    helper = root / "usr/local/lib/steerd/steerd-stop-post"
    assert helper.read_bytes() == STOP_POST.read_bytes() and os.access(helper, os.X_OK)
    s = unit_settings(unit.read_text())
    for key in ("ExecStart", "ExecStopPost"):
        exe = s[key][0].split()[0]
        target = root / exe.lstrip("/")
        assert target.exists() and os.access(target, os.X_OK), f"{key}: {exe} not installed"
    etc = root / "etc/steerd"
    assert (etc / "steerd.yaml").read_text() == (DEPLOY / "steerd.example.yaml").read_text()
    assert (etc / "rules.yaml").read_text() == (DEPLOY / "rules.example.yaml").read_text()
    for f in ("README.md", "prometheus/alerts.yml", "grafana/steerd.json", "examples/rules.yaml"):
        assert (root / "usr/share/steerd" / f).is_file(), f

    # the installed code accepts the installed example config and rules
    res = installed_python(root, "import sys; from steerd.config import load_config;"
                                 "from steerd.rules import load_rules;"
                                 "cfg = load_config(sys.argv[1]); load_rules(sys.argv[2], cfg.wans)",
                           str(etc / "steerd.yaml"), str(etc / "rules.yaml"))
    assert res.returncode == 0, res.stderr

    # upgrade (DESTDIR spelling): config kept (and the mode the operator gave
    # /etc/steerd), new release current, previous kept
    (etc / "steerd.yaml").write_text((etc / "steerd.yaml").read_text() + "# edited by the operator\n")
    etc.chmod(0o700)
    res = install_into(root, via_destdir=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "keeping existing /etc/steerd/steerd.yaml" in res.stdout
    assert (etc / "steerd.yaml").read_text().endswith("# edited by the operator\n")
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700
    second = os.readlink(current)
    assert second != release
    releases = root / "opt/steerd/releases"
    assert {p.name for p in releases.iterdir()} == {release.split("/")[1], second.split("/")[1]}

    # the first release is still running (a daemon after `--no-restart`): a third
    # install keeps it; once it exits, a fourth drops it and the second
    first_py = root / "opt/steerd" / release / "bin/python"
    running = subprocess.Popen([str(first_py), "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    try:
        res = install_into(root)
        assert res.returncode == 0, res.stdout + res.stderr
        third = os.readlink(current)
        assert f"keeping /opt/steerd/{release}: still in use" in res.stdout
        assert {p.name for p in releases.iterdir()} == \
            {r.split("/")[1] for r in (release, second, third)}
    finally:
        running.communicate(timeout=10)
    res = install_into(root)
    assert res.returncode == 0, res.stdout + res.stderr
    fourth = os.readlink(current)
    assert {p.name for p in releases.iterdir()} == {third.split("/")[1], fourth.split("/")[1]}

    # pip built from a copy: the checkout is not littered with build/ or egg-info
    assert tree_had_build or not (ROOT / "build").exists()


def test_install_rejects_bad_arguments(tmp_path):
    assert run([str(INSTALL), "--root", "relative/dir"]).returncode != 0
    res = run([str(INSTALL), "--frobnicate"])
    assert res.returncode != 0 and "unknown option" in res.stderr
    res = run([str(INSTALL), "--help"])
    assert res.returncode == 0 and "--root DIR" in res.stdout
