"""The real-kernel lab: strongSwan IKEv2 tunnels on XFRM interfaces over netem WAN links.

    core (traffic source)      pop (steerd)                                  site
    up0 10.99.0.2 ------- core0 10.99.0.1
                               u-p1 100.64.1.10 ==netem== u-p1 100.64.1.20   owns 10.20.0.0/16
                               ipsec1 169.254.11.1  ~~ESP, if_id 1~~ ipsec1 169.254.11.2
                               ... u-p2, u-p3 (primary), u-s1..u-s3 (secondary), ipsec2..6

One charon per side (its own strongswan.conf, /run and vici socket); the pop's
swanctl.conf is rendered by ``steerd.ipsec.render`` from the steerd site config
(responder-only, FQDN identities, PSKs from a 0600 secrets file); the site
initiates. Used three ways:

* inside the VM by tests/vm (namespaces ``core``, ``pop``, ``site``);
* by the Vagrant lab, one side per machine (``python3 tests/vm/vmlab.py side pop|site``);
* by hand in a guest: ``python3 tests/vm/vmlab.py up`` / ``down``.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:  # run as a script (Vagrant, by hand): import steerd from the tree
    sys.path.insert(0, REPO)

CHARON = "/usr/lib/ipsec/charon"
# Not under /run: each charon gets a private /run (its pid file is /var/run/charon.pid)
RUN_DIR = "/var/tmp/steerd-vm"
SITE_RANGE = "10.20.0.0/16"
UNSTEERED = "10.30.0.0/16"
CORE4, POP4 = "10.99.0.2", "10.99.0.1"
POP_ID = "pop.steerd.test"
MODULES = ("xfrm_interface", "esp4", "xfrm_user", "sch_netem", "cls_bpf", "sch_ingress", "veth")


@dataclass(frozen=True)
class Link:
    """One WAN link and the IKEv2 tunnel over it (number 1..6: p1..p3, s1..s3)."""

    role: str       # primary | secondary
    index: int      # 1..3 within the role
    number: int     # 1..6 overall = if_id (the second site's links: 7, 8)
    tag: str = ""   # "b-" for the second site's links (hub mode)

    @property
    def name(self) -> str:           # steerd tunnel name and swanctl connection name
        return f"{self.tag}{'pri' if self.role == 'primary' else 'sec'}-wan{self.index}"

    @property
    def wan(self) -> str:
        return f"wan{self.index}"

    @property
    def underlay(self) -> str:       # the veth on both sides (same name, different namespaces)
        return f"u-{self.tag}{self.role[0]}{self.index}"

    @property
    def xfrm(self) -> str:
        return f"ipsec{self.number}"

    @property
    def if_id(self) -> int:
        return self.number

    # .10 and .20, not .1: a libvirt network (Vagrant lab) gives .1 to the host
    @property
    def pop_wan(self) -> str:
        return f"100.64.{self.number}.10"

    @property
    def site_wan(self) -> str:       # the tunnel's public_ip in the steerd config
        return f"100.64.{self.number}.20"

    @property
    def pop_inner(self) -> str:
        return f"169.254.{10 + self.number}.1"

    @property
    def site_inner(self) -> str:     # the tunnel's probe_target
        return f"169.254.{10 + self.number}.2"

    @property
    def site_id(self) -> str:
        return f"{self.tag}{self.wan}-{self.role}.site.steerd.test"

    # steerd.lab.runner.send_up's names: the site's end of the tunnel, the gateway's address
    @property
    def site_if(self) -> str:
        return self.xfrm

    @property
    def gw_addr(self) -> str:
        return self.pop_inner


LINKS = tuple(Link(r, i, i + (0 if r == "primary" else 3)) for r in ("primary", "secondary")
              for i in (1, 2, 3))
BANDWIDTHS = {1: 100, 2: 50, 3: 25}
# one-way delay (ms), jitter (ms), loss (%) on each side's egress: primaries give
# 20/40/80 ms round trips, secondaries 30 ms with some jitter
DEFAULT_NETEM = {1: (10.0, 0.0, 0.0), 2: (20.0, 0.0, 0.0), 3: (40.0, 0.0, 0.0),
                 4: (15.0, 1.0, 0.0), 5: (15.0, 1.0, 0.0), 6: (15.0, 1.0, 0.0),
                 7: (10.0, 0.0, 0.0), 8: (10.0, 0.0, 0.0)}
# hub mode (issue 13): a second site with two primary tunnels of its own, weighted
# the other way round from the first site's (30:90 against 100:50:25)
SITE_B = "branch-b"
SITE_B_RANGE = "10.21.0.0/16"
SITE_B_LINKS = (Link("primary", 1, 7, "b-"), Link("primary", 2, 8, "b-"))
SITE_B_BANDWIDTHS = {1: 30, 2: 90}


def link(name: str) -> Link:
    for lk in LINKS + SITE_B_LINKS:
        if name in (lk.name, lk.underlay, lk.xfrm):
            return lk
    raise KeyError(name)


# ------------------------------------------------------------------ commands

def sh(*cmd: str, check: bool = True, timeout: float = 60, env: dict | None = None) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: rc {res.returncode}: {(res.stderr or res.stdout).strip()}")
    return res.stdout


@dataclass
class Place:
    """Where one side's commands run: a network namespace, or this machine (ns=None)."""

    ns: str | None

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd] if self.ns else list(cmd)

    def sh(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        return sh(*self.argv(*cmd), check=check, timeout=timeout)

    def popen(self, cmd: Sequence[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*cmd), **kw)

    def sysctl(self, *assignments: str) -> None:
        self.sh("sysctl", "-qw", *assignments)

    def batch(self, tool: str, lines: Sequence[str]) -> None:
        """Many `ip` or `tc` commands in one process (forks are slow under emulation)."""
        if not lines:
            return
        argv = [tool, *(["-n", self.ns] if self.ns else []), "-batch", "-"]
        res = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True,
                             timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {(res.stderr or res.stdout).strip()}")


def load_modules() -> None:
    for m in MODULES:
        sh("modprobe", m, check=False)


def module_present(name: str) -> bool:
    """Loaded, or built into the running kernel (built-ins may have no /sys/module entry)."""
    if os.path.isdir(f"/sys/module/{name}"):
        return True
    try:
        with open(f"/lib/modules/{os.uname().release}/modules.builtin", encoding="utf-8") as f:
            return any(os.path.basename(line.strip()) == f"{name}.ko" for line in f)
    except OSError:
        return False


def missing_support() -> list[str]:
    """What this machine lacks for the lab, each item naming the module or tool
    (empty: everything is there). Loads the modules first."""
    if os.geteuid() != 0:
        return ["root (namespaces, XFRM, eBPF)"]
    missing = [f"tool {t} (iproute2)" for t in ("ip", "tc") if not shutil.which(t)]
    if not os.path.exists(CHARON):
        missing.append(f"tool {CHARON} (strongswan-charon)")
    if not shutil.which("swanctl"):
        missing.append("tool swanctl (strongswan-swanctl)")
    if missing:
        return missing
    load_modules()
    missing = [f"kernel module {m}" for m in MODULES if not module_present(m)]
    if missing:
        return missing
    # the modules are there: do they work? (an XFRM interface and a netem qdisc)
    ns = f"xfrmcheck{os.getpid()}"
    try:
        sh("ip", "netns", "add", ns)
        p = Place(ns)
        for what, cmd in (("XFRM interface (xfrm_interface)", ("ip", "link", "add", "x0", "type", "xfrm", "if_id", "7")),
                          ("loopback", ("ip", "link", "set", "lo", "up")),
                          ("netem qdisc (sch_netem)", ("tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"))):
            try:
                p.sh(*cmd)
            except RuntimeError as exc:
                missing.append(f"{what} in kernel {os.uname().release}: {exc}")
    finally:
        sh("ip", "netns", "del", ns, check=False)
    return missing


def xfrm_supported() -> tuple[bool, str]:
    """Can this machine run the lab? (False, what is missing) if not."""
    missing = missing_support()
    return (False, "missing: " + "; ".join(missing)) if missing else (True, "ok")


# ------------------------------------------------------------------ netem

def netem_line(dev: str, delay_ms: float = 0.0, jitter_ms: float = 0.0, loss_pct: float = 0.0) -> str:
    """The `tc` command (without `tc`) that sets *dev*'s egress impairment."""
    args = ["qdisc", "replace", "dev", dev, "root", "netem", "limit", "10000"]
    if delay_ms or jitter_ms:
        args += ["delay", f"{delay_ms}ms"]
        if jitter_ms:
            args += [f"{jitter_ms}ms"]
    if loss_pct:
        args += ["loss", f"{loss_pct}%"]
    return " ".join(args)


def netem(place: Place, dev: str, delay_ms: float = 0.0, jitter_ms: float = 0.0,
          loss_pct: float = 0.0) -> None:
    """Set the egress impairment of *dev* (replaces what was there)."""
    place.sh("tc", *netem_line(dev, delay_ms, jitter_ms, loss_pct).split())


# ------------------------------------------------------------------ strongSwan

STRONGSWAN_CONF = """\
# strongswan.conf of the {role} side of the steerd lab (one charon per side)
charon {{
    load_modular = yes
    plugins {{
        include /etc/strongswan.d/charon/*.conf
        vici {{
            socket = unix://{vici}
        }}
    }}
    # XFRM interfaces route; charon installs no routes or virtual IPs of its own
    install_routes = no
    install_virtual_ip = no
    retransmit_timeout = 1.0
    retransmit_base = 1.4
    retransmit_tries = 8
    filelog {{
        lab {{
            path = {log}
            time_format = %T
            default = 1
            flush_line = yes
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
    }}
}}
"""


@dataclass
class Charon:
    """One charon with its own strongswan.conf, /run (pid file) and vici socket.

    charon's pid file lives in its compile-time piddir (/run): each charon runs in a
    private mount namespace (`ip netns exec` makes one; on a plain machine `unshare
    -m`) where the side's own directory is bind-mounted on /run."""

    place: Place
    role: str
    dir: str
    proc: subprocess.Popen | None = None

    @property
    def vici(self) -> str:
        return os.path.join(self.dir, "charon.vici")

    @property
    def uri(self) -> str:
        return f"unix://{self.vici}"

    @property
    def swanctl_conf(self) -> str:
        return os.path.join(self.dir, "swanctl", "swanctl.conf")

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "charon.log")

    def write(self, swanctl_conf: str) -> None:
        os.makedirs(os.path.join(self.dir, "run"), exist_ok=True)
        os.makedirs(os.path.dirname(self.swanctl_conf), exist_ok=True)
        with open(os.path.join(self.dir, "strongswan.conf"), "w", encoding="utf-8") as f:
            f.write(STRONGSWAN_CONF.format(role=self.role, vici=self.vici, log=self.log))
        fd = os.open(self.swanctl_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(swanctl_conf)

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ, STRONGSWAN_CONF=os.path.join(self.dir, "strongswan.conf"))
        run = os.path.join(self.dir, "run")
        script = f"mount --bind {run} /run && exec {CHARON}"
        cmd = ["sh", "-c", script] if self.place.ns else ["unshare", "-m", "--propagation", "private",
                                                            "sh", "-c", script]
        self.proc = self.place.popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon ({self.role}) exited with {self.proc.returncode}:\n{self.tail()}")
            if os.path.exists(self.vici):
                try:
                    self.swanctl("--stats")
                    return
                except RuntimeError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"charon ({self.role}) not ready after {timeout}s:\n{self.tail()}")

    def swanctl(self, *args: str, timeout: float = 60) -> str:
        return self.place.sh("swanctl", *args, "--uri", self.uri, timeout=timeout)

    def load(self) -> str:
        return self.swanctl("--load-all", "--file", self.swanctl_conf)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 40) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no charon log)"


