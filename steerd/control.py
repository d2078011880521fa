"""The control socket used by steerctl: one JSON request line, JSON reply line(s).

    {"cmd": "status"}                          -> {"ok": true, "status": {...}}
    {"cmd": "events", "since": 0, "follow": b} -> {"ok": true, "events": [...]} then one line per event
    {"cmd": "rules_list"} / {"cmd": "rules_apply", "text": ..., "path": ..., "dry_run": b} / {"cmd": "reload"}

The socket is root-owned, mode 0660 with the configured group: members may
read; commands that change state need uid 0 (checked with SO_PEERCRED).
Oversized, malformed or unknown requests get an error reply, never a crash.
"""
from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import socket
import struct
import time
from typing import Any

from . import status

log = logging.getLogger("steerd.control")
MAX_REQUEST = 4 << 20   # a 10,000-rule file is ~1.5 MB of YAML
WRITE_COMMANDS = {"rules_apply", "reload"}


async def serve(daemon, path: str, group: str | None) -> asyncio.AbstractServer:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(lambda r, w: _client(daemon, r, w), path=path,
                                             limit=MAX_REQUEST)
    try:
        gid = grp.getgrnam(group).gr_gid if group else None
    except KeyError:
        log.error("control_group %r does not exist: socket is root-only (mode 0600)", group)
        gid = None
    os.chown(path, 0, gid or 0)
    os.chmod(path, 0o660 if gid is not None else 0o600)
    return server


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


async def _discard(reader: asyncio.StreamReader, seconds: float = 1.0) -> None:
    """Swallow the rest of a refused request for a moment, so the client reads
    our error instead of a connection reset."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(1 << 16):
                pass
    except TimeoutError:
        pass


async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj).encode() + b"\n")
    await writer.drain()


async def _client(daemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
        except (asyncio.LimitOverrunError, ValueError):
            await _reply(writer, {"ok": False, "error": f"request larger than {MAX_REQUEST} bytes"})
            await _discard(reader)
            return
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ValueError("expected a JSON object with a string 'cmd'")
        except ValueError as exc:
            await _reply(writer, {"ok": False, "error": f"bad request: {exc}"})
            return
        cmd = req["cmd"]
        if cmd in WRITE_COMMANDS and _peer_uid(writer) != 0:
            await _reply(writer, {"ok": False, "error": f"{cmd} needs root"})
            return
        if cmd == "events" and req.get("follow"):
            await _follow(daemon, req, writer)
            return
        await _reply(writer, await handle(daemon, cmd, req))
    except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        pass
    except Exception as exc:  # a bug in one request must not take the daemon down
        log.exception("control request failed")
        try:
            await _reply(writer, {"ok": False, "error": f"internal error: {exc}"})
        except ConnectionError:
            pass
    finally:
        writer.close()


async def handle(daemon, cmd: str, req: dict[str, Any]) -> dict[str, Any]:
    if cmd == "status":
        await daemon.refresh_flow_counts()
        return {"ok": True, "status": status.build(daemon)}
    if cmd == "events":
        since = float(req.get("since") or 0)
        return {"ok": True, "events": [e.as_dict() for e in daemon.events.since(since)]}
    if cmd == "rules_list":
        return {"ok": True, "rules": status.rules(daemon)}
    if cmd == "rules_apply":
        text, path = req.get("text"), str(req.get("path") or "<steerctl>")
        if not isinstance(text, str):
            return {"ok": False, "error": "rules_apply needs 'text' (the rules file content)"}
        return await daemon.rules_apply(text, path, bool(req.get("dry_run")))
    if cmd == "reload":
        return await daemon.reload()
    return {"ok": False, "error": f"unknown command {cmd!r}"}


async def _follow(daemon, req: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    q = daemon.events.follow()
    try:
        for e in daemon.events.since(float(req.get("since") or time.time())):
            await _reply(writer, e.as_dict())
        while True:
            ev = await q.get()
            await _reply(writer, ev.as_dict())
    finally:
        daemon.events.unfollow(q)
