"""The optional `ipsec:` section of the site config, and `steerctl ipsec render`:
a strongSwan swanctl.conf for the gateway's IKEv2 tunnels, one connection per
steerd tunnel, each bound to its XFRM interface by ``if_id``.

```yaml
ipsec:
  connection_mode: responder-only      # responder-only (default) | bidirectional
  local_id: {fqdn: pop.example.net}    # one of ipv4 | fqdn | email | key_id
  secrets_file: /etc/steerd/ipsec-secrets.yaml   # mode 0600: tunnel name (or default) -> PSK
  proposals:
    init: automatic                    # IKE_SA_INIT: automatic | {encryption, integrity, prf, dh_group} | [...]
    auth: automatic                    # IKE_AUTH / CHILD SA (ESP): automatic | {encryption, integrity, dh_group}
  local_ts: [0.0.0.0/0]                # optional; default 0.0.0.0/0 and ::/0
  dpd_delay: 10s                       # optional, 0 = off
  tunnels:                             # optional, per steerd tunnel name
    pri-wan1:
      remote_id: {fqdn: wan1.branch-01.example.net}   # default: {ipv4: <the tunnel's public_ip>}
      local_addr: 203.0.113.1          # default: any
      if_id: 1                         # default: the tunnel's position in `tunnels` + 1
```

* **responder-only**: the site initiates; the gateway never does (`start_action = none`,
  dead peers are cleared). Any identifier type works.
* **bidirectional**: either side initiates (`start_action = start`, dead peers restarted);
  only with an IPv4 local identifier (the seed's rule: the responder must be able to find
  the connection by address before any identity is exchanged).
* **Traffic selectors**: the remote side's are the config's `network_ranges` plus each
  tunnel's `probe_target` (so probes pass the tunnel's policy); none = route-based
  (0.0.0.0/0 and ::/0).
* **Secrets** are read from ``secrets_file`` (YAML mapping; must be mode 0600, owned by
  the caller or root), are never logged or put into an error message, and appear in the
  output only with ``show_secrets`` (encoded as ``0s<base64>``); without it the secrets
  section is left out and a comment says so. ``steerctl ipsec render --show-secrets``
  writes them to ``--output FILE`` (mode 0600) or a pipe, never onto a terminal.

The section is checked with the config (steerd.schema's kit, every problem with its
line) into an :class:`IpsecConfig`; rendering takes that typed section and reads no
config file. Pure except for reading the secrets file; no strongSwan needed to render.
"""
from __future__ import annotations

import base64
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml

from .schema import (BAD, Checker, Conv, Field, Network, abspath, any_address, build, choice,
                     claim, did_you_mean, duration, integer, join, network, section)
from .units import format_duration
from .yamlsrc import Node, Problem, ValidationError

MODES = ("responder-only", "bidirectional")
ID_TYPES = ("ipv4", "fqdn", "email", "key_id")
_ID_PREFIX = {"ipv4": "ipv4:", "fqdn": "fqdn:", "email": "email:", "key_id": "keyid:"}
MIN_PSK_LEN = 8

# Algorithm names strongSwan accepts, by role (a deliberately common subset).
ENCRYPTION = ("aes128", "aes192", "aes256", "aes128gcm16", "aes192gcm16", "aes256gcm16",
              "chacha20poly1305", "3des")
AEAD = frozenset(a for a in ENCRYPTION if "gcm" in a or "poly1305" in a)
INTEGRITY = ("sha1", "sha256", "sha384", "sha512", "aesxcbc", "md5")
PRF = ("prfsha1", "prfsha256", "prfsha384", "prfsha512", "prfaesxcbc", "prfmd5")
DH_GROUPS = {2: "modp1024", 5: "modp1536", 14: "modp2048", 15: "modp3072", 16: "modp4096",
             18: "modp8192", 19: "ecp256", 20: "ecp384", 21: "ecp521", 31: "curve25519", 32: "curve448"}