def site_swanctl_conf(links: Sequence[Link], psk: dict[str, str], start: bool = True) -> str:
    """The site's swanctl.conf: initiator, one connection per link, FQDN identities,
    route-based (0.0.0.0/0 both ways, narrowed by the pop), if_id per link."""
    out = ["# swanctl.conf of the site side of the steerd lab (initiator)", "connections {"]
    for lk in links:
        out += [
            f"    {lk.name} {{",
            "        version = 2",
            f"        local_addrs = {lk.site_wan}",
            f"        remote_addrs = {lk.pop_wan}",
            "        proposals = default",
            "        dpd_delay = 0",
            "        keyingtries = 0",
            f"        if_id_in = {lk.if_id}",
            f"        if_id_out = {lk.if_id}",
            f"        local {{\n            auth = psk\n            id = \"fqdn:{lk.site_id}\"\n        }}",
            f"        remote {{\n            auth = psk\n            id = \"fqdn:{POP_ID}\"\n        }}",
            "        children {",
            f"            {lk.name} {{",
            "                local_ts = 0.0.0.0/0",
            "                remote_ts = 0.0.0.0/0",
            "                esp_proposals = default",
            # ESP in software under emulation completes out of order (async crypto):
            # a wider anti-replay window than the default 32 keeps those packets
            "                replay_window = 1024",
            f"                start_action = {'start' if start else 'none'}",
            "            }",
            "        }",
            "    }",
        ]
    out.append("}")
    out.append("secrets {")
    for lk in links:
        secret = base64.b64encode(psk[lk.name].encode()).decode()
        out += [f"    ike-{lk.name} {{", f"        id-1 = \"fqdn:{lk.site_id}\"",
                f"        id-2 = \"fqdn:{POP_ID}\"", f"        secret = 0s{secret}", "    }"]
    out.append("}")
    return "\n".join(out) + "\n"


