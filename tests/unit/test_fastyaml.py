"""steerd.fastyaml: whenever it returns a tree, that tree equals yaml.safe_load
of the same text; it takes the fast path for the files operators write."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from steerd.fastyaml import fast_load
from steerd.yamlsrc import load_yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "bench"))
from rulegen import rules_yaml  # noqa: E402


def agrees(text: str) -> bool:
    """fast_load declines, or gives exactly what safe_load gives (and safe_load succeeds)."""
    tree = fast_load(text)
    if tree is None:
        return True
    try:
        want = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return tree.plain() == (want if want is not None else {})


def test_generated_and_example_rules_take_the_fast_path():
    for text in (rules_yaml(2000), (ROOT / "deploy" / "rules.example.yaml").read_text()):
        tree = fast_load(text)
        assert tree is not None
        assert tree.plain() == yaml.safe_load(text)


def test_lines_are_those_of_the_full_parser():
    text = (ROOT / "deploy" / "rules.example.yaml").read_text()

    def lines(node, out):
        out.append((node.line, node.key_line))
        if isinstance(node.value, dict):
            for v in node.value.values():
                lines(v, out)
        elif isinstance(node.value, list):
            for v in node.value:
                lines(v, out)
        return out
    assert lines(fast_load(text), []) == lines(load_yaml(text, "x"), [])


@pytest.mark.parametrize("text", [
    "rules:\n- name: a\n  wan: wan1\n",                         # indentless sequence
    "rules:\n  - name: a   # comment\n    match: {dst: 10.0.0.0/8}\n",
    "a: yes\n", "a: No\n", "a: on\n", "a: ~\n", "a: null\n", "a: 1:30\n", "a: 012\n",
    "a: 0x1f\n", "a: 1_000\n", "a: 1e3\n", "a: .5\n", "a: 2001-12-14\n", "a: +5\n", "a: 0\n",
    "a: fd00::\n", "a: fd00::/64\n", "a: '!10.0.0.0/8'\n", 'a: "x\\ty"\n', "a: 'it''s'\n",
    "a: x #c\n", "a: x#c\n", "a: [1, 2, 3-4]\n", "a: []\n", "a: [a, [b]]\n", "a: [a,]\n",
    "a: 1\na: 2\n", "a: &x 1\nb: *x\n", "a: !!str 1\n", "a: |\n  x\n", "a: x\n  y\n",
    "a:\n\tb: 1\n", "--- \na: 1\n", "a: 1\n...\n", "a: b: c\n", "- a\n- b\n", "x\n", "",
    "# only a comment\n", "a:\n  - 1\n  -\n  - 3\n", "a:\nb: 1\n", "a: 'x: y'\n",
    "a: \"x # y\"\n", "? a\n: b\n", "a: x\x00\n", "\ufeffa: 1\n", "a: \u00e9t\u00e9\n",
    "a:\n  b:\n    c: 1\n  d: 2\n", "a:\n    b: 1\n  c: 2\n", "<<: {a: 1}\n", "a: =\n",
    # '?' ends a plain scalar in flow context (PyYAML: "expected ',' or ']'")
    "a: [b?c]\n", "a: [b?]\n", "- [a, b?c]\n",
    # str.strip() removes Unicode spaces that YAML keeps as scalar content
    "a: b\xa0\n", "a: \xa0b\n", "a\xa0: 1\n", "a: \xa0\n", "\u3000\n", "a: 1\n\xa0\n",
    "a: [b\u2003, c]\n", "a: b\u202f\n",
    # U+2028/U+2029 are line breaks to PyYAML
    "a: x\u2028y\n", "\u2028a: 1\n", "a\u2029b: 1\n",
    # PyYAML refuses implicit keys longer than 1024 characters
    "a" * 1025 + ": 1\n", "- " + "a" * 1025 + ": 1\n", "a" + " " * 1030 + ": 1\n",
])
def test_tricky_inputs_agree_or_fall_back(text):
    assert agrees(text)


def test_huge_integer_falls_back_instead_of_raising():
    # int() refuses > 4300 digits (Python 3.11+); safe_load raises ValueError
    assert fast_load("a: " + "1" * 5000 + "\n") is None


def test_deep_nesting_falls_back_where_safe_load_overflows():
    # "- a:" with an indentless sequence under it costs PyYAML's composer more
    # stack frames per level than fast_load's recursion
    for depth in range(150, 420, 10):
        text = "".join(" " * (2 * i) + "- a:\n" for i in range(depth))
        if fast_load(text) is None:
            continue
        try:
            yaml.safe_load(text)
        except RecursionError:
            pytest.fail(f"fast_load returned a tree at depth {depth}, safe_load overflows")


# keys and scalars that stress the subset: YAML 1.1 booleans, numbers of all
# kinds, CIDRs, port ranges, indicators, comments, quotes
SCALARS = st.one_of(
    st.sampled_from(["yes", "no", "on", "off", "true", "False", "null", "~", "1:30", "012", "0x1f",
                     "1_0", "1e3", "-1", "+1", "0", "7", "65535", "10.0.0.0/8", "fd00::/64", "fd00::",
                     "2001-12-14", "80-443", "tcp", "wan1", "a b", "a #b", "a#b", "'q'", '"q"', "!x",
                     "&a", "*a", "|", ">", "@x", "%x", "x: y", "x:y", "[1]", "{a: 1}", "-", "- x", "?"]),
    st.integers(min_value=0, max_value=70000),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=8),
)
KEYS = st.sampled_from(["rules", "name", "match", "dst", "src", "dst_port", "wan", "fallback",
                        "proto", "dscp", "x", "yes", "1", "a b"])
DOCS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(doc=st.dictionaries(KEYS, DOCS, min_size=1, max_size=4), flow=st.sampled_from([False, None]),
       indent=st.integers(2, 5))
def test_property_dumped_documents_agree(doc, flow, indent):
    assert agrees(yaml.safe_dump(doc, default_flow_style=flow, indent=indent, sort_keys=False))


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_property_mutated_rules_files_agree(data):
    text = rules_yaml(3, seed=data.draw(st.integers(0, 1000)))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(text)))
        junk = data.draw(st.sampled_from([" ", "  ", "\n", "-", ":", "#", "'", '"', "[", "]", ",",
                                          "- ", ": ", " #", "\t", "yes", "1:2", "&a", "!", "{"]))
        cut = data.draw(st.integers(0, 3))
        text = text[:pos] + junk + text[pos + cut:]
    assert agrees(text)
