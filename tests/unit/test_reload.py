"""Reload robustness (issue 6): 1,000 random mutations of a valid config, each
either applied cleanly or rejected with the running state unchanged; the
daemon never dies. Runs the real daemon loop on the fake data path."""
from __future__ import annotations

import copy
import json
import random

import yaml

from steerd.cli import request, request_lines

from test_control import daemon  # noqa: F401  (fixture)

VOLATILE = ("uptime_s", "config_generation")


def mutate(cfg: dict, rng: random.Random) -> dict:
    cfg = copy.deepcopy(cfg)
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append(path + [k])
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append(path + [i])
                walk(v, path + [i])
    walk(cfg, [])
    path = rng.choice(paths)
    parent = cfg
    for p in path[:-1]:
        parent = parent[p]
    key = path[-1]
    choice = rng.randrange(9)
    if choice == 0 and isinstance(parent, dict):
        del parent[key]
    elif choice == 1 and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    elif choice == 2 and isinstance(parent, list) and len(parent) > 1:
        parent.pop(key)
    else:
        parent[key] = rng.choice([
            -1, 0, 0.5, 3, 100, 1e9, "", "x", "1s", "100ms", "10.0.0.0/8", "10.0.0.1/8", "::1",
            None, True, [], {}, ["a"], {"k": 1}, "primary", "secondary", "wan1", "wan9", "tun-p1",
            "eth0", "3%", "200%"])
    return cfg


def snapshot(sock: str) -> dict:
    st = request(sock, {"cmd": "status"})["status"]
    for k in VOLATILE:
        st.pop(k, None)
    for t in st["tunnels"]:
        t.pop("tx_packets"), t.pop("tx_bytes")
    return st


def test_a_thousand_random_reloads(daemon, tmp_path):  # noqa: F811
    sock = daemon.cfg.control_socket
    base = yaml.safe_load(open(daemon.cfg.path))
    rng = random.Random(20261127)
    applied = rejected = 0
    for i in range(1000):
        before = snapshot(sock)
        errors_before = daemon.config_errors
        new = mutate(base, rng)
        new["control_socket"] = sock          # keep talking to the same daemon
        new["metrics"] = base["metrics"]
        with open(daemon.cfg.path, "w") as f:
            yaml.safe_dump(new, f, sort_keys=False)
        reply = next(request_lines(sock, {"cmd": "reload"}))
        after = snapshot(sock)
        if reply["ok"]:
            applied += 1
            assert [t["name"] for t in after["tunnels"]] == [t["name"] for t in new["tunnels"]]
            assert abs(sum(t["share"] for t in after["tunnels"]) - 1.0) < 1e-3
        else:
            rejected += 1
            assert after == before, f"mutation {i} was rejected but changed the state"
            assert daemon.config_errors == errors_before + 1
            assert reply["problems"] and all("line" in p for p in reply["problems"])
        # back to the valid base for the next mutation
        with open(daemon.cfg.path, "w") as f:
            yaml.safe_dump(base, f, sort_keys=False)
        assert next(request_lines(sock, {"cmd": "reload"}))["ok"]
    assert applied > 50 and rejected > 300, (applied, rejected)
    assert json.dumps(snapshot(sock))  # still alive and answering
