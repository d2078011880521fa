"""Downstream bandwidth cap and priority classes on a tunnel's egress (HTB).

One HTB tree per capped tunnel interface, handle ``5e:``::

    5e:  htb root, default = the default band's leaf
     └─ 5e:1    rate = ceil = cap                                   (the cap)
         ├─ 5e:10  band 0 realtime  prio 0  rate = floor, ceil = cap ─ tbf 5e10:
         ├─ 5e:15  band 5 normal    prio 5  ...                      ─ tbf 5e15:
         └─ 5e:17  band 7 bulk      prio 7  ...                      ─ tbf 5e17:
    (leaf tbf = GSO splitter + byte FIFO, see Latency)
    filter: cls_bpf direct-action on 5e:, classid 5e: (the steering program's qos_classify)

Only the bands in use get a leaf: the rules' priorities plus the default.

Bands (fixed; finer at the important end, where profiles put P10 voice):

    band  priorities  name         HTB prio  floor weight  leaf queue
    0       1 -  15   realtime         0         30          10 ms
    1      16 -  31   interactive      1         20          20 ms
    2      32 -  63   critical         2         15          50 ms
    3      64 -  95   high             3         10          50 ms
    4      96 - 127   elevated         4          8         100 ms
    5     128 - 159   normal           5          7         100 ms
    6     160 - 191   low              6          5         100 ms
    7     192 - 255   bulk             7          5         100 ms

Under congestion HTB serves leaves still within their own guaranteed rate
("floor") before leaves that borrow, lower HTB prio first in both groups, and
lends spare capacity in prio order. Each used band's floor is ``weight / (sum
of the used bands' weights)`` of the cap (the floors add up to exactly the
cap); everything above the floors goes to the most important band that wants
it, and no band is starved below its floor (bulk keeps its share when voice
floods). Leaf queues hold the band's queue time at the full cap (>= 8 frames),
so an oversubscribed realtime band drops rather than queues.

Classification: the program sets ``skb->tc_classid`` (direct action) from
``prio_class[256]``, filled with :func:`prio_class_table` (index p = rule
priority p, index 0 = no rule / no priority = the default band). The kernel
keeps only 16 bits of it (``qdisc_skb_cb.tc_classid``): the filter is created
with classid ``5e:`` which supplies the major. A classid without a leaf, a
packet the program gives up on (TC_ACT_UNSPEC) or no program at all lands in
HTB's ``default`` class; the program must never set minor 0 (``5e:0`` is HTB's
unshaped direct queue).

Latency. A priority packet waits behind at most one burst HTB let go just
before it plus the frame on the wire. Bursts are BURST_TIME (2 ms) of the
rate, at least two frames; quantum is one frame. GSO packets would break that
bound: forwarded TCP arrives as GSO packets (GRO on the LAN NIC; XFRM
interfaces accept GSO), which HTB dequeues whole - up to 64 kB, 26 ms at
20 Mbit/s on the last mile. So below SPLIT_GSO_BELOW_MBPS each leaf is a TBF
that is never the limit (24 Gbit/s) but has a two-frame bucket: TBF cuts
larger GSO packets into segments at enqueue, and HTB then paces segments.
Above it, a 64 kB burst costs < 0.5 ms and the leaf is a plain byte FIFO.
(This kernel has no fq_codel, sfq or cake.)

Updates are in place: a new cap, new floors or a new band set are
``replace-class`` / ``replace`` operations on the live tree (no packet dropped,
no moment without the cap). Only a change of the *default band* re-creates the
root (HTB cannot change ``default`` in place), and a cap crossing
SPLIT_GSO_BELOW_MBPS swaps the leaf qdiscs: a few queued packets drop then.

The cap counts the bytes the qdisc sees: the IP packet on an XFRM interface
(pass ``overhead`` for ESP), the Ethernet frame on the lab's veth links.

Everything takes an optional ``netns`` (a named network namespace, for tests
and the lab); the daemon runs inside its namespace and leaves it out.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import plugins as _tc_plugins
from pyroute2.netlink.rtnl.tcmsg import sched_pfifo as _sched_pfifo

# pyroute2 knows pfifo but not bfifo; both take the same struct tc_fifo_qopt
# (bfifo's limit is in bytes). Without a plugin pyroute2 would drop the options
# and the parent and graft the fifo at the root.
_tc_plugins.setdefault("bfifo", _sched_pfifo)

MAJOR = 0x5E
HANDLE = MAJOR << 16            # 5e:  (the root qdisc)
ROOT_MINOR = 0x1                # 5e:1 (the cap)
LEAF_MINOR_BASE = 0x10          # band b -> 5e:(10+b), hex like tc prints it
FILTER_PRIO = 1                 # our own qdisc: nobody else puts filters on it
FILTER_HANDLE = 0x1
FILTER_NAME = "steerd-qos"
ETH_P_ALL = 0x0003
MIN_PRIORITY, MAX_PRIORITY = 1, 255

BURST_TIME = 0.002              # seconds of rate per burst (floor: 2 frames)
SPLIT_GSO_BELOW_MBPS = 1000.0   # below this cap, leaves split GSO packets (see module doc)
SPLIT_RATE = 3_000_000_000      # bytes/s (24 Gbit/s) of the splitting TBF: never the limit
MIN_QUEUE_FRAMES = 8            # a leaf queue holds at least this many full frames
ARPHRD_ETHER = 1
ETH_HLEN = 14


@dataclass(frozen=True)
class BandSpec:
    lo: int
    hi: int
    name: str
    weight: int
    queue_ms: float


BAND_SPECS: tuple[BandSpec, ...] = (
    BandSpec(1, 15, "realtime", 30, 10),
    BandSpec(16, 31, "interactive", 20, 20),
    BandSpec(32, 63, "critical", 15, 50),
    BandSpec(64, 95, "high", 10, 50),
    BandSpec(96, 127, "elevated", 8, 100),
    BandSpec(128, 159, "normal", 7, 100),
    BandSpec(160, 191, "low", 5, 100),
    BandSpec(192, 255, "bulk", 5, 100),
)
NBANDS = len(BAND_SPECS)


@dataclass(frozen=True)
class Band:
    """One HTB leaf: classid 5e:<minor>, HTB prio, guaranteed fraction of the cap."""

    minor: int
    htb_prio: int
    rate_fraction: float
    name: str = ""
    queue_ms: float = 100.0

    @property
    def classid(self) -> int:
        return HANDLE | self.minor

    @property
    def index(self) -> int:
        return self.minor - LEAF_MINOR_BASE


class QosError(RuntimeError):
    """The interface is missing or its root qdisc belongs to someone else."""


# ------------------------------------------------------------- pure mapping

def band_index(priority: int) -> int:
    """Band 0..7 of a rule priority 1..255 (ValueError outside)."""
    if isinstance(priority, bool) or not isinstance(priority, int) \
            or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, "
                         f"got {priority!r}")
    for i, spec in enumerate(BAND_SPECS):
        if spec.lo <= priority <= spec.hi:
            return i
    raise AssertionError("band table does not cover 1..255")  # pragma: no cover


def minor_for_priority(priority: int) -> int:
    return LEAF_MINOR_BASE + band_index(priority)


def classid_for_priority(priority: int) -> int:
    """The classid the eBPF classifier sets for a packet of rule priority *priority*."""
    return HANDLE | minor_for_priority(priority)


def default_minor(default_priority: int) -> int:
    return minor_for_priority(default_priority)


def bands_for(priorities: Iterable[int], default_priority: int) -> list[Band]:
    """The leaves needed for these rule priorities and the default priority,
    in band order, floors normalised over the used bands (they sum to 1)."""
    used = sorted({band_index(p) for p in priorities} | {band_index(default_priority)})
    total = sum(BAND_SPECS[i].weight for i in used)
    return [Band(minor=LEAF_MINOR_BASE + i, htb_prio=i,
                 rate_fraction=BAND_SPECS[i].weight / total,
                 name=BAND_SPECS[i].name, queue_ms=BAND_SPECS[i].queue_ms)
            for i in used]


def prio_class_table(default_priority: int, bands: Iterable[Band] | None = None) -> list[int]:
    """256 classids for the BPF array ``prio_class``: index 0 = no rule / no priority
    (the default band), index p = ``classid_for_priority(p)``.

    With *bands* (what :func:`install` got), a priority whose band has no leaf maps
    to the default classid explicitly instead of relying on HTB's fallback."""
    dflt = classid_for_priority(default_priority)
    have = None if bands is None else {b.classid for b in bands}
    table = [dflt]
    for p in range(MIN_PRIORITY, MAX_PRIORITY + 1):
        cid = classid_for_priority(p)
        table.append(cid if have is None or cid in have else dflt)
    return table


