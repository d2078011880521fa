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
  section is left out and a comment says so.

Pure except for reading the secrets file; no strongSwan needed to render.
"""
from __future__ import annotations

import base64
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Iterable

import yaml

from .units import format_duration, parse_duration
from .yamlsrc import Node, Problem, ValidationError, load_yaml

MODES = ("responder-only", "bidirectional")
ID_TYPES = ("ipv4", "fqdn", "email", "key_id")
_ID_PREFIX = {"ipv4": "ipv4:", "fqdn": "fqdn:", "email": "email:", "key_id": "keyid:"}
_KEYS = ("connection_mode", "local_id", "secrets_file", "proposals", "local_ts", "dpd_delay", "tunnels")
_TUNNEL_KEYS = ("remote_id", "local_addr", "if_id")
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


# ----------------------------------------------------------------- validation

class _Ck:
    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []

    def fail(self, node: Node, key: str, value: Any, expected: str) -> None:
        self.problems.append(Problem(self.path, node.key_line or node.line, key, value, expected))


def validate_ipsec(node: Node, path: str, tunnel_names: Iterable[str] | None = None) -> list[Problem]:
    """Every problem of the `ipsec:` section *node* (a yamlsrc Node); [] when valid.

    *tunnel_names* (the config's tunnels, in order), when given, also checks that
    `ipsec.tunnels` names only existing tunnels and that the if_ids (explicit or
    defaulted) are unique."""
    ck = _Ck(path)
    if node.tag == "scalar" and node.value is None:
        return []
    if node.tag != "map":
        ck.fail(node, "ipsec", node.plain(), "a mapping (IPsec settings)")
        return ck.problems
    v = node.value
    for k, child in v.items():
        if k not in _KEYS:
            ck.fail(child, f"ipsec.{k}", k, f"one of {', '.join(_KEYS)}")
    mode = "responder-only"
    if "connection_mode" in v:
        n = v["connection_mode"]
        if n.tag != "scalar" or n.value not in MODES:
            ck.fail(n, "ipsec.connection_mode", n.plain(), "responder-only or bidirectional")
        else:
            mode = n.value
    if "local_id" not in v:
        ck.fail(node, "ipsec.local_id", None, "the gateway's identifier, e.g. {fqdn: pop.example.net} "
                "(one of ipv4, fqdn, email, key_id)")
    else:
        id_type = _check_id(ck, v["local_id"], "ipsec.local_id")
        if mode == "bidirectional" and id_type not in (None, "ipv4"):
            ck.fail(v["local_id"], "ipsec.local_id", v["local_id"].plain(),
                    "an ipv4 identifier: bidirectional mode works only with an IPv4 local ID "
                    "(use connection_mode: responder-only for fqdn, email or key_id)")
    if "secrets_file" not in v:
        ck.fail(node, "ipsec.secrets_file", None, "the path of the pre-shared key file (mode 0600)")
    else:
        n = v["secrets_file"]
        if n.tag != "scalar" or not isinstance(n.value, str) or not os.path.isabs(n.value):
            ck.fail(n, "ipsec.secrets_file", n.plain(), "an absolute file path")
    if "proposals" in v:
        _check_proposals(ck, v["proposals"])
    if "local_ts" in v:
        _check_prefixes(ck, v["local_ts"], "ipsec.local_ts")
    if "dpd_delay" in v:
        n = v["dpd_delay"]
        try:
            if n.tag != "scalar" or parse_duration(n.value) > 3600:
                raise ValueError
        except ValueError:
            ck.fail(n, "ipsec.dpd_delay", n.plain(), "a duration from 0s (off) to 1h, such as 10s")
    names = list(tunnel_names) if tunnel_names is not None else None
    explicit_ids: dict[int, str] = {}
    if "tunnels" in v:
        tn = v["tunnels"]
        if tn.tag == "scalar" and tn.value is None:
            pass
        elif tn.tag != "map":
            ck.fail(tn, "ipsec.tunnels", tn.plain(), "a mapping of tunnel name -> settings")
        else:
            for name, t in tn.value.items():
                key = f"ipsec.tunnels.{name}"
                if names is not None and name not in names:
                    ck.fail(t, key, name, f"the name of a tunnel in `tunnels` ({', '.join(names)})")
                if t.tag == "scalar" and t.value is None:
                    continue
                if t.tag != "map":
                    ck.fail(t, key, t.plain(), f"a mapping with keys {', '.join(_TUNNEL_KEYS)}")
                    continue
                for k, child in t.value.items():
                    if k not in _TUNNEL_KEYS:
                        ck.fail(child, f"{key}.{k}", k, f"one of {', '.join(_TUNNEL_KEYS)}")
                if "remote_id" in t.value:
                    _check_id(ck, t.value["remote_id"], f"{key}.remote_id")
                if "local_addr" in t.value:
                    n = t.value["local_addr"]
                    if not _is_ip(n.value) or n.tag != "scalar":
                        ck.fail(n, f"{key}.local_addr", n.plain(), "an IPv4 or IPv6 address of this gateway")
                if "if_id" in t.value:
                    n = t.value["if_id"]
                    if (n.tag != "scalar" or isinstance(n.value, bool) or not isinstance(n.value, int)
                            or not 1 <= n.value <= 0xFFFFFFFF):
                        ck.fail(n, f"{key}.if_id", n.plain(), "an integer from 1 to 4294967295 "
                                "(the XFRM interface's if_id)")
                    elif n.value in explicit_ids:
                        ck.fail(n, f"{key}.if_id", n.value,
                                f"an if_id no other tunnel uses (ipsec.tunnels.{explicit_ids[n.value]})")
                    else:
                        explicit_ids[n.value] = name
    if names is not None and not ck.problems:
        ids = if_ids(node.plain(), names)
        seen: dict[int, str] = {}
        for name in names:
            i = ids[name]
            if i in seen:
                ck.fail(node, f"ipsec.tunnels.{name}.if_id", i,
                        f"an if_id no other tunnel uses ({seen[i]} has {i} too; set if_id explicitly)")
            seen[i] = name
    return ck.problems


def _check_id(ck: _Ck, n: Node, key: str) -> str | None:
    """Check an identifier `{type: value}`; returns its type, None when invalid."""
    if n.tag != "map" or len(n.value) != 1:
        ck.fail(n, key, n.plain(), "one identifier as {TYPE: VALUE}, TYPE one of ipv4, fqdn, email, key_id")
        return None
    (id_type, vn), = n.value.items()
    if id_type not in ID_TYPES:
        ck.fail(vn, key, id_type, "an identifier type: ipv4, fqdn, email or key_id")
        return None
    value = vn.value
    ok = vn.tag == "scalar" and isinstance(value, str) and bool(value) and _SAFE_RE.fullmatch(value)
    expected = {
        "ipv4": "an IPv4 address",
        "fqdn": "a domain name such as pop.example.net",
        "email": "an email address such as vpn@example.net",
        "key_id": "a key identifier: a non-empty string without quotes, braces or #",
    }[id_type]
    if ok and id_type == "ipv4":
        ok = _is_ip(value, 4)
    elif ok and id_type == "fqdn":
        ok = bool(_FQDN_RE.fullmatch(value))
    elif ok and id_type == "email":
        ok = bool(_EMAIL_RE.fullmatch(value))
    if not ok:
        ck.fail(vn, f"{key}.{id_type}", vn.plain(), expected)
        return None
    return id_type


def _is_ip(value: Any, version: int | None = None) -> bool:
    if not isinstance(value, str):
        return False
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return False
    return version is None or addr.version == version


def _check_prefixes(ck: _Ck, n: Node, key: str) -> None:
    items = n.value if n.tag == "seq" else [n]
    if n.tag == "seq" and not items:
        ck.fail(n, key, [], "a prefix or a non-empty list of prefixes")
    for i, item in enumerate(items):
        sub = f"{key}[{i}]" if n.tag == "seq" else key
        try:
            if item.tag != "scalar" or not isinstance(item.value, str):
                raise ValueError
            ipaddress.ip_network(item.value, strict=True)
        except ValueError:
            ck.fail(item, sub, item.plain(), "a network prefix such as 10.0.0.0/8 (host bits zero)")


def _check_proposals(ck: _Ck, n: Node) -> None:
    if n.tag != "map":
        ck.fail(n, "ipsec.proposals", n.plain(), "a mapping with keys init and auth")
        return
    for k, child in n.value.items():
        if k not in ("init", "auth"):
            ck.fail(child, f"ipsec.proposals.{k}", k, "init or auth")
            continue
        key = f"ipsec.proposals.{k}"
        if child.tag == "scalar" and child.value == "automatic":
            continue
        items = child.value if child.tag == "seq" else [child]
        if child.tag == "seq" and not items:
            ck.fail(child, key, [], "automatic, or one or a list of proposals")
        for i, item in enumerate(items):
            sub = f"{key}[{i}]" if child.tag == "seq" else key
            _check_proposal(ck, item, sub, init=(k == "init"))


def _check_proposal(ck: _Ck, n: Node, key: str, init: bool) -> None:
    allowed = ("encryption", "integrity", "prf", "dh_group") if init else ("encryption", "integrity", "dh_group")
    if n.tag != "map":
        ck.fail(n, key, n.plain(), f"automatic, or a proposal mapping with keys {', '.join(allowed)}")
        return
    v = n.value
    for k, child in v.items():
        if k not in allowed:
            ck.fail(child, f"{key}.{k}", k, f"one of {', '.join(allowed)}")
    enc = v.get("encryption")
    if enc is None:
        ck.fail(n, f"{key}.encryption", None, f"an encryption algorithm: {', '.join(ENCRYPTION)}")
    elif enc.tag != "scalar" or enc.value not in ENCRYPTION:
        ck.fail(enc, f"{key}.encryption", enc.plain(), f"one of {', '.join(ENCRYPTION)}")
    aead = enc is not None and isinstance(enc.value, str) and enc.value in AEAD
    integ = v.get("integrity")
    if integ is None and not aead:
        ck.fail(n, f"{key}.integrity", None, f"an integrity algorithm: {', '.join(INTEGRITY)} "
                "(only AEAD ciphers such as aes256gcm16 go without)")
    elif integ is not None and integ.value not in INTEGRITY:
        ck.fail(integ, f"{key}.integrity", integ.plain(), f"one of {', '.join(INTEGRITY)}")
    elif integ is not None and aead:
        ck.fail(integ, f"{key}.integrity", integ.plain(), f"no integrity algorithm with AEAD cipher {enc.value}")
    prf = v.get("prf")
    if prf is not None and prf.value not in PRF and f"prf{prf.value}" not in PRF:
        ck.fail(prf, f"{key}.prf", prf.plain(), f"one of {', '.join(PRF)}")
    dh = v.get("dh_group")
    if dh is None:
        if init:
            ck.fail(n, f"{key}.dh_group", None, "a Diffie-Hellman group such as 14 or ecp256 "
                    "(the IKE SA always needs one)")
    elif _dh_name(dh.value) is None:
        ck.fail(dh, f"{key}.dh_group", dh.plain(),
                "a Diffie-Hellman group: " + ", ".join(f"{k} ({v})" for k, v in DH_GROUPS.items()))


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


# ------------------------------------------------------------------ rendering

@dataclass(frozen=True)
class _Tunnel:
    name: str
    remote_addr: str
    remote_id: str
    local_addr: str
    if_id: int
    remote_ts: tuple[str, ...]


def if_ids(cfg_ipsec: dict, tunnel_names: Iterable[str]) -> dict[str, int]:
    """Each tunnel's if_id: explicit in `ipsec.tunnels.<name>.if_id`, else position + 1."""
    per = (cfg_ipsec or {}).get("tunnels") or {}
    out = {}
    for i, name in enumerate(tunnel_names):
        t = per.get(name) or {}
        out[name] = int(t.get("if_id") or i + 1)
    return out


def _ident(d: dict) -> str:
    (t, v), = d.items()
    return f"{_ID_PREFIX[t]}{v}"


def _proposal(p: dict, init: bool) -> str:
    parts = [p["encryption"]]
    if p.get("integrity"):
        parts.append(p["integrity"])
    if init and p.get("prf"):
        prf = str(p["prf"])
        parts.append(prf if prf.startswith("prf") else f"prf{prf}")
    if p.get("dh_group") is not None:
        parts.append(_dh_name(p["dh_group"]))
    return "-".join(parts)


def _proposals(value: Any, init: bool) -> str:
    if value in (None, "automatic"):
        return "default"
    items = value if isinstance(value, list) else [value]
    return ",".join(_proposal(p, init) for p in items)


def _remote_ts(site_cfg, tunnel) -> tuple[str, ...]:
    """The site side's traffic selectors of *tunnel*: the network ranges, plus the
    tunnel's probe target when outside them; none = route-based (everything)."""
    if not site_cfg.network_ranges:
        return ("0.0.0.0/0", "::/0")
    nets = [net for _, net in site_cfg.network_ranges]
    out = [str(n) for n in nets]
    addr = tunnel.probe_target
    if not any(addr.version == n.version and addr in n for n in nets):
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


def validate_plain(cfg_ipsec: dict, site_cfg) -> list[Problem]:
    """validate_ipsec for the section as plain data: with the lines of the config
    file when it is readable and holds this section, else without lines."""
    names = [t.name for t in site_cfg.tunnels]
    node = None
    try:
        with open(site_cfg.path, encoding="utf-8") as f:
            root = load_yaml(f.read(), site_cfg.path)
        cand = root.value.get("ipsec") if root.tag == "map" else None
        if cand is not None and cand.plain() == cfg_ipsec:
            node = cand
    except (OSError, ValidationError, UnicodeDecodeError):
        pass
    if node is None:
        node = load_yaml(yaml.safe_dump({"ipsec": cfg_ipsec}), site_cfg.path).value["ipsec"]
        return [Problem(p.file, 0, p.key, p.value, p.expected)
                for p in validate_ipsec(node, site_cfg.path, names)]
    return validate_ipsec(node, site_cfg.path, names)


def render(cfg_ipsec: dict, site_cfg, secrets_path: str | None = None, show_secrets: bool = False) -> str:
    """The swanctl.conf for *site_cfg*'s tunnels from its `ipsec:` section *cfg_ipsec*
    (plain data, already validated). Reads *secrets_path* (default: the section's
    secrets_file) to check that every tunnel has a key; the keys appear in the output
    only with *show_secrets*. Raises ValidationError naming the secrets file (never
    a key) or the config."""
    if not cfg_ipsec:
        raise ValidationError([Problem(site_cfg.path, 0, "ipsec", None,
                                       "an `ipsec:` section in the site config to render")])
    problems = validate_plain(cfg_ipsec, site_cfg)
    if problems:
        raise ValidationError(problems)
    path = secrets_path or cfg_ipsec.get("secrets_file")
    if not path:
        raise ValidationError([Problem(site_cfg.path, 0, "ipsec.secrets_file", None,
                                       "the path of the pre-shared key file")])
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

    mode = cfg_ipsec.get("connection_mode") or "responder-only"
    bidir = mode == "bidirectional"
    local_id = _ident(cfg_ipsec["local_id"])
    ids = if_ids(cfg_ipsec, names)
    per = cfg_ipsec.get("tunnels") or {}
    local_ts = cfg_ipsec.get("local_ts") or ["0.0.0.0/0", "::/0"]
    if isinstance(local_ts, str):
        local_ts = [local_ts]
    dpd = cfg_ipsec.get("dpd_delay", "10s")
    dpd_s = format_duration(parse_duration(dpd)) if dpd is not None else "0s"
    init = _proposals((cfg_ipsec.get("proposals") or {}).get("init"), init=True)
    auth = _proposals((cfg_ipsec.get("proposals") or {}).get("auth"), init=False)

    tunnels = []
    for t in site_cfg.tunnels:
        pt = per.get(t.name) or {}
        rid = _ident(pt["remote_id"]) if pt.get("remote_id") else f"ipv4:{t.public_ip}" \
            if t.public_ip.version == 4 else f"ipv6:{t.public_ip}"
        tunnels.append(_Tunnel(t.name, str(t.public_ip), rid, str(pt.get("local_addr") or "%any"),
                               ids[t.name], _remote_ts(site_cfg, t)))

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
                "# `steerctl ipsec render --show-secrets` includes them (write that output to a 0600 file)."]
    return "\n".join(out) + "\n"
