"""Quality classes (SLAs) per tunnel and the preference-list decision of a rule (pure).

No clock, no sockets: every call takes ``now``. The daemon feeds each tunnel's
window statistics (the ones ``steerctl status`` shows) to one :class:`SlaTracker`
per tunnel and class, and asks :func:`choose` where a rule's flows go.

In and out of an SLA
--------------------
A tunnel *leaves* a class when its measurements break a limit at every
evaluation for ``leave_hold`` (default 2 s: a probe or two, so voice moves
within ~3 s of the breach showing in the window), or at once when it goes down.
It *re-enters* only after meeting every limit with a margin (latency, jitter
and loss at most 90 % of the limit, MOS 0.1 above it) at every evaluation for
the restore hold: ``restore_hold`` (default 2 min) doubled for each earlier leave
in the last ``DAMPING_PERIOD`` (30 min), at most ``MAX_DAMPING`` times (4 x: 8 min),
fixed when the tunnel leaves.

Why these three guards: near a limit the 10-sample window statistics wander
across it (a 10-probe window at 10 % random loss reads 0 % a third of the
time and 30 % or more a twentieth of it). The margin keeps a tunnel that sits
just over a limit from re-entering on a lucky window; the restore hold asks for
many lucky windows in a row; the doubling makes a tunnel that keeps breaking
the SLA wait ever longer. Leaving stays fast: a brownout moves voice at once;
only the way back is slow. The 10-minute replays in tests/unit/test_sla.py
count the transitions at loss and latency near each limit.

The decision
------------
A rule lists WAN roles in preference order. Its flows go to the first listed
WAN whose tunnel (in the site's active HA role) is up and in the SLA; if none
is, to the up tunnel with the best estimated MOS (ties: list order); if none is
up, to the rule's ``fallback``.

Duplication
-----------
A rule with ``duplicate:`` also sends a copy of each packet on the next-best
tunnel that is up (:func:`choose_copy`): the rule's other listed WANs by the
same order (in the SLA first, in list order; else the best MOS), and when the
rule lists no other WAN that is up, the site's other tunnels in its active HA
role by MOS. ``duplicate: {when_loss_above: X%}`` copies only while the chosen
tunnel's measured loss is above X: on as soon as the probe window shows it,
off once both the window and the longer horizon are at or below X for
``DUP_OFF_HOLD`` (a copy costs bandwidth, not flows: turning it on early and
off late is the cheap side to err on).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .mos import DEFAULT_CODEC, mos_of_stats

LEAVE_HOLD = 2.0          # s of continuous violation before a tunnel leaves a class
RESTORE_HOLD = 120.0      # s of continuous compliance (with margin) before it re-enters
RESTORE_MARGIN = 0.10     # re-enter at <= 90 % of a latency/jitter/loss limit
MOS_MARGIN = 0.1          # ... and at >= min_mos + 0.1
LONG_LOSS_SAMPLES = 30    # the longer loss horizon a loss breach must also show
DAMPING_PERIOD = 1800.0   # s: leaves this recent double the restore hold
MAX_DAMPING = 4           # at most this factor

DUP_OFF_HOLD = 30.0       # s at or below a when_loss_above threshold before copies stop

LIMIT_KEYS = ("max_loss_pct", "max_latency_ms", "max_jitter_ms", "min_mos")


@dataclass(frozen=True)
class SlaLimits:
    """One quality class: any of the four limits (at least one), the codec the
    MOS is estimated for and the hold-downs."""

    max_loss_pct: float | None = None
    max_latency_ms: float | None = None
    max_jitter_ms: float | None = None
    min_mos: float | None = None
    codec: str = DEFAULT_CODEC
    leave_hold: float = LEAVE_HOLD
    restore_hold: float = RESTORE_HOLD

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in LIMIT_KEYS if getattr(self, k) is not None}
        if self.min_mos is not None or self.codec != DEFAULT_CODEC:
            out["codec"] = self.codec
        if self.leave_hold != LEAVE_HOLD:
            out["leave_hold"] = self.leave_hold
        if self.restore_hold != RESTORE_HOLD:
            out["restore_hold"] = self.restore_hold
        return out


@dataclass(frozen=True)
class Measure:
    """A tunnel's window statistics in the units the limits use."""

    loss_pct: float                    # over the window, as status shows it
    latency_ms: float | None
    jitter_ms: float | None
    mos: float | None
    long_loss_pct: float | None = None  # over the last LONG_LOSS_SAMPLES probes

    @staticmethod
    def of(stats, codec: str = DEFAULT_CODEC, long_loss: float | None = None) -> "Measure":
        """From a health.LinkStats (seconds, ratio) and the longer-horizon loss ratio."""
        ms = (lambda s: None if s is None else s * 1000)
        return Measure(stats.loss_ratio * 100, ms(stats.rtt_mean), ms(stats.jitter),
                       mos_of_stats(stats.rtt_mean, stats.jitter, stats.loss_ratio, codec),
                       None if long_loss is None else long_loss * 100)

    def as_dict(self) -> dict:
        r = (lambda v, d: None if v is None else round(v, d))
        return {"loss_pct": r(self.loss_pct, 2), "latency_ms": r(self.latency_ms, 3),
                "jitter_ms": r(self.jitter_ms, 3), "mos": r(self.mos, 2)}


