"""The namespace lab: core -> gateway -> 3 primary + 3 secondary "tunnels" -> site.

    core (traffic source)          gw (steerd runs here)                 site
    up0 10.99.0.2 ----------- core0 10.99.0.1   tun-p1 169.254.11.1 === gw-p1 .2   owns 10.20.0.0/16,
                                                tun-p2 169.254.12.1 === gw-p2 .2   fd00:20::/48 (AnyIP
                                                tun-p3 ...           === ...       local routes), and
                                                tun-s1..s3 (secondary)             10.30.0.0/16 (not steered)

Each tunnel is a veth pair with the same MAC on both ends and ARP off: a
point-to-point, NOARP link like an XFRM interface, so steerd installs plain
device routes exactly as it would on a real gateway.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import yaml

from .netns import namespaces, ns_sh, sh, sysctl

STEERED4 = "10.20.0.0/16"
STEERED6 = "fd00:20::/48"
UNSTEERED4 = "10.30.0.0/16"
CORE4, GW4 = "10.99.0.2", "10.99.0.1"
CORE6, GW6 = "fd00:99::2", "fd00:99::1"


@dataclass(frozen=True)
class LabTunnel:
    name: str       # steerd tunnel name, e.g. pri-wan1
    role: str
    wan: str
    index: int      # 1..3 within the role
    number: int     # 1..6 overall

    @property
    def gw_if(self) -> str:
        return f"tun-{self.role[0]}{self.index}"

    @property
    def site_if(self) -> str:
        return f"gw-{self.role[0]}{self.index}"

    @property
    def gw_addr(self) -> str:
        return f"169.254.{10 + self.number}.1"

    @property
    def site_addr(self) -> str:
        return f"169.254.{10 + self.number}.2"

    @property
    def site_addr6(self) -> str:
        return f"fd00:169:{self.number}::2"

    @property
    def gw_addr6(self) -> str:
        return f"fd00:169:{self.number}::1"


TUNNELS = tuple(LabTunnel(f"{'pri' if r == 'primary' else 'sec'}-wan{i}", r, f"wan{i}", i,
                          i + (0 if r == "primary" else 3))
                for r in ("primary", "secondary") for i in (1, 2, 3))
BANDWIDTHS = {1: 100, 2: 50, 3: 25}


class Lab:
    def __init__(self, prefix: str = "sdlab"):
        self.prefix = prefix
        self.core, self.gw, self.site = f"{prefix}-core", f"{prefix}-gw", f"{prefix}-site"
        self.run_dir = f"/run/steerd-lab/{prefix}"

    @property
    def bpffs(self) -> str:
        return f"{self.run_dir}/bpffs/steerd"

    @property
    def socket(self) -> str:
        return f"{self.run_dir}/steerd.sock"

    def tunnel(self, name: str) -> LabTunnel:
        for t in TUNNELS:
            if name in (t.name, t.gw_if, t.site_if):
                return t
        raise KeyError(name)

    def _namespaces(self, *sysctls: str) -> None:
        """Fresh namespaces (and bpffs); *sysctls* set in each."""
        self.down()
        os.makedirs(os.path.dirname(self.bpffs), exist_ok=True)
        # bpffs mounted from the host's mount namespace, so the daemon, its
        # restarts and `steerd --cleanup` (each a separate `ip netns exec`) share pins
        sh("mount", "-t", "bpf", "bpf", os.path.dirname(self.bpffs))
        for ns in (self.core, self.gw, self.site):
            sh("ip", "netns", "add", ns)
            ns_sh(ns, "ip", "link", "set", "lo", "up")
            # no DAD: addresses (link-local too) are usable at once, the lab is deterministic
            sysctl(ns, "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0",
                   *sysctls)
        self._link(self.core, "up0", self.gw, "core0")

    def up(self) -> "Lab":
        self._namespaces()
        ns_sh(self.core, "ip", "addr", "add", f"{CORE4}/24", "dev", "up0")
        ns_sh(self.core, "ip", "-6", "addr", "add", f"{CORE6}/64", "dev", "up0", "nodad")
        ns_sh(self.gw, "ip", "addr", "add", f"{GW4}/24", "dev", "core0")
        ns_sh(self.gw, "ip", "-6", "addr", "add", f"{GW6}/64", "dev", "core0", "nodad")
        ns_sh(self.core, "ip", "route", "add", "default", "via", GW4)
        ns_sh(self.core, "ip", "-6", "route", "add", "default", "via", GW6)
        for t in TUNNELS:
            self._tunnel(t)
        site = self.site
        for prefix in (STEERED4, UNSTEERED4):
            ns_sh(site, "ip", "route", "add", "local", prefix, "dev", "lo")
        ns_sh(site, "ip", "-6", "route", "add", "local", STEERED6, "dev", "lo")
        # Return path for TCP (iperf3, probes need none): everything back via p1.
        p1 = TUNNELS[0]
        ns_sh(site, "ip", "route", "add", "10.99.0.0/24", "dev", p1.site_if)
        ns_sh(site, "ip", "-6", "route", "add", "fd00:99::/64", "dev", p1.site_if)
        # Unsteered traffic takes the gateway's main table: one fixed tunnel.
        ns_sh(self.gw, "ip", "route", "add", UNSTEERED4, "dev", p1.gw_if)
        sysctl(self.gw, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
               "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        sysctl(site, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        return self

    def _link(self, ns_a: str, if_a: str, ns_b: str, if_b: str, mac: str | None = None) -> None:
        sh("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
            if mac:
                ns_sh(ns, "ip", "link", "set", ifname, "address", mac, "arp", "off")
            ns_sh(ns, "ip", "link", "set", ifname, "up")

    def _tunnel(self, t: LabTunnel) -> None:
        self._link(self.gw, t.gw_if, self.site, t.site_if, mac=f"02:5e:00:00:00:{t.number:02x}")
        for ns, ifname, a4, a6 in ((self.gw, t.gw_if, t.gw_addr, t.gw_addr6),
                                   (self.site, t.site_if, t.site_addr, t.site_addr6)):
            ns_sh(ns, "ip", "addr", "add", f"{a4}/30", "dev", ifname)
            ns_sh(ns, "ip", "-6", "addr", "add", f"{a6}/64", "dev", ifname, "nodad")
            sysctl(ns, f"net.ipv4.conf.{ifname}.rp_filter=0")

    def recreate(self, name: str) -> None:
        """Delete tunnel *name*'s veth pair and make it again (same names and
        addresses, new ifindexes): what an IKE restart can do to an XFRM interface."""
        t = self.tunnel(name)
        ns_sh(self.gw, "ip", "link", "del", t.gw_if)
        self._tunnel(t)

    def down(self) -> None:
        present = namespaces()
        for ns in (self.core, self.gw, self.site):
            if ns in present:
                # processes outlive a deleted namespace: stop the lab's own first
                for pid in sh("ip", "netns", "pids", ns, check=False).split():
                    sh("kill", "-9", pid, check=False)
                sh("ip", "netns", "del", ns, check=False)
        bpf = os.path.dirname(self.bpffs)
        if os.path.ismount(bpf):
            sh("umount", bpf, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def config(self, bandwidths: dict[int, float] | None = None, **top) -> dict:
        """A steerd site config for this lab (a dict; write it with write_config)."""
        bw = bandwidths or BANDWIDTHS
        tunnels = [{
            "name": t.name, "ha_role": t.role, "wan": t.wan, "interface": t.gw_if,
            "public_ip": f"198.51.100.{10 + t.number}", "probe_target": t.site_addr,
            "bandwidth": {"down_mbps": bw.get(t.index, 100), "up_mbps": 20},
        } for t in TUNNELS]
        cfg = {
            "site": f"{self.prefix}-branch",
            "ingress": ["core0"],
            "network_ranges": {"lan": STEERED4, "lan6": STEERED6},
            "metrics": {"listen": "127.0.0.1:9469"},  # inside the gw netns: no clash
            "control_socket": self.socket,
            "state_dir": self.run_dir,
            "dataplane": {"bpffs": self.bpffs},
            "tunnels": tunnels,
        }
        cfg.update(top)
        return cfg

    def write_config(self, cfg: dict, name: str = "steerd.yaml") -> str:
        os.makedirs(self.run_dir, exist_ok=True)
        path = os.path.join(self.run_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        return path

    def site_rx(self) -> dict[str, int]:
        """Packets received by the site per tunnel (interface counters)."""
        out = {}
        for t in TUNNELS:
            raw = ns_sh(self.site, "cat", f"/sys/class/net/{t.site_if}/statistics/rx_packets")
            out[t.name] = int(raw)
        return out


# ------------------------------------------------------------------ hub lab

HUB_LINKS = 0x64400000            # 100.64.0.0/10: one /30 per tunnel (gw .1, site .2)
HUB_ROLES = ("primary", "primary", "primary", "secondary", "secondary", "secondary")


def hub_site_range(s: int) -> str:
    """Site s's steered range: a /20 (room for the lab's flow addresses)."""
    return f"10.{100 + s // 16}.{(s % 16) * 16}.0/20"


@dataclass(frozen=True)
class HubTunnel:
    name: str       # steerd tunnel name, e.g. s7-pri-wan2
    site: int
    k: int          # position within the site
    role: str
    wan: str
    number: int     # global: site * tunnels-per-site + k

    @property
    def gw_if(self) -> str:
        return f"h{self.site}t{self.k}"

    @property
    def site_if(self) -> str:
        return f"h{self.site}s{self.k}"

    def _addr(self, host: int) -> str:
        n = HUB_LINKS + 4 * self.number + host
        return ".".join(str((n >> sh) & 255) for sh in (24, 16, 8, 0))

    @property
    def gw_addr(self) -> str:
        return self._addr(1)

    @property
    def site_addr(self) -> str:
        return self._addr(2)


class HubLab(Lab):
    """The namespace lab for hub mode: core -> gw -> N sites x M tunnels -> site.

    One `site` namespace hosts every site's range (10.0.0.0/8 is local there)
    and answers probes with the kernel's own echo replies; tunnel h{s}t{k} on
    the gateway is veth-paired with h{s}s{k} there. Built with `ip -batch`
    (a few processes, not one per command), so 1,000 sites x 3 tunnels take
    seconds. Bandwidths differ per site (see `bandwidth`), so each site has
    its own split."""

    def __init__(self, prefix: str = "sdhub", sites: int = 3, tunnels: int = 3):
        super().__init__(prefix)
        if not 1 <= tunnels <= len(HUB_ROLES):
            raise ValueError(f"tunnels per site: 1 to {len(HUB_ROLES)}")
        self.nsites, self.per_site = sites, tunnels
        self.tunnels = tuple(self._make(s, k) for s in range(sites) for k in range(tunnels))

    def _make(self, s: int, k: int) -> HubTunnel:
        role = HUB_ROLES[k]
        i = k % 3 + 1
        return HubTunnel(f"s{s}-{role[:3]}-wan{i}", s, k, role, f"wan{i}", s * self.per_site + k)

    @staticmethod
    def bandwidth(site: int, k: int) -> float:
        """Site-specific ratios: site 0 100:50:25, site 1 20:20:60, site 2 10:90:50, ..."""
        patterns = ((100, 50, 25), (20, 20, 60), (10, 90, 50), (40, 40, 40))
        return patterns[site % len(patterns)][k % 3]

    def site_name(self, s: int) -> str:
        return f"site{s}"

    def tunnel(self, name: str) -> HubTunnel:  # type: ignore[override]
        for t in self.tunnels:
            if name in (t.name, t.gw_if, t.site_if):
                return t
        raise KeyError(name)

    def up(self) -> "HubLab":
        # new interfaces inherit these: no per-interface sysctl for thousands of them
        self._namespaces("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                         "net.ipv6.conf.default.disable_ipv6=1")
        ns_sh(self.core, "ip", "addr", "add", f"{CORE4}/24", "dev", "up0")
        ns_sh(self.gw, "ip", "addr", "add", f"{GW4}/24", "dev", "core0")
        ns_sh(self.core, "ip", "route", "add", "default", "via", GW4)
        sh("ip", "-batch", "-", input="".join(
            f"link add {t.gw_if} netns {self.gw} type veth peer name {t.site_if} netns {self.site}\n"
            for t in self.tunnels))
        for ns, side in ((self.gw, "gw"), (self.site, "site")):
            cmds = []
            for t in self.tunnels:
                ifname, addr = (t.gw_if, t.gw_addr) if side == "gw" else (t.site_if, t.site_addr)
                n = t.number + 1
                mac = f"02:5e:{(n >> 24) & 255:02x}:{(n >> 16) & 255:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}"
                cmds += [f"link set {ifname} address {mac} arp off up", f"addr add {addr}/30 dev {ifname}"]
            ns_sh(ns, "ip", "-batch", "-", input="\n".join(cmds) + "\n")
        ns_sh(self.site, "ip", "route", "add", "local", "10.0.0.0/8", "dev", "lo")
        # a route back to the sender: the site accepts nothing from an unroutable source
        ns_sh(self.site, "ip", "route", "add", "10.99.0.0/24", "dev", self.tunnels[0].site_if)
        sysctl(self.gw, "net.ipv4.ip_forward=1")
        return self

    def config(self, bandwidths=None, sites: range | None = None, **top) -> dict:
        """A hub-mode steerd config for (some of) the lab's sites."""
        def tun(t: HubTunnel) -> dict:
            return {"name": t.name, "ha_role": t.role, "wan": t.wan, "interface": t.gw_if,
                    "public_ip": f"198.51.100.{10 + t.k}", "probe_target": t.site_addr,
                    "bandwidth": {"down_mbps": self.bandwidth(t.site, t.k)}}
        chosen = sites if sites is not None else range(self.nsites)
        cfg = {
            "ingress": ["core0"],
            "metrics": {"listen": "127.0.0.1:9469"},
            "control_socket": self.socket,
            "state_dir": self.run_dir,
            "dataplane": {"bpffs": self.bpffs},
            "sites": [{"site": self.site_name(s), "network_ranges": {"lan": hub_site_range(s)},
                       "tunnels": [tun(t) for t in self.tunnels if t.site == s]} for s in chosen],
        }
        cfg.update(top)
        return cfg

    def site_rx(self) -> dict[str, int]:
        out = {}
        for t in self.tunnels:
            raw = ns_sh(self.site, "cat", f"/sys/class/net/{t.site_if}/statistics/rx_packets")
            out[t.name] = int(raw)
        return out
