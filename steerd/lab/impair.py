"""Lab impairment without netem: silent blackholes and random loss with
nftables in the site namespace (no carrier change: steerd must notice by
probing), and probe delay/jitter from the reflector (steerd.lab.reflector).

    python -m steerd.lab impair pri-wan1 --loss 10% --delay 30ms --jitter 5ms
    python -m steerd.lab impair pri-wan1 --blackhole
    python -m steerd.lab impair pri-wan1 --clear
"""
from __future__ import annotations

import time

from .netns import ns_sh
from .topology import Lab

TABLE = "steerd_lab_impair"


def _ensure_table(lab: Lab) -> None:
    # raw-priority prerouting: drops happen before anything else sees the packet;
    # postrouting: what the site sends up a tunnel (a dead tunnel carries nothing either way)
    ns_sh(lab.site, "nft", "-f", "-", input=(
        f"table inet {TABLE} {{\n"
        f"  chain pre {{ type filter hook prerouting priority -300; policy accept; }}\n"
        f"  chain post {{ type filter hook postrouting priority -300; policy accept; }}\n"
        f"}}\n"))


def _delete_rules(lab: Lab, ifname: str) -> None:
    for chain, match in (("pre", f'iifname "{ifname}"'), ("post", f'oifname "{ifname}"')):
        out = ns_sh(lab.site, "nft", "-a", "list", "chain", "inet", TABLE, chain)
        for line in out.splitlines():
            if match in line and "# handle" in line:
                handle = line.rsplit("# handle", 1)[1].strip()
                ns_sh(lab.site, "nft", "delete", "rule", "inet", TABLE, chain, "handle", handle)


def set_drop(lab: Lab, tunnel: str, loss_pct: float = 0.0, blackhole: bool = False,
             both_ways: bool = False) -> float:
    """Replace the tunnel's drop rule: everything (blackhole) or loss_pct % at random,
    of what the site receives through it; ``both_ways``: of what it sends up it too.
    Returns time.monotonic() just before the one command that installs the rules
    (benchmarks time a failover from it)."""
    t = lab.tunnel(tunnel)
    _ensure_table(lab)
    _delete_rules(lab, t.site_if)
    if blackhole:
        what = "counter drop"
    elif loss_pct > 0:
        what = f"numgen random mod 10000 < {int(loss_pct * 100)} counter drop"
    else:
        return time.monotonic()
    rules = f'add rule inet {TABLE} pre iifname "{t.site_if}" {what}\n'
    if both_ways:
        rules += f'add rule inet {TABLE} post oifname "{t.site_if}" {what}\n'
    t0 = time.monotonic()
    ns_sh(lab.site, "nft", "-f", "-", input=rules)   # one transaction: both ways at once
    return t0


def _parse(value: str | None, unit: str) -> float:
    if value is None:
        return 0.0
    v = value.strip().lower().removesuffix(unit)
    return float(v)


def impair_from_args(lab: Lab, a) -> str:
    if a.clear:
        set_drop(lab, a.tunnel)
        set_delay(lab, a.tunnel, 0.0, 0.0)
        return f"{a.tunnel}: impairment cleared"
    loss = _parse(a.loss, "%")
    set_drop(lab, a.tunnel, loss, a.blackhole)
    if a.delay or a.jitter:
        set_delay(lab, a.tunnel, _parse(a.delay, "ms"), _parse(a.jitter, "ms"))
    what = "blackhole" if a.blackhole else f"loss {loss:g}%"
    return f"{a.tunnel}: {what}, probe delay {a.delay or '0ms'} jitter {a.jitter or '0ms'}"


def set_delay(lab: Lab, tunnel: str, delay_ms: float, jitter_ms: float) -> None:
    """Probe delay/jitter through the site's reflector (started on demand)."""
    from .reflect import ensure_reflector
    ensure_reflector(lab).set(lab.tunnel(tunnel).site_if, delay_ms, jitter_ms)
