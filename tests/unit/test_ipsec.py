"""`ipsec:` section validation and `steerctl ipsec render` (steerd.ipsec): the
swanctl.conf a gateway gets, its modes and identities, and the secrets rules
(mode 0600, never printed without --show-secrets, never in an error). That
strongSwan loads the rendered files is tested in tests/vm (a real charon).

Also steerd.xfrm (XFRM awareness) without root: the netlink parsing of SAs and SA
events (messages built with the kernel's struct layouts), counters by if_id and the
watcher's decisions; tests/vm runs it against the real kernel."""
from __future__ import annotations

import base64
import ipaddress
import os
import pty
import re
import select
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from steerd import xfrm
from steerd.cli import main as steerctl
from steerd.config import parse_config
from steerd.ipsec import MIN_PSK_LEN, ipsec_section, read_secrets, render
from steerd.schema import Checker
from steerd.yamlsrc import ValidationError, load_yaml

PSK1 = "correct horse battery staple 1"
PSK2 = "another long pre-shared key 2"
PSK_DEFAULT = "the default key for every tunnel"

BASE = """\
site: branch-01
ingress: [eth1]
network_ranges:
  lan: 10.20.0.0/16
tunnels:
  - name: pri-wan1
    ha_role: primary
    wan: wan1
    interface: ipsec1
    public_ip: 198.51.100.10
    probe_target: 169.254.10.2
    bandwidth: {down_mbps: 100}
  - name: pri-wan2
    ha_role: primary
    wan: wan2
    interface: ipsec2
    public_ip: 198.51.100.11
    probe_target: 10.20.0.1
    bandwidth: {down_mbps: 50}
"""

IPSEC = """\
ipsec:
  connection_mode: responder-only
  local_id: {fqdn: pop.example.net}
  secrets_file: SECRETS
  tunnels:
    pri-wan1:
      remote_id: {fqdn: wan1.branch-01.example.net}
      local_addr: 203.0.113.1
"""


@pytest.fixture
def secrets(tmp_path):
    path = tmp_path / "ipsec-secrets.yaml"
    path.write_text(yaml.safe_dump({"pri-wan1": PSK1, "pri-wan2": PSK2}))
    path.chmod(0o600)
    return str(path)


def site(tmp_path, secrets_path: str, ipsec: str = IPSEC, base: str = BASE):
    text = base + ipsec.replace("SECRETS", secrets_path)
    path = tmp_path / "steerd.yaml"
    path.write_text(text)
    return parse_config(text, str(path))


def problems(ipsec: str, names=("pri-wan1", "pri-wan2")) -> list:
    node = load_yaml(ipsec, "cfg.yaml").value["ipsec"]
    ck = Checker("cfg.yaml")
    ipsec_section(names)(ck, node, "ipsec")
    return ck.problems


def conn(text: str, name: str) -> str:
    """The `name { ... }` block of the connections section (nested braces)."""
    start = text.index(f"    {name} {{")
    depth, i = 0, start
    while True:
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
        i += 1


# ------------------------------------------------------------------ rendering

def test_render_responder_only_fqdn(tmp_path, secrets):
    cfg = site(tmp_path, secrets)
    out = render(cfg.ipsec, cfg, None, show_secrets=False)
    c1 = conn(out, "pri-wan1")
    assert "remote_addrs = 198.51.100.10" in c1
    assert "local_addrs = 203.0.113.1" in c1
    assert 'id = "fqdn:pop.example.net"' in c1
    assert 'id = "fqdn:wan1.branch-01.example.net"' in c1
    assert "start_action = none" in c1 and "dpd_action = clear" in c1
    assert "proposals = default" in c1 and "esp_proposals = default" in c1
    # if_id: position + 1 by default, on the connection and its child
    assert c1.count("if_id_in = 1") == 2 and c1.count("if_id_out = 1") == 2
    c2 = conn(out, "pri-wan2")
    assert c2.count("if_id_in = 2") == 2
    assert "local_addrs = %any" in c2
    # no remote_id configured: the tunnel's public IP as an IPv4 identity
    assert 'id = "ipv4:198.51.100.11"' in c2
    assert "ip link add ipsec2 type xfrm if_id 2" in out


