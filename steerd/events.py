"""Operator events: a bounded in-memory log, a JSON-lines file, and live followers.

Every event is also logged. Identical events (same type, tunnel and reason)
within `debounce` seconds are counted into the first instead of repeated, so a
flapping input cannot flood the log.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("steerd.events")

TYPES = ("link_down", "link_up", "link_degraded", "ha_failover", "ha_failback", "all_down",
         "rules_applied", "rebalance", "config_reloaded", "config_rejected", "started")


@dataclass
class Event:
    type: str
    reason: str
    tunnel: str | None = None
    ts: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ts": datetime.fromtimestamp(self.ts, timezone.utc).isoformat(timespec="milliseconds"),
            "type": self.type,
            "tunnel": self.tunnel,
            "reason": self.reason,
        }
        d.update(self.extra)
        return d


class EventLog:
    def __init__(self, keep: int = 1000, path: str | None = None, debounce: float = 5.0):
        self.events: deque[Event] = deque(maxlen=keep)
        self.path = path
        self.debounce = debounce
        self.followers: set[asyncio.Queue] = set()
        self.counts: dict[str, int] = {}
        if path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def emit(self, type: str, reason: str, tunnel: str | None = None, **extra: Any) -> Event | None:
        now = time.time()
        last = self.events[-1] if self.events else None
        if (last and last.type == type and last.tunnel == tunnel and last.reason == reason
                and now - last.ts < self.debounce and type != "rebalance"):
            last.extra["repeated"] = last.extra.get("repeated", 1) + 1
            return None
        ev = Event(type, reason, tunnel, now, extra)
        self.events.append(ev)
        self.counts[type] = self.counts.get(type, 0) + 1
        line = json.dumps(ev.as_dict())
        log.info("event %s", line)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        for q in list(self.followers):
            if q.qsize() < 1000:  # a stuck follower must not grow memory without bound
                q.put_nowait(ev)
        return ev

    def since(self, ts: float = 0.0) -> list[Event]:
        return [e for e in self.events if e.ts >= ts]

    def follow(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.followers.add(q)
        return q

    def unfollow(self, q: asyncio.Queue) -> None:
        self.followers.discard(q)