def fmt_classid(classid: int) -> str:
    return f"{classid >> 16:x}:{classid & 0xFFFF:x}"


def mbps_to_bytes(mbps: float) -> int:
    return max(1, round(mbps * 1e6 / 8))


def burst_bytes(rate_bytes: float, frame: int) -> int:
    """Bucket size: BURST_TIME of the rate, at least two full frames."""
    return max(2 * frame, int(rate_bytes * BURST_TIME))


def queue_limit_bytes(cap_bytes: float, band: Band, frame: int) -> int:
    """Leaf queue limit in bytes: the band's queue time at the full cap, at least
    MIN_QUEUE_FRAMES frames."""
    return max(MIN_QUEUE_FRAMES * frame, int(cap_bytes * band.queue_ms / 1000))


def leaf_qdisc_handle(band: Band) -> int:
    return ((MAJOR << 8) | band.minor) << 16     # 5e10:, 5e11:, ...


def plan(cap_mbps: float, bands: list[Band], default_minor: int, frame: int = 1514,
         overhead: int = 0, split_gso: bool | None = None) -> dict:
    """The HTB tree install() programs, as data (pure; used by install and the tests).

    split_gso: leaf qdisc is a TBF that splits GSO packets (None: below
    SPLIT_GSO_BELOW_MBPS), else a plain byte FIFO."""
    if isinstance(cap_mbps, bool) or not isinstance(cap_mbps, (int, float)) \
            or not math.isfinite(cap_mbps) or cap_mbps <= 0:
        raise ValueError(f"cap_mbps must be > 0, got {cap_mbps!r}")
    if not bands:
        raise ValueError("at least one band is needed")
    minors = [b.minor for b in bands]
    if len(set(minors)) != len(minors):
        raise ValueError(f"duplicate band minors {minors}")
    for b in bands:
        if not LEAF_MINOR_BASE <= b.minor < LEAF_MINOR_BASE + NBANDS:
            raise ValueError(f"band minor {b.minor:#x} outside "
                             f"{LEAF_MINOR_BASE:#x}..{LEAF_MINOR_BASE + NBANDS - 1:#x}")
        if not 0 <= b.htb_prio <= 7:
            raise ValueError(f"HTB prio {b.htb_prio} outside 0..7")
        if not 0 < b.rate_fraction <= 1:
            raise ValueError(f"rate fraction {b.rate_fraction} outside (0, 1]")
    if sum(b.rate_fraction for b in bands) > 1 + 1e-9:
        raise ValueError("band rate fractions add up to more than 1")
    if default_minor not in minors:
        raise ValueError(f"default minor {default_minor:#x} is not one of the bands {minors}")
    cap = mbps_to_bytes(cap_mbps)
    split = cap_mbps < SPLIT_GSO_BELOW_MBPS if split_gso is None else bool(split_gso)
    if split and cap * 4 > SPLIT_RATE:
        raise ValueError(f"cannot split GSO at a cap of {cap_mbps} Mbit/s "
                         f"(the splitting TBF runs at {SPLIT_RATE * 8 / 1e9:g} Gbit/s)")
    common = {"quantum": frame, "mtu": frame, "overhead": overhead}
    root = dict(handle=HANDLE | ROOT_MINOR, parent=HANDLE, rate=cap, ceil=cap,
                burst=burst_bytes(cap, frame), cburst=burst_bytes(cap, frame), prio=0, **common)
    leaves = []
    for b in bands:
        rate = max(1, int(cap * b.rate_fraction))
        q = {"kind": "bfifo", "handle": leaf_qdisc_handle(b),
             "limit": queue_limit_bytes(cap, b, frame)}
        if split:
            # bucket of 2 frames: a GSO packet larger than that is cut into segments
            # at enqueue (tbf_segment); at 24 Gbit/s the bucket never holds back a
            # packet HTB lets go. The TBF's own byte FIFO has the band's limit.
            q.update(kind="tbf", rate=SPLIT_RATE, burst=2 * frame)
        leaves.append(dict(
            handle=b.classid, parent=HANDLE | ROOT_MINOR, rate=rate, ceil=cap,
            burst=burst_bytes(rate, frame), cburst=burst_bytes(cap, frame), prio=b.htb_prio,
            qdisc=q, **common))
    return {"default": default_minor, "root": root, "leaves": leaves, "split_gso": split}