def lab_psks(links: Sequence[Link] = LINKS) -> dict[str, str]:
    """Deterministic lab PSKs (a lab, not a secret); one per tunnel."""
    return {lk.name: f"steerd-lab-psk-{lk.number}-{lk.site_id}" for lk in links}


def write_secrets(path: str, psks: dict[str, str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(psks, f)
    os.chmod(path, 0o600)


def sa_if_ids(place: Place) -> dict[int, int]:
    """if_id -> number of ESP SAs with it (from `ip -s xfrm state`)."""
    out: dict[int, int] = {}
    for ifid in re.findall(r"if_id (0x[0-9a-f]+|\d+)", place.sh("ip", "xfrm", "state")):
        n = int(ifid, 0)
        out[n] = out.get(n, 0) + 1
    return out


def sa_counters(place: Place) -> dict[tuple[str, str, int], tuple[int, int]]:
    """(src, dst, if_id) -> (bytes, packets) of each SA, parsed from `ip -s xfrm state`."""
    text = place.sh("ip", "-s", "xfrm", "state")
    out = {}
    for block in re.split(r"\n(?=src )", text.strip()):
        m = re.match(r"src (\S+) dst (\S+)", block)
        if not m:
            continue
        ifid = re.search(r"if_id (0x[0-9a-f]+|\d+)", block)
        cur = re.search(r"current:\s*\n\s*(\d+)\(bytes\), (\d+)\(packets\)", block)
        if ifid and cur:
            out[(m.group(1), m.group(2), int(ifid.group(1), 0))] = (int(cur.group(1)), int(cur.group(2)))
    return out


# ------------------------------------------------------------------ one side (namespace or machine)

def side_lines(side: str, links: Sequence[Link], underlay_of: dict[int, str]) -> list[str]:
    """`ip -batch` lines that give one side its XFRM interfaces (if_id per link, over
    that link's underlay device), inner addresses and routes."""
    out = []
    for lk in links:
        inner = lk.pop_inner if side == "pop" else lk.site_inner
        out += [f"link add {lk.xfrm} type xfrm dev {underlay_of[lk.number]} if_id {lk.if_id}",
                f"addr add {inner}/30 dev {lk.xfrm}", f"link set {lk.xfrm} up"]
    if side == "site":
        # the site owns its ranges (AnyIP): it answers for every address in them
        out += [f"route add local {SITE_RANGE} dev lo", f"route add local {UNSTEERED} dev lo"]
    else:
        # unsteered traffic takes the pop's main table: the first tunnel
        out.append(f"route add {UNSTEERED} dev {links[0].xfrm}")
    return out


def side_sysctls(side: str, links: Sequence[Link]) -> list[str]:
    out = ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
    out += [f"net.ipv4.conf.{lk.xfrm}.rp_filter=0" for lk in links]
    if side == "pop":
        out.append("net.ipv4.ip_forward=1")
    return out


def dev_with_address(place: Place, addr: str) -> str | None:
    for link_ in json.loads(place.sh("ip", "-j", "addr", "show") or "[]"):
        for a in link_.get("addr_info", []):
            if a.get("local") == addr:
                return link_["ifname"]
    return None


# ------------------------------------------------------------------ the namespace lab

@dataclass
class VmLab:
    """core -> pop -> 6 IKEv2/XFRM tunnels over netem links -> site, in namespaces.

    Has the attributes steerd.lab.runner expects of a lab (core, gw, site, run_dir,
    socket), so SteerdProcess, Receiver and send work unchanged."""

    prefix: str = ""
    run_dir: str = RUN_DIR
    links: tuple[Link, ...] = LINKS
    netem_profile: dict[int, tuple[float, float, float]] = field(default_factory=lambda: dict(DEFAULT_NETEM))
    charons: dict[str, Charon] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.core, self.gw, self.site = (f"{self.prefix}core", f"{self.prefix}pop", f"{self.prefix}site")
        self.site_b = f"{self.prefix}site2"
        self.pop = self.gw
        self.places = {"core": Place(self.core), "pop": Place(self.pop), "site": Place(self.site)}
        self.hub = False     # add_second_site() ran: the pop terminates two sites

    # steerd.lab.runner's expectations
    @property
    def socket(self) -> str:
        return f"{self.run_dir}/steerd.sock"

    @property
    def bpffs(self) -> str:
        return f"{self.run_dir}/bpffs/steerd"

    @property
    def secrets_path(self) -> str:
        return f"{self.run_dir}/ipsec-secrets.yaml"

    def tunnel(self, name: str) -> Link:
        return link(name)

    # -- build -------------------------------------------------------------------
    def up(self, wait: bool = True) -> "VmLab":
        t0 = time.monotonic()
        self.down()
        load_modules()
        os.makedirs(self.run_dir, exist_ok=True)
        os.makedirs(os.path.dirname(self.bpffs), exist_ok=True)
        sh("mount", "-t", "bpf", "bpf", os.path.dirname(self.bpffs))
        core, pop, site = self.places["core"], self.places["pop"], self.places["site"]
        top = [f"netns add {ns}" for ns in (self.core, self.pop, self.site)]
        top.append(f"link add up0 netns {self.core} type veth peer name core0 netns {self.pop}")
        top += [f"link add {lk.underlay} netns {self.pop} type veth peer name {lk.underlay} netns {self.site}"
                for lk in self.links]
        Place(None).batch("ip", top)
        core.batch("ip", ["link set lo up", f"addr add {CORE4}/24 dev up0", "link set up0 up",
                          f"route add default via {POP4}"])
        cmds = {"pop": ["link set lo up", f"addr add {POP4}/24 dev core0", "link set core0 up"],
                "site": ["link set lo up"]}
        for lk in self.links:
            for side, wan in (("pop", lk.pop_wan), ("site", lk.site_wan)):
                cmds[side] += [f"addr add {wan}/24 dev {lk.underlay}", f"link set {lk.underlay} up"]
        underlay_of = {lk.number: lk.underlay for lk in self.links}
        for side, place in (("pop", pop), ("site", site)):
            place.batch("ip", cmds[side] + side_lines(side, self.links, underlay_of))
            place.sysctl(*side_sysctls(side, self.links))
            place.batch("tc", [netem_line(lk.underlay, *self.netem_profile.get(lk.number, (0.0, 0.0, 0.0)))
                               for lk in self.links])
        self.timings["namespaces"] = time.monotonic() - t0
        self.start_ike()
        if wait:
            self.wait_tunnels()
        return self

    def steerd_config(self, bandwidths: dict[int, float] | None = None, **top) -> dict:
        """The steerd site config of the pop, with its `ipsec:` section."""
        bw = bandwidths or BANDWIDTHS
        cfg = {
            "site": "vm-branch",
            "ingress": ["core0"],
            "network_ranges": {"lan": SITE_RANGE},
            "failback_hold": "2s",
            # the emulated guest's own timing noise on a busy host reaches 30-70 ms of
            # probe jitter (the default SLA's 30 ms would mark healthy tunnels degraded
            # and move flows under the tests' feet); no test here impairs jitter
            "health": {"jitter_ms": 150},
            "metrics": {"listen": "127.0.0.1:9469"},
            "control_socket": self.socket,
            "dataplane": {"bpffs": self.bpffs},
            "tunnels": [{
                "name": lk.name, "ha_role": lk.role, "wan": lk.wan, "interface": lk.xfrm,
                "public_ip": lk.site_wan, "probe_target": lk.site_inner,
                "bandwidth": {"down_mbps": bw.get(lk.index, 100), "up_mbps": 20},
            } for lk in self.links],
            "ipsec": {
                "connection_mode": "responder-only",
                "local_id": {"fqdn": POP_ID},
                "secrets_file": self.secrets_path,
                "proposals": {"init": "automatic", "auth": "automatic"},
                "dpd_delay": "30s",
                "tunnels": {lk.name: {"remote_id": {"fqdn": lk.site_id}, "local_addr": lk.pop_wan,
                                      "if_id": lk.if_id} for lk in self.links},
            },
        }
        cfg.update(top)
        return cfg

    def hub_config(self, **top) -> dict:
        """The pop's steerd config in hub mode: the first site's tunnels and
        ranges, and the second site's (its own weights), one `ipsec:` section."""
        cfg = self.steerd_config(**top)
        first = {k: cfg.pop(k) for k in ("site", "network_ranges", "tunnels")}
        second = {"site": SITE_B, "network_ranges": {"lan": SITE_B_RANGE}, "tunnels": [{
            "name": lk.name, "ha_role": lk.role, "wan": lk.wan, "interface": lk.xfrm,
            "public_ip": lk.site_wan, "probe_target": lk.site_inner,
            "bandwidth": {"down_mbps": SITE_B_BANDWIDTHS[lk.index], "up_mbps": 20},
        } for lk in SITE_B_LINKS]}
        cfg["sites"] = [first, second]
        cfg["ipsec"]["tunnels"].update({lk.name: {"remote_id": {"fqdn": lk.site_id}, "local_addr": lk.pop_wan,
                                                  "if_id": lk.if_id} for lk in SITE_B_LINKS})
        return cfg

    def add_second_site(self) -> float:
        """The second site (namespace site2, SITE_B_RANGE) with its own WAN links,
        XFRM interfaces and charon (initiator); the pop's charon reloads the
        swanctl.conf rendered from the hub config. Returns seconds until its
        tunnels are up."""
        t0 = time.monotonic()
        pop, site2 = self.places["pop"], Place(self.site_b)
        self.places["site2"] = site2
        Place(None).batch("ip", [f"netns add {self.site_b}"] + [
            f"link add {lk.underlay} netns {self.pop} type veth peer name {lk.underlay} netns {self.site_b}"
            for lk in SITE_B_LINKS])
        lines: dict[str, list[str]] = {"pop": [], "site": ["link set lo up"]}
        for lk in SITE_B_LINKS:
            for side, wan, inner in (("pop", lk.pop_wan, lk.pop_inner), ("site", lk.site_wan, lk.site_inner)):
                lines[side] += [f"addr add {wan}/24 dev {lk.underlay}", f"link set {lk.underlay} up",
                                f"link add {lk.xfrm} type xfrm dev {lk.underlay} if_id {lk.if_id}",
                                f"addr add {inner}/30 dev {lk.xfrm}", f"link set {lk.xfrm} up"]
        lines["site"].append(f"route add local {SITE_B_RANGE} dev lo")
        for side, place in (("pop", pop), ("site", site2)):
            place.batch("ip", lines[side])
            place.sysctl(*[f"net.ipv4.conf.{lk.xfrm}.rp_filter=0" for lk in SITE_B_LINKS],
                         "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
            place.batch("tc", [netem_line(lk.underlay, *self.netem_profile[lk.number]) for lk in SITE_B_LINKS])
        self.hub = True
        psks = lab_psks(self.links + SITE_B_LINKS)
        write_secrets(self.secrets_path, psks)
        charon = Charon(site2, "site2", os.path.join(self.run_dir, "charon-site2"))
        charon.write(site_swanctl_conf(SITE_B_LINKS, psks))
        self.charons["site2"] = charon
        charon.start()
        self.charons["pop"].write(self.pop_swanctl_conf())
        self.charons["pop"].load()
        charon.load()
        self.wait_tunnels(90, SITE_B_LINKS)
        return time.monotonic() - t0

    def write_config(self, cfg: dict, name: str = "steerd.yaml") -> str:
        os.makedirs(self.run_dir, exist_ok=True)
        path = os.path.join(self.run_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        return path

    def pop_swanctl_conf(self) -> str:
        """The pop's swanctl.conf as `steerctl ipsec render --show-secrets` makes it."""
        from steerd.config import load_config
        from steerd.ipsec import render
        cfg = load_config(self.write_config(self.hub_config() if self.hub else self.steerd_config()))
        return render(cfg.ipsec, cfg, self.secrets_path, show_secrets=True)

    def start_ike(self) -> None:
        t0 = time.monotonic()
        psks = lab_psks(self.links)
        write_secrets(self.secrets_path, psks)
        pop = Charon(self.places["pop"], "pop", os.path.join(self.run_dir, "charon-pop"))
        site = Charon(self.places["site"], "site", os.path.join(self.run_dir, "charon-site"))
        pop.write(self.pop_swanctl_conf())
        site.write(site_swanctl_conf(self.links, psks))
        self.charons = {"pop": pop, "site": site}
        pop.start()
        site.start()
        pop.load()
        self.timings["charon_start"] = time.monotonic() - t0
        site.load()   # start_action=start: the site initiates every tunnel now

    def wait_tunnels(self, timeout: float = 90.0, links: Sequence[Link] | None = None) -> float:
        """Wait until every link has ESP SAs with its if_id on both sides; seconds taken."""
        t0 = time.monotonic()
        want = {lk.if_id for lk in (links or self.links)}
        # the far end of each link: the second site's in its own namespace
        far = "site2" if want <= {lk.if_id for lk in SITE_B_LINKS} else "site"
        while time.monotonic() - t0 < timeout:
            pop, site = sa_if_ids(self.places["pop"]), sa_if_ids(self.places[far])
            if all(pop.get(i, 0) >= 2 and site.get(i, 0) >= 2 for i in want):
                took = time.monotonic() - t0
                self.timings.setdefault("tunnels_up", took)
                return took
            time.sleep(0.2)
        raise TimeoutError(f"tunnels not up after {timeout}s: pop SAs {sa_if_ids(self.places['pop'])}, "
                           f"{far} SAs {sa_if_ids(self.places[far])}\n--- pop charon:\n"
                           f"{self.charons['pop'].tail()}\n--- site charon:\n{self.charons['site'].tail()}")

    # -- operate -----------------------------------------------------------------
    def impair(self, name: str, delay_ms: float = 0.0, jitter_ms: float = 0.0, loss_pct: float = 0.0,
               sides: Sequence[str] = ("pop", "site")) -> None:
        """netem on the link's underlay, each side's egress (delay is one way)."""
        lk = link(name)
        for side in sides:
            netem(self.places[side], lk.underlay, delay_ms, jitter_ms, loss_pct)

    def restore(self, name: str) -> None:
        lk = link(name)
        self.impair(lk.name, *self.netem_profile.get(lk.number, (0.0, 0.0, 0.0)))

    def ping(self, name: str, count: int = 3, interval: float = 0.2) -> str:
        lk = link(name)
        return self.places["pop"].sh("ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2",
                                     "-I", lk.xfrm, lk.site_inner, timeout=30)

    def site_rx(self) -> dict[str, int]:
        """Packets received by the site per tunnel (XFRM interface counters)."""
        out = {}
        for lk in self.links:
            raw = self.places["site"].sh("cat", f"/sys/class/net/{lk.xfrm}/statistics/rx_packets")
            out[lk.name] = int(raw)
        return out

    def drop_counters(self) -> dict[str, int]:
        """Where packets can be lost in the lab: UDP receive errors and XFRM errors of
        pop and site, qdisc drops of the underlays, backlog drops (softnet_stat)."""
        out: dict[str, int] = {}
        for side in ("pop", "site"):
            place = self.places[side]
            snmp = place.sh("cat", "/proc/net/snmp").splitlines()
            for head, vals in zip(snmp[::2], snmp[1::2]):
                if head.startswith("Udp:"):
                    for k, v in zip(head.split()[1:], vals.split()[1:]):
                        if k in ("InErrors", "RcvbufErrors", "NoPorts"):
                            out[f"{side}.udp.{k}"] = int(v)
            for line in place.sh("cat", "/proc/net/xfrm_stat").splitlines():
                k, v = line.split()
                if int(v):
                    out[f"{side}.{k}"] = int(v)
            for lk in self.links:
                m = re.search(r"dropped (\d+)", place.sh("tc", "-s", "qdisc", "show", "dev", lk.underlay))
                out[f"{side}.{lk.underlay}.qdisc_dropped"] = int(m.group(1)) if m else 0
        with open("/proc/net/softnet_stat", encoding="ascii") as f:
            out["softnet_dropped"] = sum(int(line.split()[1], 16) for line in f)
        return out

    def logs(self) -> str:
        parts = []
        for role, ch in self.charons.items():
            parts.append(f"--- charon {role} ({ch.log}):\n{ch.tail(60)}")
        return "\n".join(parts)

    def copy_logs(self, dest: str) -> None:
        os.makedirs(dest, exist_ok=True)
        for root, _, files in os.walk(self.run_dir):
            for f in files:
                if f.endswith((".log", ".yaml", ".conf")) and "secrets" not in f:
                    src = os.path.join(root, f)
                    rel = os.path.relpath(src, self.run_dir).replace("/", "_")
                    shutil.copy(src, os.path.join(dest, rel))

    def down(self) -> None:
        for ch in self.charons.values():
            ch.stop()
        self.charons = {}
        existing = json.loads(sh("ip", "-j", "netns", "list", check=False) or "[]")
        names = {n["name"] for n in existing}
        for ns in (self.core, self.pop, self.site, self.site_b):
            if ns in names:
                # charon/steerd started by an earlier, killed run: end what lives in the namespace
                pids = sh("ip", "netns", "pids", ns, check=False).split()
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                sh("ip", "netns", "del", ns, check=False)
        bpf = os.path.dirname(self.bpffs)
        if os.path.ismount(bpf):
            sh("umount", bpf, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.places.pop("site2", None)
        self.hub = False


# ------------------------------------------------------------------ a whole machine (Vagrant)

STEERD_ETC = "/etc/steerd"
SWANCTL_CONF_D = "/etc/swanctl/conf.d"


def machine_role(place: Place | None = None) -> str:
    """pop or site: which of the lab's WAN addresses this machine has."""
    place = place or Place(None)
    if dev_with_address(place, LINKS[0].pop_wan):
        return "pop"
    if dev_with_address(place, LINKS[0].site_wan):
        return "site"
    raise RuntimeError(f"neither {LINKS[0].pop_wan} (pop) nor {LINKS[0].site_wan} (site) is configured here")


def machine_underlays(role: str, place: Place) -> dict[int, str]:
    out = {}
    for lk in LINKS:
        addr = lk.pop_wan if role == "pop" else lk.site_wan
        dev = dev_with_address(place, addr)
        if not dev:
            raise RuntimeError(f"{lk.name}: no interface has {addr} (the Vagrantfile's WAN links)")
        out[lk.number] = dev
    return out


def write_file(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)


def provision_machine(role: str, venv_python: str = sys.executable) -> None:
    """Make this machine one side of the lab: XFRM interfaces over the WAN NICs the
    Vagrantfile made, netem on them, strongSwan (the distribution's charon-systemd,
    config in /etc/swanctl/conf.d); the pop also gets the `core` traffic namespace,
    the steerd config (with its `ipsec:` section) and steerd as a systemd unit.
    Idempotent: what exists is replaced."""
    place = Place(None)
    underlays = machine_underlays(role, place)
    for lk in LINKS:
        sh("ip", "link", "del", lk.xfrm, check=False)
    sh("ip", "route", "del", "local", SITE_RANGE, "dev", "lo", "table", "local", check=False)
    sh("ip", "route", "del", "local", UNSTEERED, "dev", "lo", "table", "local", check=False)
    place.batch("ip", side_lines(role, LINKS, underlays))
    place.sysctl(*side_sysctls(role, LINKS))
    place.batch("tc", [netem_line(underlays[lk.number], *DEFAULT_NETEM[lk.number]) for lk in LINKS])
    psks = lab_psks()
    if role == "site":
        write_file(os.path.join(SWANCTL_CONF_D, "steerd-lab.conf"), site_swanctl_conf(LINKS, psks), 0o600)
    else:
        lab = VmLab(run_dir=STEERD_ETC)
        # the core namespace: the LAN whose downstream traffic steerd steers (ingress core0)
        sh("ip", "netns", "del", "core", check=False)
        sh("ip", "link", "del", "core0", check=False)
        Place(None).batch("ip", ["netns add core", "link add core0 type veth peer name up0 netns core",
                                 f"addr add {POP4}/24 dev core0", "link set core0 up"])
        Place("core").batch("ip", ["link set lo up", f"addr add {CORE4}/24 dev up0", "link set up0 up",
                                   f"route add default via {POP4}"])
        write_secrets(lab.secrets_path, psks)
        cfg = lab.steerd_config()
        cfg["control_socket"] = "/run/steerd/steerd.sock"
        cfg["failback_hold"] = "30s"
        del cfg["dataplane"]
        path = lab.write_config(cfg)
        os.chmod(path, 0o644)
        from steerd.config import load_config
        from steerd.ipsec import render
        loaded = load_config(path)
        write_file(os.path.join(SWANCTL_CONF_D, "steerd.conf"),
                   render(loaded.ipsec, loaded, lab.secrets_path, show_secrets=True), 0o600)
    sh("systemctl", "restart", "strongswan.service")
    sh("swanctl", "--load-all")
    if role == "pop":
        sh("systemctl", "stop", "steerd-lab.service", check=False)
        sh("systemctl", "reset-failed", "steerd-lab.service", check=False)
        sh(venv_python, "-m", "steerd.daemon", "--config", os.path.join(STEERD_ETC, "steerd.yaml"), "--cleanup",
           check=False)
        sh("systemd-run", "--unit=steerd-lab", "--property=Restart=on-failure", "--description=steerd (lab)",
           venv_python, "-m", "steerd.daemon", "--config", os.path.join(STEERD_ETC, "steerd.yaml"))


def impair_machine(name: str, delay_ms: float | None, jitter_ms: float, loss_pct: float) -> str:
    """netem on this machine's underlay of tunnel *name* (egress); delay None = the lab default."""
    place = Place(None)
    lk = link(name)
    dev = machine_underlays(machine_role(place), place)[lk.number]
    d, j, _ = DEFAULT_NETEM[lk.number]
    netem(place, dev, d if delay_ms is None else delay_ms, jitter_ms if delay_ms is not None else j, loss_pct)
    return dev


# ------------------------------------------------------------------ CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vmlab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="can this kernel run the lab? (exit 0 yes)")
    sub.add_parser("up", help="build the namespace lab and bring the tunnels up")
    sub.add_parser("down", help="remove the namespace lab")
    sub.add_parser("render-pop", help="print the pop's swanctl.conf (secrets included)")
    side = sub.add_parser("side", help="provision this machine as the pop or the site (Vagrant)")
    side.add_argument("role", choices=("pop", "site"))
    imp = sub.add_parser("impair", help="netem on this machine's underlay of a tunnel (Vagrant)")
    imp.add_argument("tunnel", help="pri-wan1 .. sec-wan3")
    imp.add_argument("--delay", type=float, default=None, help="one-way delay in ms (default: the lab's)")
    imp.add_argument("--jitter", type=float, default=0.0, help="jitter in ms")
    imp.add_argument("--loss", type=float, default=0.0, help="loss in percent (100 cuts the link)")
    a = ap.parse_args(argv)
    if a.cmd == "check":
        ok, why = xfrm_supported()
        print(why)
        return 0 if ok else 1
    if a.cmd == "side":
        provision_machine(a.role)
        print(f"{a.role}: provisioned")
        return 0
    if a.cmd == "impair":
        dev = impair_machine(a.tunnel, a.delay, a.jitter, a.loss)
        print(f"{a.tunnel}: netem on {dev}: {netem_line(dev, a.delay or 0, a.jitter, a.loss)}")
        return 0
    lab = VmLab()
    if a.cmd == "down":
        lab.down()
        return 0
    if a.cmd == "render-pop":
        os.makedirs(lab.run_dir, exist_ok=True)
        write_secrets(lab.secrets_path, lab_psks())
        print(lab.pop_swanctl_conf(), end="")
        return 0
    lab.up()
    print(json.dumps({k: round(v, 2) for k, v in lab.timings.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