def test_traffic_selectors_are_the_ranges_plus_probe_target(tmp_path, secrets):
    cfg = site(tmp_path, secrets)
    out = render(cfg.ipsec, cfg, secrets)
    assert "remote_ts = 10.20.0.0/16,169.254.10.2/32" in conn(out, "pri-wan1")
    # a probe target inside the ranges adds nothing
    assert "remote_ts = 10.20.0.0/16\n" in conn(out, "pri-wan2")
    assert "local_ts = 0.0.0.0/0,::/0" in out


def test_no_network_ranges_is_route_based(tmp_path, secrets):
    base = BASE.replace("network_ranges:\n  lan: 10.20.0.0/16\n", "")
    cfg = site(tmp_path, secrets, base=base)
    out = render(cfg.ipsec, cfg, secrets)
    assert out.count("remote_ts = 0.0.0.0/0,::/0") == 2


def test_secrets_hidden_unless_asked(tmp_path, secrets):
    cfg = site(tmp_path, secrets)
    hidden = render(cfg.ipsec, cfg, secrets, show_secrets=False)
    for key in (PSK1, PSK2):
        assert key not in hidden
        assert base64.b64encode(key.encode()).decode() not in hidden
    assert "secrets {" not in hidden and "--show-secrets" in hidden
    shown = render(cfg.ipsec, cfg, secrets, show_secrets=True)
    assert "secrets {" in shown
    assert f"secret = 0s{base64.b64encode(PSK1.encode()).decode()}" in shown
    assert f"secret = 0s{base64.b64encode(PSK2.encode()).decode()}" in shown
    assert 'id-local = "fqdn:pop.example.net"' in shown
    assert 'id-remote = "fqdn:wan1.branch-01.example.net"' in shown


def test_hub_tunnels_select_their_own_sites_ranges(tmp_path, secrets):
    """In hub mode a tunnel carries its site's ranges only: a site's SA never
    claims another site's prefixes."""
    text = ("ingress: [eth1]\nsites:\n"
            "  - site: a\n    network_ranges: {lan: 10.21.0.0/16}\n    tunnels:\n"
            "      - {name: pri-wan1, ha_role: primary, wan: wan1, interface: ipsec1,"
            " public_ip: 198.51.100.10, probe_target: 10.21.0.1, bandwidth: {down_mbps: 100}}\n"
            "  - site: b\n    network_ranges: {lan: 10.22.0.0/16}\n    tunnels:\n"
            "      - {name: pri-wan2, ha_role: primary, wan: wan1, interface: ipsec2,"
            " public_ip: 198.51.100.11, probe_target: 169.254.10.2, bandwidth: {down_mbps: 100}}\n"
            + IPSEC.replace("SECRETS", secrets))
    cfg = parse_config(text, str(tmp_path / "hub.yaml"))
    out = render(cfg.ipsec, cfg, secrets)
    assert "remote_ts = 10.21.0.0/16\n" in conn(out, "pri-wan1")
    assert "remote_ts = 10.22.0.0/16,169.254.10.2/32\n" in conn(out, "pri-wan2")


def test_default_key_covers_tunnels_without_one(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"default": PSK_DEFAULT, "pri-wan1": PSK1}))
    path.chmod(0o600)
    cfg = site(tmp_path, str(path))
    out = render(cfg.ipsec, cfg, str(path), show_secrets=True)
    assert f"0s{base64.b64encode(PSK_DEFAULT.encode()).decode()}" in conn_secret(out, "pri-wan2")
    assert f"0s{base64.b64encode(PSK1.encode()).decode()}" in conn_secret(out, "pri-wan1")


def conn_secret(text: str, name: str) -> str:
    m = re.search(rf"ike-{name} {{.*?}}", text, re.S)
    return m.group(0)


def test_bidirectional_with_ipv4_id_initiates(tmp_path, secrets):
    ipsec = IPSEC.replace("responder-only", "bidirectional").replace("{fqdn: pop.example.net}",
                                                                     "{ipv4: 203.0.113.1}")
    cfg = site(tmp_path, secrets, ipsec)
    out = render(cfg.ipsec, cfg, secrets)
    c1 = conn(out, "pri-wan1")
    assert "start_action = start" in c1 and "dpd_action = restart" in c1
    assert 'id = "ipv4:203.0.113.1"' in c1