# ----------------------------------------------------------------- kernel

def _ipr(netns: str | None) -> IPRoute:
    return IPRoute(netns=netns) if netns else IPRoute()


def _link(ipr: IPRoute, ifname: str):
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise QosError(f"interface {ifname!r} not found")
    return ipr.get_links(idx[0])[0]


def _frame(link) -> int:
    """Largest frame HTB accounts for: MTU plus the link header (veth: 14, xfrm: 0)."""
    mtu = link.get_attr("IFLA_MTU") or 1500
    return mtu + (ETH_HLEN if link["ifi_type"] == ARPHRD_ETHER else 0)


def _root_qdisc(ipr: IPRoute, idx: int):
    return _root_of(ipr.get_qdiscs(idx))


def _root_of(qdiscs: list):
    for q in qdiscs:
        if q["parent"] == 0xFFFFFFFF:
            return q
    return None


def _is_ours(q) -> bool:
    return q is not None and q["handle"] == HANDLE and q.get_attr("TCA_KIND") == "htb"


def _defcls(q) -> int | None:
    opts = q.get_attr("TCA_OPTIONS")
    init = opts.get_attr("TCA_HTB_INIT") if opts is not None else None
    return init["defcls"] if init is not None else None


def _our_classes(ipr: IPRoute, idx: int) -> list:
    return [c for c in ipr.get_classes(idx)
            if c.get_attr("TCA_KIND") == "htb" and c["handle"] >> 16 == MAJOR]