DH_NAMES = frozenset(DH_GROUPS.values())
_FQDN_RE = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)"
                      r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?")
_EMAIL_RE = re.compile(r"[^@\s\"]+@[^@\s\"]+")
_SAFE_RE = re.compile(r"[^\"\\\n\r{}#]+")   # what goes inside a swanctl.conf "quoted" value
HIDDEN = "<hidden>"


# ---------------------------------------------------------------------- model

@dataclass(frozen=True)
class Identity:
    """An IKE identity as written ({fqdn: pop.example.net})."""

    type: str                         # one of ID_TYPES
    value: str

    def swanctl(self) -> str:
        return f"{_ID_PREFIX[self.type]}{self.value}"


@dataclass(frozen=True)
class Proposal:
    """One IKE or ESP proposal, in strongSwan's names (prf and DH group resolved)."""

    encryption: str
    integrity: str | None = None
    prf: str | None = None
    dh_group: str | None = None

    def swanctl(self) -> str:
        return "-".join(p for p in (self.encryption, self.integrity, self.prf, self.dh_group) if p)


@dataclass(frozen=True)
class IpsecTunnel:
    """Per-tunnel settings; None = the default (see the module docstring)."""

    remote_id: Identity | None = None
    local_addr: str | None = None
    if_id: int | None = None


@dataclass(frozen=True)
class IpsecConfig:
    """The validated `ipsec:` section."""

    local_id: Identity
    secrets_file: str
    connection_mode: str = "responder-only"
    init: tuple[Proposal, ...] = ()   # IKE_SA_INIT proposals; () = strongSwan's defaults
    auth: tuple[Proposal, ...] = ()   # CHILD SA (ESP) proposals; () = defaults
    local_ts: tuple[Network, ...] = ()   # () = 0.0.0.0/0 and ::/0
    dpd_delay: float = 10.0           # seconds, 0 = off
    tunnels: dict[str, IpsecTunnel] = field(default_factory=dict, hash=False)

    @property
    def bidirectional(self) -> bool:
        return self.connection_mode == "bidirectional"

    def if_ids(self, tunnel_names: Sequence[str]) -> dict[str, int]:
        """Each tunnel's if_id: explicit in `ipsec.tunnels.<name>.if_id`, else position + 1."""
        out = {}
        for i, name in enumerate(tunnel_names):
            t = self.tunnels.get(name)
            out[name] = t.if_id if t is not None and t.if_id is not None else i + 1
        return out


# ----------------------------------------------------------------- validation

_ID_EXPECTED = {
    "ipv4": "an IPv4 address",
    "fqdn": "a domain name such as pop.example.net",
    "email": "an email address such as vpn@example.net",
    "key_id": "a key identifier: a non-empty string without quotes, braces or #",
}


def _identity(ck: Checker, n: Node, key: str) -> Any:
    """An identifier `{type: value}`."""
    if n.tag != "map" or len(n.value) != 1:
        return ck.fail(n, key, n.plain(),
                       "one identifier as {TYPE: VALUE}, TYPE one of ipv4, fqdn, email, key_id")
    (id_type, vn), = n.value.items()
    if id_type not in ID_TYPES:
        return ck.fail(vn, key, id_type, "an identifier type: ipv4, fqdn, email or key_id"
                       + did_you_mean(id_type, ID_TYPES))
    if id_type == "ipv4":
        value = any_address(4, _ID_EXPECTED["ipv4"])(ck, vn, f"{key}.ipv4")
        return BAD if value is BAD else Identity(id_type, value)
    value = vn.value
    ok = vn.tag == "scalar" and isinstance(value, str) and bool(value) and _SAFE_RE.fullmatch(value)
    if ok and id_type == "fqdn":
        ok = bool(_FQDN_RE.fullmatch(value))
    elif ok and id_type == "email":
        ok = bool(_EMAIL_RE.fullmatch(value))
    if not ok:
        return ck.fail(vn, f"{key}.{id_type}", vn.plain(), _ID_EXPECTED[id_type])
    return Identity(id_type, value)