def test_explicit_proposals(tmp_path, secrets):
    ipsec = IPSEC + """\
  proposals:
    init: {encryption: aes256, integrity: sha256, prf: sha256, dh_group: 14}
    auth:
      - {encryption: aes256gcm16, dh_group: ecp256}
      - {encryption: aes128, integrity: sha1}
"""
    cfg = site(tmp_path, secrets, ipsec)
    out = render(cfg.ipsec, cfg, secrets)
    assert "proposals = aes256-sha256-prfsha256-modp2048" in out
    assert "esp_proposals = aes256gcm16-ecp256,aes128-sha1" in out


def test_explicit_if_ids(tmp_path, secrets):
    ipsec = IPSEC + "    pri-wan2: {if_id: 42}\n"
    cfg = site(tmp_path, secrets, ipsec)
    assert cfg.ipsec.if_ids(["pri-wan1", "pri-wan2"]) == {"pri-wan1": 1, "pri-wan2": 42}
    out = render(cfg.ipsec, cfg, secrets)
    assert conn(out, "pri-wan2").count("if_id_out = 42") == 2


def test_other_identity_types(tmp_path, secrets):
    ipsec = IPSEC.replace("{fqdn: pop.example.net}", "{email: vpn@example.net}").replace(
        "{fqdn: wan1.branch-01.example.net}", "{key_id: branch-01-wan1}")
    cfg = site(tmp_path, secrets, ipsec)
    out = render(cfg.ipsec, cfg, secrets)
    assert 'id = "email:vpn@example.net"' in out
    assert 'id = "keyid:branch-01-wan1"' in out


# ------------------------------------------------------------------ secrets file

def test_secrets_file_must_be_0600(tmp_path, secrets):
    os.chmod(secrets, 0o644)
    cfg = site(tmp_path, secrets)
    with pytest.raises(ValidationError) as exc:
        render(cfg.ipsec, cfg, secrets, show_secrets=True)
    text = str(exc.value)
    assert "0o644" in text and "0600" in text
    assert PSK1 not in text and PSK2 not in text


def test_secret_errors_never_show_a_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"pri-wan1: short\npri-wan2: {PSK2}\nnot-a-tunnel: {PSK1}\n")
    path.chmod(0o600)
    with pytest.raises(ValidationError) as exc:
        read_secrets(str(path))
    assert "short" not in str(exc.value)
    assert f"at least {MIN_PSK_LEN}" in str(exc.value)
    path.write_text(f"pri-wan1: {PSK1}\npri-wan2: {PSK2}\nnot-a-tunnel: {PSK1}\n")
    cfg = site(tmp_path, str(path))
    with pytest.raises(ValidationError) as exc:
        render(cfg.ipsec, cfg, str(path))
    assert "not-a-tunnel" in str(exc.value) and PSK1 not in str(exc.value)


def test_broken_secrets_yaml_does_not_echo_content(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text('pri-wan1: "unterminated secret value\n')
    path.chmod(0o600)
    with pytest.raises(ValidationError) as exc:
        read_secrets(str(path))
    assert "unterminated" not in str(exc.value)


def test_missing_key_for_a_tunnel(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"pri-wan1": PSK1}))
    path.chmod(0o600)
    cfg = site(tmp_path, str(path))
    with pytest.raises(ValidationError) as exc:
        render(cfg.ipsec, cfg, str(path))
    assert exc.value.problems[0].key == "pri-wan2"


def test_unreadable_secrets_file(tmp_path):
    cfg = site(tmp_path, str(tmp_path / "missing.yaml"))
    with pytest.raises(ValidationError) as exc:
        render(cfg.ipsec, cfg, None)
    assert "missing.yaml" in str(exc.value)


def test_secrets_symlink_refused(tmp_path, secrets):
    link = tmp_path / "link.yaml"
    link.symlink_to(secrets)
    with pytest.raises(ValidationError):
        read_secrets(str(link))


# ------------------------------------------------------ steerctl ipsec render