def _our_filters(ipr: IPRoute, idx: int) -> list:
    try:
        filters = ipr.get_filters(idx, parent=HANDLE)
    except NetlinkError:
        return []
    return [f for f in filters if f.get_attr("TCA_KIND") == "bpf"
            and f["info"] >> 16 == FILTER_PRIO]


def install(ifname: str, cap_mbps: float, bands: list[Band], default_minor: int,
            prog_fd: int | None, *, overhead: int = 0, split_gso: bool | None = None,
            force: bool = False, netns: str | None = None) -> None:
    """Make *ifname*'s egress match: HTB cap + one leaf per band + the classifier.

    Idempotent; a changed cap, floor or band set is applied in place. With
    ``prog_fd=None`` any filter of ours is removed (everything then goes to
    the default band). *overhead* = bytes to add per packet for the rate
    (encapsulation the qdisc does not see, e.g. ESP on an XFRM interface).
    *split_gso*: see :func:`plan` (default: split below SPLIT_GSO_BELOW_MBPS).
    A root qdisc configured by someone else (not a kernel default) raises
    QosError unless *force*.
    """
    with _ipr(netns) as ipr:
        link = _link(ipr, ifname)
        _install(ipr, link, ipr.get_qdiscs(link["index"]), cap_mbps, bands, default_minor,
                 prog_fd, overhead, split_gso, force)