def long_loss_ratio(lost: int, samples: int) -> float | None:
    """The longer-horizon loss from ``LinkMonitor.recent_loss(LONG_LOSS_SAMPLES)``.
    Until half the horizon is there the missing samples count as received: right
    after start three lost probes of eight are not yet a 30 % loss rate."""
    return lost / max(samples, LONG_LOSS_SAMPLES // 2) if samples else None


def _g(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def violations(limits: SlaLimits, m: Measure, margin: bool = False) -> list[str]:
    """The limits *m* breaks, as text (``latency 250 ms > 150 ms``). With *margin*,
    the stricter re-entry limits. An unmeasured value (no reply yet) breaks nothing.

    Loss is a rate, and ten probes measure it coarsely (at 10 % random loss a
    window reads 30 % or more one time in fifteen): a loss breach needs the
    longer horizon over the limit too, and re-entry needs both under it. A
    large breach shows in both within a few lost probes."""
    f = 1 - RESTORE_MARGIN if margin else 1.0
    out = []
    if m.loss_pct is not None and limits.max_loss_pct is not None:
        lim, long = limits.max_loss_pct * f, m.long_loss_pct
        if (m.loss_pct > lim or (long is not None and long > lim)) if margin else \
                (m.loss_pct > lim and (long is None or long > lim)):
            shown = m.loss_pct if m.loss_pct > lim or long is None else long
            out.append(f"loss {_g(shown)} % > {_g(lim)} %")
    for value, limit, name, unit in ((m.latency_ms, limits.max_latency_ms, "latency", "ms"),
                                     (m.jitter_ms, limits.max_jitter_ms, "jitter", "ms")):
        if value is not None and limit is not None and value > limit * f:
            out.append(f"{name} {_g(value)} {unit} > {_g(limit * f)} {unit}")
    if m.mos is not None and limits.min_mos is not None:
        floor = limits.min_mos + (MOS_MARGIN if margin else 0.0)
        if m.mos < floor:
            out.append(f"MOS {m.mos:.2f} < {floor:.2f}")
    return out


@dataclass(frozen=True)
class SlaChange:
    """A tunnel left (``sla_violation``) or re-entered (``sla_restored``) a class."""

    type: str
    tunnel: str
    cls: str
    reason: str
    measured: dict


class SlaTracker:
    """In/out of one class for one tunnel, with the hold-downs (module docstring).

    A tracker starts *in*: no evidence against a tunnel until it is measured."""

    def __init__(self, tunnel: str, cls: str, limits: SlaLimits):
        self.tunnel, self.cls, self.limits = tunnel, cls, limits
        self.in_sla = True
        self.why = ""                      # what broke it, while out
        self._bad_since: float | None = None
        self._good_since: float | None = None
        self._leaves: deque[float] = deque()
        self.hold = limits.restore_hold    # the restore hold of the current stay out

    def _damped_hold(self, now: float) -> float:
        while self._leaves and now - self._leaves[0] > DAMPING_PERIOD:
            self._leaves.popleft()
        return self.limits.restore_hold * min(MAX_DAMPING, 2 ** len(self._leaves))

    def update(self, up: bool, m: Measure | None, now: float) -> SlaChange | None:
        """A new evaluation: *up* is the link state, *m* None while too few samples."""
        if not up:
            self._good_since = None
            if self.in_sla:
                return self._leave("tunnel down", None, now)
            return None
        if m is None:
            return None
        if self.in_sla:
            broken = violations(self.limits, m)
            if not broken:
                self._bad_since = None
                return None
            if self._bad_since is None:
                self._bad_since = now
            if now - self._bad_since >= self.limits.leave_hold:
                return self._leave(", ".join(broken), m, now)
            return None
        broken = violations(self.limits, m, margin=True)
        if broken:
            self._good_since = None
            self.why = ", ".join(broken)
            return None
        if self._good_since is None:
            self._good_since = now
        held = now - self._good_since
        if held >= self.hold:
            self.in_sla, self.why = True, ""
            self._good_since = None
            return SlaChange("sla_restored", self.tunnel, self.cls,
                             f"within {self.cls} for {_g(held)} s", m.as_dict())
        return None

    def _leave(self, why: str, m: Measure | None, now: float) -> SlaChange:
        self.in_sla, self.why = False, why
        self._bad_since = self._good_since = None
        self.hold = self._damped_hold(now)
        self._leaves.append(now)
        return SlaChange("sla_violation", self.tunnel, self.cls, why,
                         m.as_dict() if m is not None else {})


@dataclass(frozen=True)
class Candidate:
    """One listed WAN of a rule, as the decision sees it."""

    wan: str
    tunnel: int | None         # its tunnel in the site's active HA role (None: none)
    name: str = ""
    up: bool = False
    in_sla: bool = True        # True for rules without an SLA
    mos: float | None = None
    why: str = ""              # why it is out of the SLA


@dataclass(frozen=True)
class Choice:
    tunnel: int | None         # None: the rule's fallback applies
    wan: str | None
    kind: str                  # "preferred" | "sla" | "best" | "fallback"
    reason: str = field(compare=False, default="")


def choose(cands: Sequence[Candidate], cls: str | None = None) -> Choice:
    """Where a rule's flows go: the decision table of the module docstring."""
    skipped = []
    for i, c in enumerate(cands):
        if c.tunnel is None or not c.up:
            skipped.append(f"{c.wan} down" if c.tunnel is not None else f"{c.wan} has no tunnel")
        elif c.in_sla:
            if i == 0:
                what = f"first choice, meets {cls}" if cls else "first choice, up"
                return Choice(c.tunnel, c.wan, "preferred", what)
            meets = f" and meets {cls}" if cls else ""
            return Choice(c.tunnel, c.wan, "sla" if cls else "preferred",
                          f"{'; '.join(skipped)}; {c.wan} is up{meets}")
        else:
            skipped.append(f"{c.wan} out of {cls} ({c.why})" if c.why else f"{c.wan} out of {cls}")
    up = [(i, c) for i, c in enumerate(cands) if c.tunnel is not None and c.up]
    if not up:
        return Choice(None, None, "fallback", "; ".join(skipped) + ": fallback")
    _, best = max(up, key=lambda ic: (ic[1].mos if ic[1].mos is not None else -1.0, -ic[0]))
    mos = f"MOS {best.mos:.2f}" if best.mos is not None else "not measured yet"
    return Choice(best.tunnel, best.wan, "best",
                  f"none meets {cls}: {best.wan} has the best quality ({mos})")


def choose_copy(cands: Sequence[Candidate], chosen: int | None,
                others: Sequence[Candidate] = ()) -> Candidate | None:
    """Where a duplicated rule's copies go: the next-best up tunnel after
    *chosen* (module docstring). *cands*: the rule's listed WANs; *others*: the
    site's other tunnels in its active HA role. None: nowhere (no copy)."""
    if chosen is None:
        return None
    rest = [(i, c) for i, c in enumerate(cands) if c.tunnel is not None and c.up
            and c.tunnel != chosen]
    for _, c in rest:
        if c.in_sla:
            return c
    pool = rest or [(i, c) for i, c in enumerate(others) if c.tunnel is not None and c.up
                    and c.tunnel != chosen]
    if not pool:
        return None
    return max(pool, key=lambda ic: (ic[1].mos if ic[1].mos is not None else -1.0, -ic[0]))[1]


@dataclass(frozen=True)
class DupChange:
    """A ``when_loss_above`` rule started (``duplication_on``) or stopped
    (``duplication_off``) copying its packets."""

    type: str
    rule: str
    site: int
    tunnel: str
    copy: str | None
    reason: str
    loss_pct: float | None


@dataclass
class _DupState:
    on: bool = False
    good_since: float | None = None


@dataclass(frozen=True)
class TunnelView:
    """What the plan needs of a tunnel at an evaluation."""

    name: str
    wan: str
    up: bool                   # state != down
    stats: object | None       # health.LinkStats, None while too few samples
    long_loss: float | None = None   # loss ratio over the last LONG_LOSS_SAMPLES probes


class QualityPlan:
    """The daemon's quality decisions for one rule set (pure; ``now`` passed in).

    One :class:`SlaTracker` per tunnel and class in use, one :class:`Choice` per
    distinct ``wan_key`` (rules with the same list and class share it). The
    daemon calls :meth:`evaluate` after every probe round and, when it returns
    True, rewrites the data path's wan table with :meth:`resolved`: no rule is
    recompiled. ``rules`` are steerd.rules.Rule objects (duck-typed here)."""

    def __init__(self, rules: Sequence, classes: dict[str, SlaLimits]):
        self.entries: dict[str, tuple[tuple[str, ...], str | None, SlaLimits | None]] = {}
        # duplicated rules: wan_key -> (rule name, loss threshold % or None = always)
        self.dups: dict[str, tuple[str, float | None]] = {}
        for r in rules:
            if r.quality and r.wan_key not in self.entries:
                limits = classes[r.sla] if isinstance(r.sla, str) else r.sla
                self.entries[r.wan_key] = (r.choices, r.sla_class, limits)
            if r.duplicate:
                self.dups[r.wan_key] = (r.name, r.dup_loss_above)
        self.classes = {cls: lim for _, cls, lim in self.entries.values() if cls is not None}
        self.trackers: dict[tuple[str, str], SlaTracker] = {}
        self._mos: dict[tuple[str, str], float | None] = {}     # (tunnel, class) -> last MOS
        self.choices: dict[tuple[int, str], Choice] = {}        # (site, wan_key) -> choice
        self.copy: dict[tuple[int, str], Candidate | None] = {}  # (site, wan_key) -> copy to
        self._dup: dict[tuple[int, str], _DupState] = {}
        self.dup_changes: list[DupChange] = []     # for the daemon's events (it empties it)

    def carry_over(self, old: "QualityPlan") -> None:
        """Keep the in/out state of the trackers a reload leaves unchanged (and
        whether an unchanged duplicated rule copies)."""
        for key, tr in old.trackers.items():
            if self.classes.get(key[1]) == tr.limits:
                self.trackers[key] = tr
        for (site, key), st in old._dup.items():
            if self.dups.get(key) == old.dups.get(key):
                self._dup[site, key] = st

    def evaluate(self, tunnels: Sequence[TunnelView], active: dict[str, int],
                 now: float) -> tuple[bool, list[SlaChange]]:
        """One site: :meth:`track` then :meth:`decide`. Returns (a decision
        changed, the SLA transitions)."""
        changes = self.track(tunnels, now)
        return self.decide(tunnels, active, now=now), changes

    def track(self, tunnels: Sequence[TunnelView], now: float) -> list[SlaChange]:
        """Update every tunnel's tracker of every class in use (once per round:
        tunnel names are unique on the gateway, whatever the site)."""
        changes: list[SlaChange] = []
        for cls, limits in self.classes.items():
            for t in tunnels:
                m = Measure.of(t.stats, limits.codec, t.long_loss) if t.stats is not None else None
                self._mos[t.name, cls] = m.mos if m else None
                tr = self.trackers.get((t.name, cls))
                if tr is None:
                    tr = self.trackers[t.name, cls] = SlaTracker(t.name, cls, limits)
                c = tr.update(t.up, m, now)
                if c is not None:
                    changes.append(c)
        return changes

    def _candidate(self, wan: str, i: int | None, tunnels: Sequence[TunnelView],
                   cls: str | None) -> Candidate:
        if i is None:
            return Candidate(wan, None)
        t = tunnels[i]
        tr = self.trackers.get((t.name, cls)) if cls else None
        if cls:
            mos = self._mos.get((t.name, cls))
        else:   # a duplicated rule without a class still ranks its copy tunnels
            mos = Measure.of(t.stats).mos if t.stats is not None else None
        return Candidate(wan, i, t.name, t.up, tr.in_sla if tr else True, mos,
                         tr.why if tr else "")

    def decide(self, tunnels: Sequence[TunnelView], active: dict[str, int], site: int = 0,
               now: float = 0.0) -> bool:
        """Each quality rule's choice for one *site*. *active*: wan role -> index
        (in *tunnels*) of the site's tunnel of that role in its active HA role; the
        choice's tunnel is that index. True when a choice (or a copy) changed."""
        changed = False
        for key, (choices, cls, _) in self.entries.items():
            cands = [self._candidate(wan, active.get(wan), tunnels, cls) for wan in choices]
            choice = choose(cands, cls)
            if self.choices.get((site, key)) != choice:
                changed = True
            self.choices[site, key] = choice
            if key in self.dups:
                others = [self._candidate(wan, i, tunnels, cls) for wan, i in active.items()
                          if wan not in choices]
                copy = choose_copy(cands, choice.tunnel, others)
                if not self._copying(site, key, choice, tunnels, copy, now):
                    copy = None
                if self.copy.get((site, key)) != copy:
                    changed = True
                self.copy[site, key] = copy
        return changed

    def _copying(self, site: int, key: str, choice: Choice, tunnels: Sequence[TunnelView],
                 copy: Candidate | None, now: float) -> bool:
        """Whether a duplicated rule copies now: always, or per its loss threshold."""
        name, above = self.dups[key]
        if above is None:
            return True
        st = self._dup.setdefault((site, key), _DupState())
        t = tunnels[choice.tunnel] if choice.tunnel is not None else None
        loss = t.stats.loss_ratio * 100 if t is not None and t.stats is not None else None
        long = t.long_loss * 100 if t is not None and t.long_loss is not None else None
        was = st.on
        if loss is not None and loss > above:
            st.on, st.good_since = True, None
        elif st.on and (long is None or long <= above):
            if st.good_since is None:
                st.good_since = now
            if now - st.good_since >= DUP_OFF_HOLD:
                st.on, st.good_since = False, None
        else:
            st.good_since = None
        if st.on != was:
            tname = t.name if t is not None else "-"
            why = (f"loss {_g(loss)} % > {_g(above)} %" if st.on else
                   f"loss at or below {_g(above)} % for {_g(DUP_OFF_HOLD)} s")
            self.dup_changes.append(DupChange("duplication_on" if st.on else "duplication_off",
                                              name, site, tname,
                                              copy.name if copy is not None else None, why, loss))
        return st.on

    def copies(self, site: int = 0) -> dict[str, int]:
        """One site's duplicated rules that copy now: wan_key -> copy tunnel index."""
        return {key: c.tunnel for (s, key), c in self.copy.items()
                if s == site and c is not None and c.tunnel is not None}

    def resolved(self, site: int = 0) -> dict[str, int | None]:
        """One site's wan-table entries of the quality rules (None: fallback)."""
        return {key: c.tunnel for (s, key), c in self.choices.items() if s == site}

    def explain(self, wan_key: str, names: Sequence[str], site: int = 0) -> dict:
        """Where a quality rule's flows go now and why (``steerctl rules list``)."""
        c = self.choices.get((site, wan_key))
        if c is None:
            return {"now": None, "decision": "pending", "why": "not evaluated yet"}
        out = {"now": names[c.tunnel] if c.tunnel is not None else None, "now_wan": c.wan,
               "decision": c.kind, "why": c.reason}
        if wan_key in self.dups:
            copy = self.copy.get((site, wan_key))
            out["copy"] = names[copy.tunnel] if copy is not None else None
            if copy is not None:
                out["why"] += f"; a copy of each packet on {names[copy.tunnel]}"
        return out

    def sla_states(self) -> list[tuple[str, str, bool]]:
        """(tunnel, class, in SLA) for every tracker, for metrics."""
        return [(t, cls, tr.in_sla) for (t, cls), tr in sorted(self.trackers.items())]