STEERCTL = str(Path(sys.executable).with_name("steerctl"))
B64_PSK1 = base64.b64encode(PSK1.encode()).decode()


def config_file(tmp_path, secrets_path: str) -> str:
    path = tmp_path / "steerd.yaml"
    path.write_text(BASE + IPSEC.replace("SECRETS", secrets_path))
    return str(path)


def steerctl_render(config: str, *args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """steerctl as an operator runs it, its stdout a real pipe, terminal or file."""
    return subprocess.run([STEERCTL, "ipsec", "render", "--config", config, *args],
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)


def test_render_reads_the_config_once_through_the_loader(tmp_path, secrets, monkeypatch):
    """The section comes typed from load_config: render opens no config file itself."""
    cfg = site(tmp_path, secrets)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **kw: opened.append(str(f)) or real_open(f, *a, **kw))
    render(cfg.ipsec, cfg, secrets)
    assert cfg.path not in opened


def test_output_file_is_0600_from_its_creation(tmp_path, secrets, monkeypatch):
    """--output: the keys go to a file only its owner can read, created so (never
    chmod-ed after the fact, so never readable by others for a moment, whatever the
    umask), replacing whatever was at the path (an old 0644 file, a symlink) whole."""
    out = tmp_path / "swanctl.conf"
    out.write_text("old\n")
    out.chmod(0o644)
    victim = tmp_path / "elsewhere"
    victim.write_text("not to be overwritten\n")
    link = tmp_path / "link.conf"
    link.symlink_to(victim)
    seen = []
    real_replace = os.replace

    def replace(src, dst):          # the new file's mode just before it takes the name
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    old_umask = os.umask(0)
    try:
        for target in (out, link):
            res = CliRunner().invoke(steerctl, ["ipsec", "render", "--config", config_file(tmp_path, secrets),
                                                "--show-secrets", "--output", str(target)])
            assert res.exit_code == 0, res.output
            assert PSK1 not in res.output and B64_PSK1 not in res.output
    finally:
        os.umask(old_umask)
    assert seen == [0o600, 0o600]
    for target in (out, link):
        assert stat.S_IMODE(os.lstat(target).st_mode) == 0o600 and not os.path.islink(target)
        assert f"secret = 0s{B64_PSK1}" in target.read_text()
    assert victim.read_text() == "not to be overwritten\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["swanctl.conf", "link.conf", "elsewhere", "steerd.yaml", "ipsec-secrets.yaml"])   # no temp left


def test_output_into_a_missing_directory_fails_cleanly(tmp_path, secrets):
    res = CliRunner().invoke(steerctl, ["ipsec", "render", "--config", config_file(tmp_path, secrets),
                                        "--show-secrets", "--output", str(tmp_path / "no" / "x.conf")])
    assert res.exit_code == 1 and "x.conf" in res.output and PSK1 not in res.output