def _install(ipr: IPRoute, link, qdiscs: list, cap_mbps: float, bands: list[Band],
             default_minor: int, prog_fd: int | None, overhead: int = 0,
             split_gso: bool | None = None, force: bool = False) -> None:
    """install() on *link*, whose qdiscs (as dumped) are *qdiscs*."""
    idx, ifname = link["index"], link.get_attr("IFLA_IFNAME")
    p = plan(cap_mbps, bands, default_minor, _frame(link), overhead, split_gso)
    root = _root_of(qdiscs)
    if _is_ours(root) and _defcls(root) != default_minor:
        ipr.tc("del", index=idx, handle=HANDLE, parent=0xFFFFFFFF)
        root = None
    if not _is_ours(root):
        if root is not None and root["handle"] != 0 and not force:
            raise QosError(f"{ifname}: root qdisc {root.get_attr('TCA_KIND')} "
                           f"{fmt_classid(root['handle'])} is not steerd's; "
                           f"refusing to replace it")
        ipr.tc("replace", "htb", idx, HANDLE, default=default_minor, r2q=10)
        qdiscs = []   # a new root: no leaves yet
    ipr.tc("replace-class", "htb", idx, **p["root"])
    leaf_qdiscs = {q["parent"]: q for q in qdiscs if q["parent"] >> 16 == MAJOR}
    for leaf in p["leaves"]:
        leaf = dict(leaf)
        q = dict(leaf.pop("qdisc"))
        kind = q.pop("kind")
        ipr.tc("replace-class", "htb", idx, **leaf)
        old = leaf_qdiscs.get(leaf["handle"])
        if old is not None and old["handle"] == q["handle"] \
                and old.get_attr("TCA_KIND") != kind:
            # same handle, other kind (the cap crossed SPLIT_GSO_BELOW_MBPS):
            # the kernel only replaces like with like
            ipr.tc("del", index=idx, handle=q["handle"], parent=leaf["handle"])
        ipr.tc("replace", kind, idx, q.pop("handle"), parent=leaf["handle"], **q)
    if prog_fd is not None:
        # classid=5e: supplies the major: the program's skb->tc_classid is
        # stored in 16 bits (qdisc_skb_cb), so only its minor survives.
        ipr.tc("replace-filter", "bpf", idx, handle=FILTER_HANDLE, fd=prog_fd,
               name=FILTER_NAME, parent=HANDLE, prio=FILTER_PRIO, protocol=ETH_P_ALL,
               classid=HANDLE, direct_action=True)
    elif _our_filters(ipr, idx):
        try:
            ipr.tc("del-filter", "bpf", idx, handle=FILTER_HANDLE, parent=HANDLE,
                   prio=FILTER_PRIO, protocol=ETH_P_ALL)
        except NetlinkError as exc:
            if exc.code != 2:     # ENOENT: gone meanwhile
                raise
    wanted = {leaf["handle"] for leaf in p["leaves"]} | {HANDLE | ROOT_MINOR}
    for c in _our_classes(ipr, idx):
        if c["handle"] not in wanted:
            ipr.tc("del-class", index=idx, handle=c["handle"], parent=c["parent"])


def remove(ifname: str, *, netns: str | None = None) -> bool:
    """Delete our HTB root (handle 5e:) and with it the classes and filter; the
    kernel puts the interface's default qdisc back. False if there was none
    (or no such interface); someone else's qdisc is never touched."""
    with _ipr(netns) as ipr:
        try:
            idx = _link(ipr, ifname)["index"]
        except QosError:
            return False
        if not _is_ours(_root_qdisc(ipr, idx)):
            return False
        return _remove(ipr, idx)


def _remove(ipr: IPRoute, idx: int) -> bool:
    try:
        ipr.tc("del", index=idx, handle=HANDLE, parent=0xFFFFFFFF)
    except NetlinkError as exc:
        if exc.code in (2, 22):   # gone meanwhile
            return False
        raise
    return True


