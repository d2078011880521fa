"""steerctl: the operator's command line. Every read command takes --json."""
from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from secrets import token_hex as secrets_token
from typing import Any, Iterator

import click

from .yamlsrc import ValidationError, read_text

DEFAULT_SOCKET = "/run/steerd/steerd.sock"


class ControlError(click.ClickException):
    exit_code = 1


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except PermissionError:
        raise ControlError(f"no access to {path}: steerctl needs root, or membership of the "
                           "group the config's control_group names (read commands only)")
    except OSError as exc:
        raise ControlError(f"cannot reach steerd at {path}: {exc.strerror} (is it running?)")
    return s


def request_lines(path: str, req: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with _connect(path) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        with s.makefile("rb") as f:
            for line in f:
                yield json.loads(line)


def request(path: str, req: dict[str, Any]) -> dict[str, Any]:
    for reply in request_lines(path, req):
        if not reply.get("ok"):
            raise ControlError(reply.get("text") or reply.get("error", "request failed"))
        return reply
    raise ControlError("steerd closed the connection without a reply")


def _fmt(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def render_sites(st: dict[str, Any]) -> str:
    """Hub mode: one line per site, sites needing attention first (on their
    secondaries, or with a tunnel down), so 1,000 sites stay readable."""
    sites = st["sites"]
    total = sum(len(s["tunnels"]) for s in sites)
    up = sum(s["up"] for s in sites)
    failed_over = sum(s["active_ha_role"] != "primary" for s in sites)
    head = (f"{len(sites)} sites: {len(sites) - failed_over} on primary, {failed_over} on secondary"
            f"   tunnels: {up}/{total} up   rules: {st.get('rules', 0)}")

    def attention(s: dict[str, Any]) -> tuple:
        return (s["active_ha_role"] == "primary", s["up"] == len(s["tunnels"]), s["site"])
    rows = [[s["site"], s["active_ha_role"], f"{s['up']}/{len(s['tunnels'])}",
             str(s["primaries_up"]), str(s["degraded"])] for s in sorted(sites, key=attention)]
    return (head + "\n" + table(["SITE", "ACTIVE", "UP", "PRIMARIES UP", "DEGRADED"], rows,
                                right={2, 3, 4})
            + "\n(steerctl status --site NAME shows a site's tunnels)")


def render_status(st: dict[str, Any], bars: bool = False) -> str:
    if "site" not in st:
        return render_sites(st)
    head = f"site {st['site']}   active HA role: {st['active_ha_role']}   rules: {st.get('rules', 0)}"
    headers = ["TUNNEL", "ROLE", "WAN", "IFACE", "STATE", "RTT", "JITTER", "LOSS", "MOS", "WEIGHT",
               "SHARE", "FLOWS", "TX PKTS", "TX BYTES"]
    rows = []
    for t in st["tunnels"]:
        share = f"{t['share'] * 100:5.1f}%"
        if bars:
            share += " " + "#" * round(t["share"] * 20)
        rows.append([t["name"], t["ha_role"], t["wan"], t["interface"],
                     "drained" if t.get("drained") else t["state"],
                     _fmt(t["rtt_ms"], " ms", 2), _fmt(t["jitter_ms"], " ms", 2),
                     _fmt(t["loss_pct"], " %"), _fmt(t.get("mos"), "", 2),
                     f"{t['weight'] * 100:.1f}%", share,
                     str(t.get("flows", "-")), str(t["tx_packets"]), _bytes(t["tx_bytes"])])
    return head + "\n" + table(headers, rows, right={5, 6, 7, 8, 9, 11, 12, 13})


@click.group()
@click.option("--socket", "sock", default=DEFAULT_SOCKET, show_default=True,
              envvar="STEERCTL_SOCKET", help="steerd control socket")
@click.pass_context
def main(ctx: click.Context, sock: str) -> None:
    """Operate steerd, the multi-WAN downstream steering daemon."""
    ctx.obj = sock


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--watch", is_flag=True, help="refresh in place every second")
@click.option("--site", default=None, help="hub mode: only this site (default: a per-site summary)")
@click.pass_obj
def status(sock: str, as_json: bool, watch: bool, site: str | None) -> None:
    """Tunnels, their health, weights and traffic (hub mode: a line per site)."""
    req: dict[str, Any] = {"cmd": "status"}
    if site is not None:
        req["site"] = site
    while True:
        st = request(sock, req)["status"]
        if as_json:
            click.echo(json.dumps(st, indent=2))
        elif watch:
            click.echo("\x1b[H\x1b[2J" + render_status(st, bars=True), nl=True)
        else:
            click.echo(render_status(st))
        if not watch:
            return
        time.sleep(1)


@main.command()
@click.option("--follow", "-f", is_flag=True, help="keep printing new events")
@click.option("--json", "as_json", is_flag=True, help="JSON lines")
@click.option("--since", type=float, default=None, help="seconds back (e.g. 600) to start from")
@click.pass_obj
def events(sock: str, follow: bool, as_json: bool, since: float | None) -> None:
    """Link, HA, rebalance and configuration events."""
    start = time.time() - since if since else 0.0

    def show(e: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(e))
        else:
            extra = {k: v for k, v in e.items() if k not in ("ts", "type", "tunnel", "reason")}
            more = ("  " + json.dumps(extra)) if extra else ""
            click.echo(f"{e['ts']}  {e['type']:<15} {e.get('tunnel') or '-':<10} {e['reason']}{more}")
    if follow:
        try:
            for e in request_lines(sock, {"cmd": "events", "follow": True, "since": start or time.time()}):
                show(e)
        except KeyboardInterrupt:
            return
        return
    for e in request(sock, {"cmd": "events", "since": start})["events"]:
        show(e)


@main.group()
def rules() -> None:
    """Network rules: pin traffic to a WAN role."""


@rules.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="validate and show the diff, change nothing")
@click.pass_obj
def rules_apply(sock: str, path: str, dry_run: bool) -> None:
    """Validate FILE, show the diff, apply atomically (exit 2 on bad input)."""
    try:
        text = read_text(path, "a readable rules file")
    except ValidationError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    for reply in request_lines(sock, {"cmd": "rules_apply", "text": text, "path": path,
                                      "dry_run": dry_run}):
        if not reply.get("ok"):
            click.echo(reply.get("text") or reply.get("error"), err=True)
            sys.exit(2)
        click.echo(reply["diff_text"])
        if dry_run:
            click.echo("dry run: nothing changed")
        else:
            click.echo(f"applied: generation {reply['generation']} in {reply['apply_seconds'] * 1000:.0f} ms")
        return


@rules.command("list")
@click.option("--site", default=None, help="hub mode: where the rules send one site's flows")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rules_list(sock: str, site: str | None, as_json: bool) -> None:
    """Rules in priority order with their hit counters, and where each sends its
    flows now and why (hub mode: summed up over the sites, or one site's with --site)."""
    rs = request(sock, {"cmd": "rules_list", **({"site": site} if site else {})})["rules"]
    if as_json:
        click.echo(json.dumps(rs, indent=2))
        return
    click.echo(render_rules(rs))


def render_rules(rs: list[dict[str, Any]]) -> str:
    """One line per rule; with several sites, NOW and WHY say where each group
    of sites sends the rule's flows (largest first, a line each, a few site
    names for the smaller groups)."""
    def wan(r: dict[str, Any]) -> str:
        w = r.get("wan", "-")
        text = ",".join(w) if isinstance(w, list) else str(w)
        sla = r.get("sla")
        if sla is not None:
            text += " sla " + (sla if isinstance(sla, str) else
                               ",".join(f"{k}={v:g}" for k, v in sla.items() if isinstance(v, float)))
        dup = r.get("duplicate")
        if dup:
            text += " duplicate" + (f" when loss > {dup['when_loss_above']}"
                                    if isinstance(dup, dict) else "")
        return text

    def now_lines(r: dict[str, Any]) -> list[tuple[str, str]]:
        sites, groups = r.get("sites", []), r.get("groups", [])
        if len(sites) <= 1:
            return [(str(r.get("now") or "-"), r.get("why", ""))]
        out = []
        for k, g in enumerate(groups):
            n = len(g["sites"])
            where = f"{g['now'] or '-'} at {n}/{len(sites)} sites"
            if k:     # the exceptions: name a few of their sites
                where += ": " + ", ".join(g["sites"][:3]) + (", ..." if n > 3 else "")
            out.append((where, g["why"]))
        return out
    rows = []
    for i, r in enumerate(rs):
        lines = now_lines(r)
        rows.append([str(i + 1), r["name"], wan(r), str(r.get("fallback", "-")),
                     r.get("summary", ""), str(r["hits"]), *lines[0]])
        rows += [[""] * 6 + list(extra) for extra in lines[1:]]
    return table(["#", "RULE", "WAN", "FALLBACK", "MATCH", "HITS", "NOW", "WHY"], rows,
                 right={0, 5})


@main.group()
def config() -> None:
    """Site configuration."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def config_check(path: str, as_json: bool) -> None:
    """Validate PATH (exit 0 valid, 2 invalid) without touching the daemon."""
    from .rules import Limits
    from .staging import stage_config
    try:
        # the daemon's own checks, the rule compiler's capacity included: "valid" = loadable
        cfg = stage_config(path, None, Limits()).cfg
    except ValidationError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "problems": [p.as_dict() for p in exc.problems]}))
        else:
            click.echo(f"{path}: {len(exc.problems)} problem(s)\n{exc}", err=True)
        sys.exit(2)
    if as_json:
        doc = {"valid": True, "site": cfg.site, "tunnels": len(cfg.tunnels)}
        if cfg.hub:
            doc["sites"] = [s.name for s in cfg.sites]
        click.echo(json.dumps(doc))
    elif cfg.hub:
        click.echo(f"{path}: valid ({len(cfg.sites)} sites, {len(cfg.tunnels)} tunnels)")
    else:
        click.echo(f"{path}: valid (site {cfg.site}, {len(cfg.tunnels)} tunnels)")


@main.group()
def ipsec() -> None:
    """IPsec (strongSwan) configuration."""


@ipsec.command("render")
@click.option("--config", "config_path", default="/etc/steerd/steerd.yaml", show_default=True)
@click.option("--secrets", default=None, help="pre-shared keys file (default: ipsec.secrets_file)")
@click.option("--show-secrets", is_flag=True,
              help="include the keys: into --output FILE or a pipe, never onto a terminal "
                   "or into a file others can read")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="write FILE (mode 0600, replaced whole) instead of stdout")
def ipsec_render(config_path: str, secrets: str | None, show_secrets: bool,
                 output: str | None) -> None:
    """Print a swanctl.conf for this gateway from the config's ipsec section."""
    from .config import load_config
    from .ipsec import render
    if show_secrets and output is None and (why := _unsafe_for_secrets(sys.stdout)):
        click.echo(f"--show-secrets: not onto {why}; write the keys with --output FILE "
                   "(mode 0600) or pipe them into a program", err=True)
        sys.exit(2)
    try:
        cfg = load_config(config_path)
        text = render(cfg.ipsec, cfg, secrets, show_secrets)
    except ValidationError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        _write_private(output, text)
    except OSError as exc:
        raise click.ClickException(f"{output}: {exc.strerror}")
    click.echo(f"{output}: written (mode 0600)", err=True)


def _unsafe_for_secrets(stream: Any) -> str | None:
    """What *stream* is when keys must not go there: a terminal (on screen, in its
    scrollback and any session recording) or a file others may read (a shell's
    `> file` creates it with the umask's mode, often 0644); None for a pipe or a
    file only its owner reads."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return "an output that cannot be checked"
    if os.isatty(fd):
        return "a terminal"
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        return f"a file of mode {stat.S_IMODE(st.st_mode):04o} that others can read"
    return None


def _write_private(path: str, text: str) -> None:
    """*path* with *text*, readable by its owner only and whole or not at all: a new
    file beside it, created with mode 0600 (O_EXCL: never someone else's, never
    readable by others even briefly), then renamed over *path*."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{os.getpid()}.{secrets_token()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)    # the umask may have taken the owner's bits
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@main.group()
def tunnel() -> None:
    """Take a tunnel out of service for maintenance, and back."""


@tunnel.command("drain")
@click.argument("name")
@click.pass_obj
def tunnel_drain(sock: str, name: str) -> None:
    """Move NAME's flows to the other tunnels as on a link down (reason
    "drained"); it stays drained across restarts until undrained."""
    request(sock, {"cmd": "tunnel_drain", "tunnel": name})
    click.echo(f"{name}: drained (steerctl tunnel undrain {name} puts it back)")


@tunnel.command("undrain")
@click.argument("name")
@click.pass_obj
def tunnel_undrain(sock: str, name: str) -> None:
    """Put NAME back in service (as on a link up, if probing says it is up)."""
    request(sock, {"cmd": "tunnel_undrain", "tunnel": name})
    click.echo(f"{name}: back in service")


@main.command()
@click.pass_obj
def reload(sock: str) -> None:
    """Re-read config and rules; a bad file changes nothing."""
    reply = next(request_lines(sock, {"cmd": "reload"}), {"ok": False, "error": "no reply"})
    if not reply.get("ok"):
        click.echo(reply.get("text") or reply.get("error"), err=True)
        sys.exit(2)
    click.echo(reply.get("summary", "reloaded"))