def test_show_secrets_never_onto_a_terminal(tmp_path, secrets):
    main_fd, tty_fd = pty.openpty()
    try:
        res = steerctl_render(config_file(tmp_path, secrets), "--show-secrets", stdout=tty_fd)
        os.close(tty_fd)
        shown = b""
        while select.select([main_fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:         # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main_fd)
    assert res.returncode == 2
    assert "terminal" in res.stderr and "--output" in res.stderr
    assert B64_PSK1.encode() not in shown and b"secret" not in shown


def test_show_secrets_not_into_a_file_others_can_read(tmp_path, secrets):
    """`steerctl ipsec render --show-secrets > swanctl.conf` with the usual umask
    022: the shell made the file 0644 before steerctl ran; nothing goes into it."""
    target = tmp_path / "swanctl.conf"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.fchmod(fd, 0o644)
    try:
        res = steerctl_render(config_file(tmp_path, secrets), "--show-secrets", stdout=fd)
    finally:
        os.close(fd)
    assert res.returncode == 2 and "0644" in res.stderr and "--output" in res.stderr
    assert target.read_text() == ""


def test_show_secrets_into_a_pipe_or_a_private_file(tmp_path, secrets):
    """A pipe (`| ssh gw 'umask 077; cat > f'`) or a file only its owner reads get the keys."""
    config = config_file(tmp_path, secrets)
    piped = steerctl_render(config, "--show-secrets")
    assert piped.returncode == 0, piped.stderr
    assert f"secret = 0s{B64_PSK1}" in piped.stdout
    target = tmp_path / "private.conf"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        res = steerctl_render(config, "--show-secrets", stdout=fd)
    finally:
        os.close(fd)
    assert res.returncode == 0, res.stderr
    assert f"secret = 0s{B64_PSK1}" in target.read_text()


def test_without_show_secrets_a_terminal_is_fine(tmp_path, secrets):
    res = steerctl_render(config_file(tmp_path, secrets))
    assert res.returncode == 0 and "connections {" in res.stdout and "secrets {" not in res.stdout


# ------------------------------------------------------------------ validation

def test_valid_section_has_no_problems():
    assert problems(IPSEC.replace("SECRETS", "/etc/steerd/ipsec-secrets.yaml")) == []


@pytest.mark.parametrize("ipsec,key,expected", [
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  connection_mode: both\n",
     "ipsec.connection_mode", "responder-only or bidirectional"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  connection_mode: bidirectional\n",
     "ipsec.local_id", "bidirectional mode works only with an IPv4 local ID"),
    ("ipsec:\n  secrets_file: /s\n", "ipsec.local_id", "the gateway's identifier"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n", "ipsec.secrets_file", "pre-shared key file"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: relative.yaml\n",
     "ipsec.secrets_file", "absolute file path"),
    ("ipsec:\n  local_id: {dn: CN=x}\n  secrets_file: /s\n", "ipsec.local_id", "identifier type"),
    ("ipsec:\n  local_id: {fdqn: a.example}\n  secrets_file: /s\n", "ipsec.local_id",
     "identifier type: ipv4, fqdn, email or key_id (did you mean 'fqdn'?)"),
    ("ipsec:\n  local_id: {ipv4: 300.1.1.1}\n  secrets_file: /s\n", "ipsec.local_id.ipv4", "IPv4"),
    ("ipsec:\n  local_id: {fqdn: 'bad name'}\n  secrets_file: /s\n", "ipsec.local_id.fqdn", "domain"),
    ("ipsec:\n  local_id: {email: nobody}\n  secrets_file: /s\n", "ipsec.local_id.email", "email"),
    ("ipsec:\n  local_id: pop.example.net\n  secrets_file: /s\n", "ipsec.local_id", "{TYPE: VALUE}"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  proposals: {init: {encryption: des}}\n",
     "ipsec.proposals.init.encryption", "one of"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n"
     "  proposals: {init: {encryption: aes256, integrity: sha256}}\n",
     "ipsec.proposals.init.dh_group", "Diffie-Hellman"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  proposals: {auth: {encryption: aes256}}\n",
     "ipsec.proposals.auth.integrity", "integrity algorithm"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n"
     "  proposals: {auth: {encryption: aes256gcm16, integrity: sha256}}\n",
     "ipsec.proposals.auth.integrity", "AEAD"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  proposals: {auth: {encryption: aes128, "
     "integrity: sha1, prf: sha256}}\n", "ipsec.proposals.auth.prf", "one of"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  local_ts: [10.0.0.1/8]\n",
     "ipsec.local_ts[0]", "without host bits set (did you mean 10.0.0.0/8?)"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  dpd_delay: soon\n",
     "ipsec.dpd_delay", "duration"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  tunnels: {pri-wan9: {if_id: 3}}\n",
     "ipsec.tunnels.pri-wan9", "the name of a tunnel"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  tunnels: {pri-wan1: {if_id: 0}}\n",
     "ipsec.tunnels.pri-wan1.if_id", "1 to 4294967295"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  tunnels: {pri-wan1: {if_id: 2}}\n",
     "ipsec.tunnels.pri-wan2.if_id", "no other tunnel uses"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  tunnels: {pri-wan1: {local_addr: x}}\n",
     "ipsec.tunnels.pri-wan1.local_addr", "address"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  tunnels: {pri-wan1: {remote: x}}\n",
     "ipsec.tunnels.pri-wan1.remote", "one of"),
    ("ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  psk: hunter2hunter2\n",
     "ipsec.psk", "one of"),
    ("ipsec: [1, 2]\n", "ipsec", "a mapping"),
])
def test_invalid_sections(ipsec, key, expected):
    found = problems(ipsec)
    assert found, "expected a problem"
    assert any(p.key == key and expected in p.expected for p in found), [str(p) for p in found]
    for p in found:
        assert p.file == "cfg.yaml" and p.line >= 1


def test_problem_lines_point_at_the_key():
    text = "ipsec:\n  local_id: {fqdn: a.example}\n  secrets_file: /s\n  connection_mode: sometimes\n"
    (p,) = problems(text)
    assert p.line == 4 and p.value == "sometimes"


def test_all_problems_at_once():
    text = ("ipsec:\n  connection_mode: x\n  local_id: {fqdn: 'a b'}\n  secrets_file: rel\n"
            "  tunnels: {nope: {if_id: -1}}\n")
    keys = {p.key for p in problems(text)}
    assert {"ipsec.connection_mode", "ipsec.local_id.fqdn", "ipsec.secrets_file", "ipsec.tunnels.nope",
            "ipsec.tunnels.nope.if_id"} <= keys


def test_an_invalid_section_is_refused_with_the_config(tmp_path, secrets):
    """The site config check reports ipsec problems with the rest of the file
    (so steerd refuses to start and render never sees an invalid section)."""
    ipsec = IPSEC.replace("responder-only", "bidirectional")
    with pytest.raises(ValidationError) as exc:
        site(tmp_path, secrets, ipsec)
    (p,) = exc.value.problems
    assert p.key == "ipsec.local_id" and p.line == BASE.count("\n") + 3   # its line in the file


def test_empty_section_is_valid():
    assert problems("ipsec:\n") == []


def test_empty_proposals_mean_automatic(tmp_path, secrets):
    cfg = site(tmp_path, secrets, IPSEC + "  proposals: {}\n")
    assert cfg.ipsec.init == cfg.ipsec.auth == ()


# ------------------------------------------------------------------ steerd.xfrm

def usersa_info(src: str, dst: str, spi: int, reqid: int = 1, nbytes: int = 0, npackets: int = 0,
                family: int = socket.AF_INET, proto: int = xfrm.IPPROTO_ESP) -> bytes:
    b = bytearray(224)          # struct xfrm_usersa_info, offsets from linux/xfrm.h (LP64)
    b[56:56 + len(ipaddress.ip_address(dst).packed)] = ipaddress.ip_address(dst).packed
    struct.pack_into("!I", b, 72, spi)
    b[76] = proto
    b[80:80 + len(ipaddress.ip_address(src).packed)] = ipaddress.ip_address(src).packed
    struct.pack_into("=QQ", b, 160, nbytes, npackets)
    struct.pack_into("=I", b, 208, reqid)
    struct.pack_into("=H", b, 212, family)
    return bytes(b)


def rta(typ: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), typ) + payload
    return raw + bytes((-len(raw)) % 4)


def nlmsg(typ: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), typ, 0, 0, 0) + payload


def if_id_attr(n: int) -> bytes:
    return rta(xfrm.XFRMA_IF_ID, struct.pack("=I", n))


def test_parse_newsa_with_if_id_and_counters():
    payload = usersa_info("100.64.1.1", "100.64.1.2", 0xC0FFEE01, 7, 4200, 50) + if_id_attr(3)
    sa = xfrm.parse_newsa(payload)
    assert sa == xfrm.SaInfo("100.64.1.1", "100.64.1.2", 0xC0FFEE01, 50, 7, 3, 4200, 50)


def test_parse_ipv6_sa():
    sa = xfrm.parse_newsa(usersa_info("fd00::1", "fd00::2", 5, family=socket.AF_INET6))
    assert (sa.src, sa.dst, sa.if_id) == ("fd00::1", "fd00::2", 0)


def test_delsa_event_carries_if_id():
    sa_id = bytearray(24)       # struct xfrm_usersa_id
    sa_id[0:4] = ipaddress.ip_address("100.64.2.2").packed
    struct.pack_into("!I", sa_id, 16, 0x1234)
    struct.pack_into("=H", sa_id, 20, socket.AF_INET)
    payload = bytes(sa_id) + rta(xfrm.XFRMA_SA, usersa_info("100.64.2.1", "100.64.2.2", 0x1234)) + if_id_attr(2)
    ev = xfrm.parse_event(xfrm.XFRM_MSG_DELSA, payload)
    assert ev == xfrm.SaEvent("deleted", 2, 0x1234, "100.64.2.1", "100.64.2.2")


def test_expire_hard_and_soft():
    for hard, kind in ((1, "expired"), (0, "soft-expired")):
        body = usersa_info("1.1.1.1", "2.2.2.2", 9) + bytes([hard]) + bytes(7) + if_id_attr(5)
        ev = xfrm.parse_event(xfrm.XFRM_MSG_EXPIRE, body)
        assert (ev.kind, ev.if_id, ev.spi) == (kind, 5, 9)


def test_flush_and_unrelated_messages():
    assert xfrm.parse_event(xfrm.XFRM_MSG_FLUSHSA, bytes([xfrm.IPPROTO_ESP, 0, 0, 0])).kind == "flushed"
    assert xfrm.parse_event(0x13, b"") is None   # NEWPOLICY


def test_split_messages_in_one_datagram():
    a = nlmsg(xfrm.XFRM_MSG_NEWSA, usersa_info("1.1.1.1", "2.2.2.2", 1) + if_id_attr(1))
    b = nlmsg(xfrm.XFRM_MSG_NEWSA, usersa_info("2.2.2.2", "1.1.1.1", 2) + if_id_attr(1))
    msgs = list(xfrm.split_messages(a + b + nlmsg(xfrm.NLMSG_DONE, bytes(4))))
    assert [m[0] for m in msgs] == [xfrm.XFRM_MSG_NEWSA, xfrm.XFRM_MSG_NEWSA, xfrm.NLMSG_DONE]
    assert [xfrm.parse_newsa(m[2]).spi for m in msgs[:2]] == [1, 2]


def test_counters_by_if_id_split_tx_rx():
    sas = [xfrm.SaInfo("10.0.0.1", "10.0.0.2", 1, 50, 1, 1, 1000, 10),
           xfrm.SaInfo("10.0.0.2", "10.0.0.1", 2, 50, 1, 1, 500, 5),
           xfrm.SaInfo("10.0.0.1", "10.0.0.2", 3, 50, 2, 1, 100, 1),      # a rekeyed SA of if_id 1
           xfrm.SaInfo("10.0.1.1", "10.0.1.2", 4, 50, 3, 0, 999, 9)]      # no if_id: not counted
    c = xfrm.counters_by_if_id(sas, {"10.0.0.1", "10.0.1.1"})
    assert c == {1: xfrm.EspCounters(1100, 11, 500, 5)}
    assert xfrm.outbound_if_ids(sas, {"10.0.0.1"}) == {1}
    assert xfrm.outbound_if_ids(sas, None) == {1}


def link_message(name: str, kind: str | None = None, if_id: int | None = None):
    """An rtnetlink link message as the kernel sends it, decoded by pyroute2."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    attrs: list = [("IFLA_IFNAME", name)]
    if kind:
        info: list = [("IFLA_INFO_KIND", kind)]
        if if_id is not None:
            info.append(("IFLA_INFO_DATA", {"attrs": [("IFLA_XFRM_IF_ID", if_id)]}))
        attrs.append(("IFLA_LINKINFO", {"attrs": info}))
    msg = ifinfmsg()
    msg["attrs"] = attrs
    msg.encode()
    parsed = ifinfmsg(bytes(msg.data))
    parsed.decode()
    return parsed


def test_xfrm_if_ids_from_link_messages():
    links = [link_message("ipsec1", "xfrm", 1), link_message("ipsec2", "xfrm", 2),
             link_message("ipsec0", "xfrm", 0),          # if_id 0: no SA can match it
             link_message("eth0"), link_message("ifb0", "ifb")]
    assert xfrm.xfrm_if_ids(links) == {"ipsec1": 1, "ipsec2": 2}


def test_declared_structures_have_the_kernels_layout():
    """linux/xfrm.h on LP64: the sizes and the offsets the kernel uses."""
    assert (xfrm.SIZEOF_USERSA_INFO, xfrm.SIZEOF_USERSA_ID, xfrm.SIZEOF_USER_EXPIRE) == (224, 24, 232)
    info = xfrm.XfrmUsersaInfo
    assert [getattr(info, f).offset for f in ("id", "saddr", "lft", "curlft", "stats", "seq",
                                               "reqid", "family", "mode", "flags")] == \
        [56, 80, 96, 160, 192, 204, 208, 212, 214, 216]
    assert (xfrm.XfrmId.spi.offset, xfrm.XfrmId.proto.offset) == (16, 20)
    assert (xfrm.XfrmUsersaId.spi.offset, xfrm.XfrmUsersaId.family.offset) == (16, 20)
    assert xfrm.XfrmUserExpire.hard.offset == 224


def test_truncated_sa_messages_are_refused():
    with pytest.raises(ValueError, match="xfrm_usersa_info of 100 bytes, expected 224"):
        xfrm.parse_sa_info(bytes(100))
    with pytest.raises(ValueError, match="xfrm_usersa_id of 8 bytes, expected 24"):
        xfrm.parse_event(xfrm.XFRM_MSG_DELSA, bytes(8))


class FakeMonitor:
    def __init__(self):
        self.events = []

    def read(self):
        out, self.events = self.events, []
        return out

    def fileno(self):
        return -1

    def close(self):
        pass


def test_watcher_reports_sa_deleted_and_installed():
    sas = [xfrm.SaInfo("10.0.0.1", "10.0.0.2", 1, 50, 1, 1, 0, 0),
           xfrm.SaInfo("10.0.0.2", "10.0.0.1", 2, 50, 1, 1, 0, 0),
           xfrm.SaInfo("10.0.1.1", "10.0.1.2", 3, 50, 2, 2, 0, 0)]
    changes = []
    mon = FakeMonitor()
    w = xfrm.XfrmWatcher({"pri-wan1": 1, "pri-wan2": 2}, lambda *a: changes.append(a), monitor=mon,
                         read_sas=lambda: list(sas), read_local=lambda: {"10.0.0.1", "10.0.1.1"}).start()
    assert w.has_sa == {"pri-wan1": True, "pri-wan2": True} and changes == []
    # a soft expiry (rekey due) changes nothing and re-reads nothing
    mon.events = [xfrm.SaEvent("soft-expired", 1, 1)]
    w.handle_readable()
    assert changes == []
    # IKE deleted pri-wan1's SAs
    del sas[:2]
    mon.events = [xfrm.SaEvent("deleted", 1, 1), xfrm.SaEvent("deleted", 1, 2)]
    w.handle_readable()
    assert changes == [("pri-wan1", False, "SA deleted")]
    # an event for an if_id nobody tracks is ignored
    mon.events = [xfrm.SaEvent("deleted", 9, 9)]
    w.handle_readable()
    assert len(changes) == 1
    # the SAs are back
    sas.append(xfrm.SaInfo("10.0.0.1", "10.0.0.2", 7, 50, 1, 1, 0, 0))
    mon.events = [xfrm.SaEvent("new", 1, 7)]
    w.handle_readable()
    assert changes[-1] == ("pri-wan1", True, "SA installed")
    assert w.counters()["pri-wan2"] == xfrm.EspCounters()


def test_watcher_rekey_keeps_the_tunnel_up():
    """A CHILD_SA rekey installs the new SAs before deleting the old: never down."""
    old = xfrm.SaInfo("10.0.0.1", "10.0.0.2", 1, 50, 1, 1, 0, 0)
    new = xfrm.SaInfo("10.0.0.1", "10.0.0.2", 2, 50, 1, 1, 0, 0)
    sas = [old]
    changes = []
    mon = FakeMonitor()
    w = xfrm.XfrmWatcher({"t": 1}, lambda *a: changes.append(a), monitor=mon, read_sas=lambda: list(sas),
                         read_local=lambda: {"10.0.0.1"}).start()
    sas.append(new)
    mon.events = [xfrm.SaEvent("new", 1, 2)]
    w.handle_readable()
    sas.remove(old)
    mon.events = [xfrm.SaEvent("deleted", 1, 1)]
    w.handle_readable()
    assert changes == []