def sync(caps: dict[str, float | None], bands: list[Band], default_minor: int,
         prog_fd: int | None, *, netns: str | None = None) -> int:
    """Every interface of *caps* as install() (a cap) or remove() (None) would
    leave it, with one qdisc dump for all: a hub has thousands of tunnels, and
    each per-interface dump walks every qdisc of the namespace (seconds each
    at 3,000 interfaces). Interfaces without a cap and without our root cost
    nothing. Errors (someone else's root, a missing interface) do not stop the
    other interfaces; they are raised together at the end as one QosError.
    Returns the number of steerd roots removed."""
    errors, removed = [], 0
    with _ipr(netns) as ipr:
        by_index: dict[int, list] = {}
        for q in ipr.get_qdiscs():
            by_index.setdefault(q["index"], []).append(q)
        ours = [i for i, qs in by_index.items() if _is_ours(_root_of(qs))]
        ours_by_name = {ln.get_attr("IFLA_IFNAME"): ln["index"]
                        for i in ours for ln in ipr.get_links(i)}
        for ifname, cap in caps.items():
            try:
                if cap:
                    link = _link(ipr, ifname)
                    _install(ipr, link, by_index.get(link["index"], []), cap, bands,
                             default_minor, prog_fd)
                elif ifname in ours_by_name:
                    removed += _remove(ipr, ours_by_name[ifname])
            except QosError as exc:      # names the interface
                errors.append(str(exc))
            except NetlinkError as exc:
                errors.append(f"{ifname}: {exc}")
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise QosError("; ".join(errors[:3]) + more)
    return removed


def _rates(opts) -> tuple[int, int]:
    parms = opts.get_attr("TCA_HTB_PARMS")
    rate = opts.get_attr("TCA_HTB_RATE64") or parms["rate"]
    ceil = opts.get_attr("TCA_HTB_CEIL64") or parms["ceil"]
    return rate, ceil


def _stats(msg) -> dict:
    out = {"bytes": 0, "packets": 0, "drops": 0, "overlimits": 0, "backlog_bytes": 0,
           "backlog_packets": 0}
    st = msg.get_attr("TCA_STATS2")
    if st is None:
        return out
    basic = st.get_attr("TCA_STATS_BASIC")
    if basic is not None:
        out["bytes"], out["packets"] = basic["bytes"], basic["packets"]
    queue = st.get_attr("TCA_STATS_QUEUE")
    if queue is not None:
        out.update(drops=queue["drops"], overlimits=queue["overlimits"],
                   backlog_bytes=queue["backlog"], backlog_packets=queue["qlen"])
    return out


def read(ifname: str, *, netns: str | None = None) -> dict | None:
    """What is installed on *ifname* (None: no steerd qdisc), for ``steerctl status``:

    ``{"interface", "cap_mbps", "default": "5e:15", "classifier": bool,
       "classes": [{"classid", "band", "priorities", "htb_prio", "rate_mbps",
                    "ceil_mbps", "bytes", "packets", "drops", "overlimits",
                    "backlog_bytes", "backlog_packets"}, ...],
       "bytes", "packets", "drops", "overlimits"}``  (counters since install)
    """
    with _ipr(netns) as ipr:
        try:
            idx = _link(ipr, ifname)["index"]
        except QosError:
            return None
        root = _root_qdisc(ipr, idx)
        if not _is_ours(root):
            return None
        classes = _our_classes(ipr, idx)
        filters = _our_filters(ipr, idx)
        leaf_kinds = {q["parent"]: q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(idx)
                      if q["parent"] >> 16 == MAJOR}
    cap = None
    out_classes = []
    for c in sorted(classes, key=lambda c: c["handle"]):
        opts = c.get_attr("TCA_OPTIONS")
        if opts is None:
            continue
        rate, ceil = _rates(opts)
        minor = c["handle"] & 0xFFFF
        if minor == ROOT_MINOR:
            cap = ceil * 8 / 1e6
            continue
        b = minor - LEAF_MINOR_BASE
        spec = BAND_SPECS[b] if 0 <= b < NBANDS else None
        out_classes.append({
            "classid": fmt_classid(c["handle"]),
            "band": spec.name if spec else None,
            "priorities": f"{spec.lo}-{spec.hi}" if spec else None,
            "htb_prio": opts.get_attr("TCA_HTB_PARMS")["prio"],
            "rate_mbps": rate * 8 / 1e6,
            "ceil_mbps": ceil * 8 / 1e6,
            "qdisc": leaf_kinds.get(c["handle"]),
            **_stats(c),
        })
    total = _stats(root)
    return {
        "interface": ifname,
        "cap_mbps": cap,
        "default": fmt_classid(HANDLE | (_defcls(root) or 0)),
        "classifier": bool(filters),
        "classes": out_classes,
        **{k: total[k] for k in ("bytes", "packets", "drops", "overlimits")},
    }
