"""Operator events: a bounded in-memory log, a JSON-lines file, and live followers.

Every event is also logged. Identical events (same type, tunnel and reason)
within `debounce` seconds are counted into the first instead of repeated, so a
flapping input cannot flood the log.

Emitting never raises: events are called from the loops that fail over, and a
full disk under the events file (ENOSPC), EMFILE or a removed directory must
not stop them. Such errors are logged (at most once a minute) and counted.
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
         "rules_applied", "rebalance", "config_reloaded", "config_rejected", "reload_failed",
         "loop_error", "started", "sa_installed", "qos_failed", "sla_violation", "sla_restored",
         "duplication_on", "duplication_off")
FILE_MAX_BYTES = 16 << 20   # then the file is renamed to <file>.1 (one old generation kept)
ERROR_LOG_INTERVAL = 60.0


@dataclass
class Event:
    type: str
    reason: str
    tunnel: str | None = None
    ts: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)
    mono: float = field(default_factory=time.monotonic)   # debounce: immune to clock steps

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
    def __init__(self, keep: int = 1000, path: str | None = None, debounce: float = 5.0,
                 max_bytes: int = FILE_MAX_BYTES):
        self.events: deque[Event] = deque(maxlen=keep)
        self.path = path
        self.debounce = debounce
        self.max_bytes = max_bytes
        self.followers: set[asyncio.Queue] = set()
        self.counts: dict[str, int] = {}
        self.write_errors = 0
        self._error_logged_at = -ERROR_LOG_INTERVAL
        if path:
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            except OSError as exc:
                self._write_failed(exc)

    def emit(self, type: str, reason: str, tunnel: str | None = None, **extra: Any) -> Event | None:
        try:
            return self._emit(type, reason, tunnel, extra)
        except Exception:   # an event is never worth a stopped failover loop
            log.exception("event %s (%s) not recorded", type, reason)
            return None

    def _emit(self, type: str, reason: str, tunnel: str | None, extra: dict[str, Any]) -> Event | None:
        now = time.monotonic()
        last = self.events[-1] if self.events else None
        if (last and last.type == type and last.tunnel == tunnel and last.reason == reason
                and now - last.mono < self.debounce and type != "rebalance"):
            last.extra["repeated"] = last.extra.get("repeated", 1) + 1
            return None
        ev = Event(type, reason, tunnel, time.time(), extra, now)
        self.events.append(ev)
        self.counts[type] = self.counts.get(type, 0) + 1
        line = json.dumps(ev.as_dict(), default=str)
        log.info("event %s", line)
        if self.path:
            self._write(line)
        for q in list(self.followers):
            if q.qsize() < 1000:  # a stuck follower must not grow memory without bound
                q.put_nowait(ev)
        return ev

    def _write(self, line: str) -> None:
        try:
            try:
                if os.stat(self.path).st_size >= self.max_bytes:
                    os.replace(self.path, self.path + ".1")
            except FileNotFoundError:
                pass
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as exc:
            self._write_failed(exc)

    def _write_failed(self, exc: OSError) -> None:
        self.write_errors += 1
        now = time.monotonic()
        if now - self._error_logged_at >= ERROR_LOG_INTERVAL:
            self._error_logged_at = now
            log.error("events file %s not written (%s); events stay in memory and the log "
                      "(%d write errors so far)", self.path, exc, self.write_errors)

    def since(self, ts: float = 0.0) -> list[Event]:
        return [e for e in self.events if e.ts >= ts]

    def follow(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.followers.add(q)
        return q

    def unfollow(self, q: asyncio.Queue) -> None:
        self.followers.discard(q)
