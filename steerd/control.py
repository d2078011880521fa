"""The control socket used by steerctl: one JSON request line, JSON reply line(s).

    {"cmd": "status", "site": name?}           -> {"ok": true, "status": {...}}
    {"cmd": "events", "since": 0, "follow": b} -> {"ok": true, "events": [...]} then one line per event
    {"cmd": "rules_list", "site": NAME (optional)} / {"cmd": "rules_apply", "text": ..., "path": ..., "dry_run": b} / {"cmd": "reload"}
    {"cmd": "tunnel_drain" | "tunnel_undrain", "tunnel": NAME}

The socket is root-owned, mode 0660 with the configured group: members may
read; commands that change state need uid 0 (checked with SO_PEERCRED).
Oversized, malformed or unknown requests get an error reply, never a crash.
"""
from __future__ import annotations

import asyncio
import fcntl
import grp
import json
import logging
import os
import socket
import stat
import struct
import time
from typing import Any

from . import status

log = logging.getLogger("steerd.control")
MAX_REQUEST = 4 << 20        # root: a 10,000-rule file is ~1.5 MB of YAML
MAX_REQUEST_USER = 16 << 10  # group members only read: their requests are small
MAX_CLIENTS = 64             # connections at once; beyond, new ones are refused at once
MAX_CLIENTS_PER_USER = 8     # per non-root uid: a group member cannot take the daemon's fds
ROOT_RESERVED = 16           # of MAX_CLIENTS, never given to non-root users
READ_TIMEOUT = 10.0          # to send the request line
WRITE_TIMEOUT = 10.0         # a follower that stops reading is dropped after this
WRITE_COMMANDS = {"rules_apply", "reload", "tunnel_drain", "tunnel_undrain"}


class AlreadyRunning(RuntimeError):
    """Another steerd serves this control socket."""


class ControlSocket:
    """The listening socket plus the lock that makes it this daemon's alone."""

    def __init__(self, server: asyncio.AbstractServer, path: str, lock_fd: int):
        self.server, self.path, self.lock_fd = server, path, lock_fd

    def close(self) -> None:
        self.server.close()
        try:
            os.unlink(self.path)     # ours: we hold the lock
        except OSError:
            pass
        os.close(self.lock_fd)


