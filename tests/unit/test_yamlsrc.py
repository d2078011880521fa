"""steerd.yamlsrc: one YAML reader for every file and style.

Its tree equals ``yaml.safe_load`` of the same text (values) and PyYAML's
composer (lines); everything a user can write either reads or ends as a
ValidationError naming file and line. The regression cases (issue #11 items 7
and 8) go through the commands a user runs: `steerctl config check` and
`steerctl rules apply`, which must exit 2 with ``file:line:`` and no traceback.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from steerd.cli import main as steerctl
from steerd.config import parse_config
from steerd.rules import parse_rules
from steerd.yamlsrc import (MAX_ALIAS_NODES, MAX_DEPTH, MAX_VALUE_CHARS, Problem, ValidationError,
                            gc_paused, load_yaml)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "bench"))
from rulegen import STYLES, rules_yaml  # noqa: E402

CONFIG = (ROOT / "deploy" / "steerd.example.yaml").read_text()
RULES = (ROOT / "deploy" / "rules.example.yaml").read_text()


def lines_of(node) -> list[tuple[int, int]]:
    out = [(node.line, node.key_line)]
    if node.tag == "map":
        for v in node.value.values():
            out += lines_of(v)
    elif node.tag == "seq":
        for v in node.value:
            out += lines_of(v)
    return out


def composed_lines(node: yaml.Node, key_line: int = 0) -> list[tuple[int, int]]:
    """(line, key line) of every node, from PyYAML's own composer."""
    out = [(node.start_mark.line + 1, key_line)]
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out += composed_lines(v, k.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            out += composed_lines(v)
    return out


def agrees(text: str) -> None:
    """load_yaml gives safe_load's values and the composer's lines, or a
    ValidationError at a line of the file when safe_load fails too."""
    try:
        want = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):
        with pytest.raises(ValidationError) as exc:
            load_yaml(text, "t.yaml")
        for p in exc.value.problems:
            assert p.file == "t.yaml" and 1 <= p.line <= text.count("\n") + 1, p
        return
    tree = load_yaml(text, "t.yaml")
    assert tree.plain() == (want if want is not None else {})
    if want is not None and "<<" not in text:     # the composer keeps "<<" as a key
        assert lines_of(tree) == composed_lines(yaml.compose(text, Loader=yaml.SafeLoader))


@pytest.mark.parametrize("style", STYLES)
def test_rules_files_of_every_style_read_as_safe_load_reads_them(style):
    agrees(rules_yaml(300, style=style))


def test_example_files_and_lines():
    agrees(CONFIG)
    agrees(RULES)


def test_every_style_gives_the_same_rules():
    got = [parse_rules(rules_yaml(500, style=s), "r.yaml").rules for s in STYLES]
    assert got[0] == got[1] == got[2]
    flow = rules_yaml(50, style="flow")
    assert "  - {name: r0, match: {dst: [10.0.0.0/24]" in flow
    # lines are known on every path (the old fast paths had none)
    assert [r.line for r in parse_rules(flow, "r.yaml").rules] == list(range(2, 52))


def test_decisions_where_safe_load_differs():
    # keys are their text (steerd's keys are names), not YAML-typed values
    assert load_yaml("1: a\nnull: b\ntrue: c\n", "t").plain() == {"1": "a", "null": "b", "true": "c"}
    # YAML 1.1's merge and value indicators as values are text (safe_load raises)
    assert load_yaml("a: <<\nb: =\n", "t").plain() == {"a": "<<", "b": "="}
    # a merge: the mapping's own keys win, then the merged mappings in order
    tree = load_yaml("b: &b {x: 1, y: 1}\nd: &d {y: 2, z: 2}\nc:\n  <<: [*b, *d]\n  x: 3\n", "t")
    assert tree.value["c"].plain() == {"x": 3, "y": 1, "z": 2}
    assert tree.value["c"].value["z"].line == 2 and tree.value["c"].value["x"].line == 5