def _dh_name(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return DH_GROUPS.get(value)
    if isinstance(value, str):
        if value in DH_NAMES:
            return value
        if value.isascii() and value.isdigit():     # "²".isdigit() too, and int() refuses it
            return DH_GROUPS.get(int(value))
    return None


def _dh_group(ck: Checker, n: Node, key: str) -> Any:
    name = _dh_name(n.value) if n.tag == "scalar" else None
    return name or ck.fail(n, key, n.plain(), "a Diffie-Hellman group: " +
                           ", ".join(f"{k} ({v})" for k, v in DH_GROUPS.items()))


def _prf(ck: Checker, n: Node, key: str) -> Any:
    v = n.value
    if n.tag == "scalar" and isinstance(v, str) and (v in PRF or f"prf{v}" in PRF):
        return v if v.startswith("prf") else f"prf{v}"
    return ck.fail(n, key, n.plain(), f"one of {', '.join(PRF)}")


_PROPOSAL = {
    "encryption": Field(choice(*ENCRYPTION), required=True,
                        missing=f"an encryption algorithm: {', '.join(ENCRYPTION)}"),
    "integrity": Field(choice(*INTEGRITY)),
    "prf": Field(_prf),
    "dh_group": Field(_dh_group),
}


def _proposal(init: bool) -> Conv:
    fields = _PROPOSAL if init else {k: f for k, f in _PROPOSAL.items() if k != "prf"}

    def conv(ck: Checker, n: Node, key: str) -> Any:
        if n.tag != "map":
            return ck.fail(n, key, n.plain(),
                           f"automatic, or a proposal mapping with keys {', '.join(fields)}")
        values = section(ck, n, key, fields)
        enc, integ = values.get("encryption"), values.get("integrity")
        aead = enc in AEAD
        if "integrity" not in values and not aead:
            values["integrity"] = ck.fail(
                n, f"{key}.integrity", None, f"an integrity algorithm: {', '.join(INTEGRITY)} "
                "(only AEAD ciphers such as aes256gcm16 go without)")
        elif isinstance(integ, str) and aead:
            values["integrity"] = ck.fail(n.value["integrity"], f"{key}.integrity", integ,
                                          f"no integrity algorithm with AEAD cipher {enc}")
        if init and "dh_group" not in values:
            values["dh_group"] = ck.fail(n, f"{key}.dh_group", None,
                                         "a Diffie-Hellman group such as 14 or ecp256 "
                                         "(the IKE SA always needs one)")
        return build(Proposal, values)
    return conv


def _proposals(init: bool) -> Conv:
    """`automatic`, one proposal or a list of them (in preference order)."""
    one = _proposal(init)

    def conv(ck: Checker, n: Node, key: str) -> Any:
        if n.tag == "scalar" and n.value == "automatic":
            return ()
        if n.tag == "seq" and not n.value:
            return ck.fail(n, key, [], "automatic, or one or a list of proposals")
        out = ([one(ck, item, f"{key}[{i}]") for i, item in enumerate(n.value)]
               if n.tag == "seq" else [one(ck, n, key)])
        return BAD if BAD in out else tuple(out)
    return conv


_PROPOSALS = {"init": Field(_proposals(init=True)), "auth": Field(_proposals(init=False))}


def _proposals_section(ck: Checker, n: Node, key: str) -> Any:
    values = section(ck, n, key, _PROPOSALS)
    return BAD if values is None else values


def _prefixes(ck: Checker, n: Node, key: str) -> Any:
    """A prefix or a non-empty list of them."""
    if n.tag == "seq" and not n.value:
        return ck.fail(n, key, [], "a prefix or a non-empty list of prefixes")
    out = ([network(ck, item, f"{key}[{i}]") for i, item in enumerate(n.value)]
           if n.tag == "seq" else [network(ck, n, key)])
    return BAD if BAD in out else tuple(out)


_TUNNEL = {
    "remote_id": Field(_identity),
    "local_addr": Field(any_address(None, "an IPv4 or IPv6 address of this gateway")),
    "if_id": Field(integer(1, 0xFFFFFFFF, expected="an integer from 1 to 4294967295 "
                                                   "(the XFRM interface's if_id)")),
}


def _tunnels(names: Sequence[str] | None) -> Conv:
    """tunnel name -> settings, for tunnels of the config (when *names* is known);
    an explicit if_id is one no other tunnel sets."""
    def conv(ck: Checker, n: Node, key: str) -> Any:
        if n.tag == "scalar" and n.value is None:
            return {}
        if n.tag != "map":
            return ck.fail(n, key, n.plain(), "a mapping of tunnel name -> settings")
        out, explicit = {}, {}
        for tname, t in n.value.items():
            sub = join(key, tname)
            if names is not None and tname not in names:
                ck.fail(t, sub, tname, f"the name of a tunnel in `tunnels` ({', '.join(names)})")
            values = section(ck, t, sub, _TUNNEL, optional=True)
            if values and isinstance(values.get("if_id"), int):
                values["if_id"] = claim(ck, explicit, values["if_id"], tname, t.value["if_id"],
                                        f"{sub}.if_id", lambda first: "an if_id no other tunnel "
                                        f"uses (ipsec.tunnels.{first})")
            out[tname] = build(IpsecTunnel, values)
        return BAD if BAD in out.values() else out
    return conv


def ipsec_section(tunnel_names: Sequence[str] | None) -> Conv:
    """The check of the `ipsec:` section of a config whose tunnels are *tunnel_names*
    (in order; None when unknown, which skips the checks against them): the
    IpsecConfig, None for an empty section, or BAD with every problem recorded."""
    fields = {
        "connection_mode": Field(choice(*MODES, expected="responder-only or bidirectional")),
        "local_id": Field(_identity, required=True,
                          missing="the gateway's identifier, e.g. {fqdn: pop.example.net} "
                                  "(one of ipv4, fqdn, email, key_id)"),
        "secrets_file": Field(abspath("an absolute file path"), required=True,
                              missing="the path of the pre-shared key file (mode 0600)"),
        "proposals": Field(_proposals_section),
        "local_ts": Field(_prefixes),
        "dpd_delay": Field(duration(0, 3600, expected="a duration from 0s (off) to 1h, such as 10s")),
        "tunnels": Field(_tunnels(tunnel_names)),
    }

    def conv(ck: Checker, node: Node, key: str) -> Any:
        if node.tag == "scalar" and node.value is None:
            return None
        if node.tag != "map":
            return ck.fail(node, key, node.plain(), "a mapping (IPsec settings)")
        values = section(ck, node, key, fields)
        local_id = values.get("local_id")
        if values.get("connection_mode") == "bidirectional" and isinstance(local_id, Identity) \
                and local_id.type != "ipv4":
            n = node.value["local_id"]
            values["local_id"] = ck.fail(
                n, f"{key}.local_id", n.plain(),
                "an ipv4 identifier: bidirectional mode works only with an IPv4 local ID "
                "(use connection_mode: responder-only for fqdn, email or key_id)")
        proposals = values.pop("proposals", {})
        if proposals is BAD:
            return BAD
        cfg = build(IpsecConfig, {**values, **proposals})
        if cfg is not BAD and tunnel_names is not None:
            _check_if_ids(ck, node, key, cfg, tunnel_names)
        return cfg
    return conv


def _check_if_ids(ck: Checker, node: Node, key: str, cfg: IpsecConfig,
                  names: Sequence[str]) -> None:
    """Defaulted if_ids (position + 1) may collide with an explicit one."""
    seen: dict[int, str] = {}
    for name, i in cfg.if_ids(names).items():
        if i in seen:
            ck.fail(node, f"{key}.tunnels.{name}.if_id", i,
                    f"an if_id no other tunnel uses ({seen[i]} has {i} too; set if_id explicitly)")
        seen[i] = name


# ------------------------------------------------------------------ rendering

@dataclass(frozen=True)
class _Tunnel:
    name: str
    remote_addr: str
    remote_id: str
    local_addr: str
    if_id: int
    remote_ts: tuple[str, ...]


def _remote_ts(ranges: Sequence[Network], tunnel) -> tuple[str, ...]:
    """The site side's traffic selectors of *tunnel*: its site's network ranges, plus
    the tunnel's probe target when outside them; none = route-based (everything)."""
    if not ranges:
        return ("0.0.0.0/0", "::/0")
    out = [str(n) for n in ranges]
    addr = tunnel.probe_target
    if not any(addr.version == n.version and addr in n for n in ranges):
        out.append(f"{addr}/{addr.max_prefixlen}")
    return tuple(out)


def read_secrets(path: str) -> dict[str, str]:
    """The PSKs of *path* (tunnel name or `default` -> key). The file must be a regular
    file of mode 0600 (no group or other bits) owned by root or the caller. Problems
    never contain a key, nor text of the file that could be one."""
    def bad(line: int, key: str, value: Any, expected: str) -> ValidationError:
        return ValidationError([Problem(path, line, key, value, expected)])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise bad(0, "<file>", exc.strerror, "a readable secrets file (mode 0600)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise bad(0, "<file>", "not a regular file", "a regular secrets file (mode 0600)")
        if st.st_mode & 0o077:
            raise bad(0, "<mode>", oct(stat.S_IMODE(st.st_mode)),
                      f"mode 0600: pre-shared keys must not be readable by others (chmod 600 {path})")
        if st.st_uid not in (0, os.geteuid()):
            raise bad(0, "<owner>", st.st_uid, "a file owned by root or by the user running steerctl")
        raw = f.read()
    try:
        root = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        # the parser's message may quote the file: keep only where, never what
        raise bad(mark.line + 1 if mark else 1, "<yaml>", HIDDEN, "well-formed YAML: tunnel name: key") from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise bad(1, "<root>", HIDDEN, "a mapping of tunnel name (or default) -> pre-shared key")
    out: dict[str, str] = {}
    problems = []
    for k, vnode in root.value:
        line = k.start_mark.line + 1
        if not isinstance(k, yaml.ScalarNode) or not isinstance(vnode, yaml.ScalarNode):
            problems.append(Problem(path, line, "<entry>", HIDDEN, "tunnel name: pre-shared key"))
            continue
        if k.value in out:
            problems.append(Problem(path, line, k.value, HIDDEN, "each tunnel only once"))
            continue
        if len(vnode.value) < MIN_PSK_LEN:
            problems.append(Problem(path, line, k.value, HIDDEN,
                                    f"a pre-shared key of at least {MIN_PSK_LEN} characters"))
            continue
        out[k.value] = vnode.value
    if problems:
        raise ValidationError(problems)
    return out


def render(section: IpsecConfig | None, site_cfg, secrets_path: str | None = None,
           show_secrets: bool = False) -> str:
    """The swanctl.conf for *site_cfg*'s tunnels from its validated `ipsec:` section
    (``site_cfg.ipsec``). Reads *secrets_path* (default: the section's secrets_file)
    to check that every tunnel has a key; the keys appear in the output only with
    *show_secrets*. Raises ValidationError naming the secrets file (never a key) or
    the config."""
    if section is None:
        raise ValidationError([Problem(site_cfg.path, 0, "ipsec", None,
                                       "an `ipsec:` section in the site config to render")])
    path = secrets_path or section.secrets_file
    secrets = read_secrets(path)
    names = [t.name for t in site_cfg.tunnels]
    missing = [n for n in names if n not in secrets and "default" not in secrets]
    unknown = [k for k in secrets if k != "default" and k not in names]
    problems = [Problem(path, 0, n, None, "a pre-shared key for this tunnel (or a `default:` one)")
                for n in missing]
    problems += [Problem(path, 0, k, HIDDEN, f"a tunnel name of the config: {', '.join(names)}")
                 for k in unknown]
    if problems:
        raise ValidationError(problems)

    mode = section.connection_mode
    bidir = section.bidirectional
    local_id = section.local_id.swanctl()
    ids = section.if_ids(names)
    local_ts = [str(n) for n in section.local_ts] or ["0.0.0.0/0", "::/0"]
    dpd_s = format_duration(section.dpd_delay)
    init = ",".join(p.swanctl() for p in section.init) or "default"
    auth = ",".join(p.swanctl() for p in section.auth) or "default"

    tunnels = []
    for i, t in enumerate(site_cfg.tunnels):
        pt = section.tunnels.get(t.name) or IpsecTunnel()
        rid = pt.remote_id.swanctl() if pt.remote_id else f"ipv{t.public_ip.version}:{t.public_ip}"
        ranges = [net for _, net in site_cfg.sites[site_cfg.site_of(i)].network_ranges]
        tunnels.append(_Tunnel(t.name, str(t.public_ip), rid, pt.local_addr or "%any",
                               ids[t.name], _remote_ts(ranges, t)))

    out = [
        f"# swanctl.conf for site {site_cfg.site}: rendered by `steerctl ipsec render` from {site_cfg.path}.",
        "# Re-render after changing the site config; edits here are lost.",
        f"# connection mode: {mode} "
        + ("(either side initiates)" if bidir else "(the site initiates; this gateway only responds)"),
        "# Each tunnel is bound to its XFRM interface by if_id; create them so:",
    ]
    for t, spec in zip(site_cfg.tunnels, tunnels):
        out.append(f"#   ip link add {t.interface} type xfrm if_id {spec.if_id} && ip link set {t.interface} up")
    out.append("connections {")
    for spec in tunnels:
        out += [
            f"    {spec.name} {{",
            "        version = 2",
            f"        local_addrs = {spec.local_addr}",
            f"        remote_addrs = {spec.remote_addr}",
            f"        proposals = {init}",
            f"        dpd_delay = {dpd_s}",
            f"        if_id_in = {spec.if_id}",
            f"        if_id_out = {spec.if_id}",
            "        local {",
            "            auth = psk",
            f"            id = \"{local_id}\"",
            "        }",
            "        remote {",
            "            auth = psk",
            f"            id = \"{spec.remote_id}\"",
            "        }",
            "        children {",
            f"            {spec.name} {{",
            f"                local_ts = {','.join(local_ts)}",
            f"                remote_ts = {','.join(spec.remote_ts)}",
            f"                esp_proposals = {auth}",
            f"                if_id_in = {spec.if_id}",
            f"                if_id_out = {spec.if_id}",
            f"                start_action = {'start' if bidir else 'none'}",
            f"                dpd_action = {'restart' if bidir else 'clear'}",
            f"                close_action = {'start' if bidir else 'none'}",
            "            }",
            "        }",
            "    }",
        ]
    out.append("}")
    if show_secrets:
        out.append("secrets {")
        for spec in tunnels:
            key = secrets.get(spec.name, secrets.get("default"))
            out += [
                f"    ike-{spec.name} {{",
                f"        id-local = \"{local_id}\"",
                f"        id-remote = \"{spec.remote_id}\"",
                f"        secret = 0s{base64.b64encode(key.encode()).decode()}",
                "    }",
            ]
        out.append("}")
    else:
        out += [f"# secrets: {len(tunnels)} pre-shared key(s) from {path} are not shown;",
                "# `steerctl ipsec render --show-secrets --output FILE` writes them into FILE (mode 0600)."]
    return "\n".join(out) + "\n"