def acquire(path: str) -> int:
    """One daemon per control socket: an flock on <socket>.lock, held while running
    (the kernel drops it when the process dies, however it dies)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another steerd is running on {path} (it holds {path}.lock)") \
            from None
    return fd


async def serve(daemon, path: str, group: str | None, lock_fd: int) -> ControlSocket:
    """Listen on *path*; *lock_fd* is acquire(path)'s, taken before the daemon
    touched anything."""
    try:
        if os.path.lexists(path):
            # stale (we hold the lock); but never remove something that is not a socket
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise AlreadyRunning(f"{path} exists and is not a socket: not removing it")
            os.unlink(path)
    except BaseException:
        os.close(lock_fd)
        raise
    clients = Clients()
    server = await asyncio.start_unix_server(lambda r, w: _client(daemon, r, w, clients),
                                             path=path, limit=MAX_REQUEST)
    try:
        gid = grp.getgrnam(group).gr_gid if group else None
    except KeyError:
        log.error("control_group %r does not exist: socket is root-only (mode 0600)", group)
        gid = None
    os.chown(path, 0, gid or 0)
    os.chmod(path, 0o660 if gid is not None else 0o600)
    return ControlSocket(server, path, lock_fd)


class Clients:
    """Open connections, in total and per uid (root is only held to the total)."""

    def __init__(self) -> None:
        self.total = 0
        self.by_uid: dict[int, int] = {}

    def admit(self, uid: int) -> str | None:
        """Count a new connection in, or say why it is refused. Non-root users
        together leave ROOT_RESERVED connections free, so root always gets in."""
        users = self.total - self.by_uid.get(0, 0)
        if self.total >= MAX_CLIENTS or (uid != 0 and users >= MAX_CLIENTS - ROOT_RESERVED):
            return f"too many connections ({self.total}); try again"
        if uid != 0 and self.by_uid.get(uid, 0) >= MAX_CLIENTS_PER_USER:
            return f"too many connections from uid {uid} ({MAX_CLIENTS_PER_USER})"
        self.total += 1
        self.by_uid[uid] = self.by_uid.get(uid, 0) + 1
        return None

    def leave(self, uid: int) -> None:
        self.total -= 1
        self.by_uid[uid] -= 1
        if not self.by_uid[uid]:
            del self.by_uid[uid]


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
    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)


async def _read_request(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """The request line, or None when it is longer than *limit* (never buffering more)."""
    buf = bytearray()
    while len(buf) <= limit:
        chunk = await reader.read(limit + 1 - len(buf))
        if not chunk:
            break
        buf += chunk
        if b"\n" in chunk:
            return bytes(buf)
    return None if len(buf) > limit else bytes(buf)


class BadRequest(ValueError):
    """A request that is not what the protocol says: answered, never a traceback."""


def _parse(line: bytes) -> dict[str, Any]:
    try:
        req = json.loads(line)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        raise BadRequest("expected a JSON object with a string 'cmd'")
    for key, kind in (("since", (int, float, str, type(None))), ("follow", (bool, type(None))),
                      ("dry_run", (bool, type(None))), ("text", (str, type(None))),
                      ("path", (str, type(None)))):
        if not isinstance(req.get(key), kind):
            raise BadRequest(f"{key!r} has the wrong type")
    try:
        float(req.get("since") or 0)
    except ValueError:
        raise BadRequest("'since' must be a number (unix time)") from None
    return req


async def _client(daemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  clients: Clients) -> None:
    # who is asking, before reading a byte: the caps and the request limit depend on it
    try:
        uid = _peer_uid(writer)
    except OSError:
        writer.close()
        return
    refused = clients.admit(uid)
    if refused:
        try:
            writer.write(json.dumps({"ok": False, "error": refused}).encode() + b"\n")
        finally:
            writer.close()
        return
    try:
        limit = MAX_REQUEST if uid == 0 else MAX_REQUEST_USER
        line = await asyncio.wait_for(_read_request(reader, limit), READ_TIMEOUT)
        if line is None:
            await _reply(writer, {"ok": False, "error": f"request larger than {limit} bytes"})
            await _discard(reader)
            return
        try:
            req = _parse(line)
        except BadRequest as exc:
            await _reply(writer, {"ok": False, "error": f"bad request: {exc}"})
            return
        cmd = req["cmd"]
        if cmd in WRITE_COMMANDS and uid != 0:
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
        except (ConnectionError, asyncio.TimeoutError):
            pass
    finally:
        clients.leave(uid)
        writer.close()


async def handle(daemon, cmd: str, req: dict[str, Any]) -> dict[str, Any]:
    if cmd == "status":
        site = req.get("site")
        await daemon.refresh_flow_counts()
        snap, readings = daemon.view()
        if site is not None and site not in {s.name for s in snap.sites}:
            return {"ok": False, "error": f"no site {site!r} (steerctl status lists them)"}
        return {"ok": True, "status": status.build(snap, readings, site)}
    if cmd == "events":
        since = float(req.get("since") or 0)
        return {"ok": True, "events": [e.as_dict() for e in daemon.events.since(since)]}
    if cmd == "rules_list":
        site = req.get("site")
        if site is not None and site not in {s.name for s in daemon.cfg.sites}:
            return {"ok": False, "error": f"no site {site!r} (steerctl status lists them)"}
        return {"ok": True, "rules": status.rules(daemon, site)}
    if cmd == "rules_apply":
        text, path = req.get("text"), str(req.get("path") or "<steerctl>")
        if not isinstance(text, str):
            return {"ok": False, "error": "rules_apply needs 'text' (the rules file content)"}
        return await daemon.rules_apply(text, path, bool(req.get("dry_run")))
    if cmd == "reload":
        return await daemon.reload()
    if cmd in ("tunnel_drain", "tunnel_undrain"):
        return daemon.set_drained(str(req.get("tunnel")), cmd == "tunnel_drain")
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