@pytest.mark.parametrize("text", [
    "rules:\n- name: a\n  wan: wan1\n", "a: yes\n", "a: No\n", "a: ~\n", "a: 1:30\n", "a: 012\n",
    "a: 0x1f\n", "a: 1_000\n", "a: 1e3\n", "a: .5\n", "a: 2001-12-14\n", "a: +5\n", "a: fd00::/64\n",
    "a: '!10.0.0.0/8'\n", 'a: "x\\ty"\n', "a: 'it''s'\n", "a: x #c\n", "a: [a, [b]]\n",
    "a: &x 1\nb: *x\n", "a: !!str 1\n", "a: ! 1\n", "a: |\n  x\n", "a: x\n  y\n", "--- \na: 1\n",
    "a: 1\n...\n", "- a\n- b\n", "x\n", "", "# only a comment\n", "a:\nb: 1\n", "? a\n: b\n",
    "\ufeffa: 1\n", "a: \u00e9t\u00e9\n",
    '{"rules": [{"name": "a", "wan": "wan1"}]}\n', "a: !!float 1\n", "a: !!binary aGk=\n",
    "b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n", "b: &b {x: 1}\nd: &d {x: 2, z: 2}\nc: {<<: [*b, *d]}\n",
    # syntax errors: a problem at a line of the file
    "a: [b\n", "a: b: c\n", "a:\n\tb: 1\n", "a: 'x\n", "a: 1\n---\nb: 2\n", "- a\nb: 1\n",
])
def test_tricky_inputs_agree(text):
    agrees(text)


SCALARS = st.one_of(
    st.sampled_from(["yes", "no", "on", "true", "null", "~", "1:30", "012", "0x1f", "1_0", "1e3",
                     "-1", "0", "65535", "10.0.0.0/8", "fd00::/64", "2001-12-14", "80-443", "tcp",
                     "a b", "a #b", "'q'", '"q"', "!x", "&a", "*a", "|", "x: y", "[1]", "{a: 1}",
                     "-", "?", "<<", "=", ".inf", ".nan"]),
    st.integers(min_value=-70000, max_value=70000), st.floats(allow_nan=False),
    st.text(max_size=8),
)
KEYS = st.sampled_from(["rules", "name", "match", "dst", "wan", "x", "yes", "1", "a b", "null"])
DOCS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(KEYS, DOCS, min_size=1, max_size=4),
       flow=st.sampled_from([False, True, None]), indent=st.integers(2, 5))
def test_property_dumped_documents_agree(doc, flow, indent):
    agrees(yaml.safe_dump(doc, default_flow_style=flow, indent=indent, sort_keys=False,
                          allow_unicode=True))


# ----------------------------------------------------------- problems, not tracebacks

def only_problem(text: str) -> Problem:
    with pytest.raises(ValidationError) as exc:
        load_yaml(text, "t.yaml")
    [p] = exc.value.problems
    return p


@pytest.mark.parametrize("text,line,key,expected", [
    ("a: 1\nb: !!int \"\"\n", 2, "b", "integer"),
    ("a:\n  - !!int x\n", 2, "a[0]", "integer"),
    ("a: " + "1" * 4301 + "\n", 1, "a", "4,300 digits"),
    ("a: !!bool maybe\n", 1, "a", "bool"),
    ("a: !!timestamp soon\n", 1, "a", "timestamp"),
    ("a: !!binary a\n", 1, "a", "binary"),
    ("a: !!float x\n", 1, "a", "float"),
    ("x: 1\n? [x]\n: 2\n", 2, "<top>", "plain key"),
    ("a:\n  ? {b: 1}\n  : 2\n", 2, "a", "plain key"),
    ("a: !python/object:os.system x\n", 1, "<yaml>", "tag"),
    ("a: !!set {x}\n", 1, "<yaml>", "tag"),
    ("a: &a [*a]\n", 1, "<yaml>", "recursive"),
    ("a: *nowhere\n", 1, "<yaml>", "anchor"),
    ("a: 1\n---\nb: 1\n", 2, "<yaml>", "one document"),
    ("a:\n  b: 1\n  b: 2\n", 3, "a.b", "once"),
    ("a: {<<: [1]}\n", 1, "a.<<", "merge"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", 1, "<yaml>", "nested"),
])
def test_what_a_user_can_write_is_a_problem_at_its_line(text, line, key, expected):
    p = only_problem(text)
    assert (p.file, p.line, p.key) == ("t.yaml", line, key), p
    assert expected in p.expected, p


def alias_bomb(levels: int = 12, width: int = 9) -> str:
    """Each level a list of `width` aliases to the one before: width**levels nodes."""
    out = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        out.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(out) + "\n"


def test_alias_bomb_is_refused_in_bounded_time_and_memory():
    text = alias_bomb()
    assert len(text) < 800              # 9**12 = 2.8e11 nodes once expanded
    tracemalloc.start()
    t0 = time.process_time()
    try:
        p = only_problem(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.process_time() - t0 < 2.0
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB"
    assert p.key == "<yaml>" and f"{MAX_ALIAS_NODES:,}" in p.value and p.line > 1


def test_aliases_within_the_bound_are_shared_not_copied():
    text = "base: &m {dst: 10.0.0.0/8, proto: tcp}\n" + "".join(
        f"r{i}: {{match: *m, wan: wan1}}\n" for i in range(100))
    tree = load_yaml(text, "t.yaml")
    assert tree.value["r5"].value["match"].plain() == {"dst": "10.0.0.0/8", "proto": "tcp"}
    assert tree.value["r5"].value["match"].key_line == 7


def test_error_values_are_bounded():
    big = {f"k{i}": list(range(50)) for i in range(200)}
    p = Problem("f", 1, "k", big, "something small")
    assert len(str(p)) < MAX_VALUE_CHARS + 100 and "characters)" in str(p)
    assert len(p.as_dict()["value"]) <= MAX_VALUE_CHARS


def test_gc_is_paused_while_reading_and_restored_after():
    assert gc.isenabled()
    started, release = threading.Event(), threading.Event()

    def other():
        with gc_paused():
            started.set()
            release.wait(5)
    t = threading.Thread(target=other)
    t.start()
    started.wait(5)
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled(), "the other reader is still inside"
    release.set()
    t.join()
    assert gc.isenabled()
    with pytest.raises(ValidationError), gc_paused():
        load_yaml("a: [\n", "t.yaml")
    assert gc.isenabled()


# --------------------------------------------- the commands users run (issue #11, 7 and 8)

def check(tmp_path, config: str | bytes, rules: str | bytes | None = None):
    cfg = tmp_path / "steerd.yaml"
    text = config if isinstance(config, bytes) else config.encode()
    if rules is not None:
        (tmp_path / "rules.yaml").write_bytes(rules if isinstance(rules, bytes) else rules.encode())
        text = text.replace(b"rules_file: /etc/steerd/rules.yaml",
                            f"rules_file: {tmp_path / 'rules.yaml'}".encode())
        assert str(tmp_path).encode() in text
    cfg.write_bytes(text)
    return CliRunner().invoke(steerctl, ["config", "check", str(cfg)])


def assert_refused_at(result, path: str, line: int, fragment: str = "") -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert f"{path}:{line}:" in result.output, result.output
    assert fragment in result.output, result.output


def test_config_check_non_utf8_rules_file(tmp_path):
    bad = RULES.encode().replace(b"name: voice", b"name: voi\xe7e")
    line = RULES[:RULES.index("name: voice")].count("\n") + 1
    assert_refused_at(check(tmp_path, CONFIG, bad), str(tmp_path / "rules.yaml"), line, "UTF-8")


def test_config_check_non_utf8_config(tmp_path):
    bad = CONFIG.encode().replace(b"site: branch-01", b"site: br\xffnch-01")
    line = CONFIG[:CONFIG.index("site: branch-01")].count("\n") + 1
    assert_refused_at(check(tmp_path, bad), str(tmp_path / "steerd.yaml"), line, "UTF-8")


def test_rules_apply_non_utf8_file_exits_2_before_connecting(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"rules:\n  - name: \xff\n")
    res = CliRunner().invoke(steerctl, ["--socket", str(tmp_path / "none.sock"), "rules", "apply",
                                        "-f", str(path)])
    assert_refused_at(res, str(path), 2, "UTF-8")


def rules_with(line: str) -> tuple[str, int]:
    """The example rules file with its first `dst_port` line replaced; and that line."""
    i = RULES.index("      dst_port:")
    j = RULES.index("\n", i)
    return RULES[:i] + line + RULES[j:], RULES[:i].count("\n") + 1


@pytest.mark.parametrize("line,fragment", [
    ("      dst_port: " + "9" * 4301, "4,300 digits"),
    ("      dst_port: !!int \"\"", "integer"),
    ("      ? [x]\n      : 1", "plain key"),
])
def test_config_check_rules_file_problems(tmp_path, line, fragment):
    text, n = rules_with(line)
    assert_refused_at(check(tmp_path, CONFIG, text), str(tmp_path / "rules.yaml"), n, fragment)


IPSEC = """ipsec:
  connection_mode: responder-only
  local_id: {fqdn: pop.example.net}
  secrets_file: /etc/steerd/ipsec-secrets.yaml
  proposals:
    init:
      - {encryption: aes256, integrity: sha256, dh_group: 14}
"""


@pytest.mark.parametrize("old,new,fragment", [
    ("encryption: aes256", "encryption: {}", "ipsec.proposals.init[0].encryption"),
    ("encryption: aes256", "encryption: [aes256]", "ipsec.proposals.init[0].encryption"),
    ("dh_group: 14", 'dh_group: "²"', "ipsec.proposals.init[0].dh_group"),
])
def test_config_check_ipsec_problems(tmp_path, old, new, fragment):
    text = CONFIG.rstrip("\n") + "\n" + IPSEC.replace(old, new)
    assert parse_config(CONFIG.rstrip("\n") + "\n" + IPSEC, "ok.yaml").ipsec
    line = text.count("\n")
    assert_refused_at(check(tmp_path, text), str(tmp_path / "steerd.yaml"), line, fragment)


def test_config_check_alias_bomb_in_config(tmp_path):
    bomb = alias_bomb()
    t0 = time.monotonic()
    res = check(tmp_path, CONFIG.rstrip("\n") + "\n" + bomb.replace("a0:", "x_a0:"))
    assert time.monotonic() - t0 < 5
    assert res.exit_code == 2 and "aliases expanding" in res.output, res.output


def test_config_check_alias_bomb_in_rules(tmp_path):
    bomb = alias_bomb()
    t0 = time.monotonic()
    res = check(tmp_path, CONFIG, bomb + "rules: []\n")
    assert time.monotonic() - t0 < 5
    assert res.exit_code == 2 and "aliases expanding" in res.output, res.output


def steerd_start(tmp_path, config: str, rules: str | None = None):
    """`steerd --config` as systemd runs it; both cases exit before touching the kernel."""
    import subprocess
    if rules is not None:
        (tmp_path / "rules.yaml").write_text(rules)
        config = config.replace("rules_file: /etc/steerd/rules.yaml",
                                f"rules_file: {tmp_path / 'rules.yaml'}")
    (tmp_path / "steerd.yaml").write_text(config)
    return subprocess.run([sys.executable, "-m", "steerd.daemon", "--config",
                           str(tmp_path / "steerd.yaml")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_daemon_start_refuses_a_bad_rules_file_like_a_bad_config(tmp_path):
    """Issue #17 item 11: the rules file's ValidationError escaped load_rules."""
    bad_rules, n = rules_with("      dst_port: [0]")
    res = steerd_start(tmp_path, CONFIG, bad_rules)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("steerd: refusing to start, 1 problem(s) in rules file:\n")
    assert f"{tmp_path / 'rules.yaml'}:{n}: rules[0].match.dst_port[0]: got 0" in res.stderr

    res = steerd_start(tmp_path, CONFIG.replace("site: branch-01", "site: 'bad site'"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("steerd: refusing to start, 1 problem(s) in config:\n")
