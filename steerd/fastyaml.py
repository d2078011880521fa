"""A fast reader for the plain YAML that rules files are written in.

libyaml spends ~0.7 s on a 10,000-rule file (80,000 lines), most of it making
Python event and node objects; this line-by-line reader takes ~0.15 s and
builds the Node tree (with line numbers) directly. It accepts a strict subset:
block mappings and sequences indented with spaces, flow sequences of scalars
(``[80, 443, 8000-8100]``), plain and simply quoted scalars, comments. For
anything else (anchors, tags, flow mappings, block scalars, multi-line
scalars, escapes, tabs, duplicate keys, documents...) it returns None and the
caller falls back to libyaml / yamlsrc.load_yaml, which also produce the error
messages. Scalars are typed by PyYAML's own SafeLoader resolver; a scalar that
would resolve to anything but a string or a plain decimal integer also means
None. So a result, when there is one, equals ``yaml.safe_load`` of the text
(tests/unit/test_fastyaml.py checks that property).
"""
from __future__ import annotations

import re

import yaml

from .yamlsrc import Node

_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)\Z")
# characters YAML does not allow in a stream (libyaml refuses them), the BOM,
# and every whitespace but space and newline: YAML keeps Unicode spaces in
# scalars (str.strip would not), and U+2028/U+2029 are line breaks to PyYAML
_NOT_PLAIN = re.compile("[^\n\x20-\x7e\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
                        "|[^\\S \n]")
MAX_INDENT = 100      # deeper files go to PyYAML (whose own recursion ends far deeper)
MAX_KEY = 1000        # PyYAML refuses implicit keys longer than 1024 characters
MAX_INT_DIGITS = 20
_INDICATORS = set("-?:,[]{}#&*!|>'\"%@`")
_RESOLVERS = yaml.resolver.Resolver.yaml_implicit_resolvers
_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"


class _Unsupported(Exception):
    """Outside the subset: the caller uses the full YAML parser."""


def _plain(text: str) -> str | int:
    """A plain scalar as SafeLoader would construct it, if a str or decimal int."""
    # (" #" cannot occur: comments are stripped off the line before)
    if not text or text[0] in _INDICATORS or text[-1] == ":" or ": " in text:
        raise _Unsupported(text)
    tag = _STR_TAG
    for t, regexp in _RESOLVERS.get(text[0], ()):
        if regexp.match(text):
            tag = t
            break
    if tag == _STR_TAG:
        return text
    if tag == _INT_TAG and _INT.match(text) and len(text) <= MAX_INT_DIGITS:
        return int(text)
    raise _Unsupported(text)


def _scalar(text: str, cache: dict[str, str | int]) -> str | int:
    got = cache.get(text)
    if got is None:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            inner = text[1:-1]
            if text[0] in inner or "\\" in inner:
                raise _Unsupported(text)
            got = inner
        else:
            got = _plain(text)
        cache[text] = got
    return got


def _strip_comment(line: str) -> str:
    """The line without its comment: from the first '#' at the start or after a
    space, unless a quote comes before it (then it may be inside a scalar)."""
    i = line.find("#")
    while i > 0 and line[i - 1] != " ":
        i = line.find("#", i + 1)
    if i < 0:
        return line.rstrip(" ")
    if "'" in line[:i] or '"' in line[:i]:
        raise _Unsupported(line)
    return line[:i].rstrip(" ")


class _Reader:
    def __init__(self, text: str):
        self.lines: list[tuple[int, str, int]] = []   # (indent, content, line number)
        self.cache: dict[str, str | int] = {}
        for n, raw in enumerate(text.split("\n"), 1):
            content = _strip_comment(raw) if "#" in raw else raw.rstrip(" ")
            stripped = content.lstrip(" ")
            if not stripped:
                continue
            if n == 1 and stripped.startswith(("%", "---")) or stripped.startswith(("---", "...")):
                raise _Unsupported("document markers")
            indent = len(content) - len(stripped)
            if indent > MAX_INDENT:
                raise _Unsupported("nesting")
            self.lines.append((indent, stripped, n))
        self.i = 0

    def value(self, text: str, line: int) -> Node:
        if text.startswith("["):
            if not text.endswith("]") or text.count("[") != 1 or text.count("]") != 1:
                raise _Unsupported(text)
            body = text[1:-1].strip(" ")
            if not body:
                return Node([], line, "seq")
            if "?" in body:          # ends a plain scalar in flow context
                raise _Unsupported(text)
            return Node([Node(self.scalar(part.strip(" ")), line, "scalar") for part in body.split(",")],
                        line, "seq")
        return Node(self.scalar(text), line, "scalar")

    def scalar(self, text: str) -> str | int:
        if not text or "{" in text or "}" in text or "[" in text or "]" in text:
            raise _Unsupported(text)
        return _scalar(text, self.cache)

    def block(self, indent: int) -> Node:
        """The block node whose lines start at column *indent*."""
        ind, content, _ = self.lines[self.i]
        if ind != indent:
            raise _Unsupported("indentation")
        if content == "-" or content.startswith("- "):
            return self.sequence(indent)
        return self.mapping(indent)

    def nested(self, parent_indent: int, line: int, seq_same_indent: bool) -> Node:
        """The value of a key or dash with nothing after it on its line."""
        if self.i < len(self.lines):
            ind, content, _ = self.lines[self.i]
            if ind > parent_indent:
                return self.block(ind)
            if seq_same_indent and ind == parent_indent and (content == "-" or content.startswith("- ")):
                return self.sequence(ind)
        return Node(None, line, "scalar")

    def sequence(self, indent: int) -> Node:
        items: list[Node] = []
        first = self.lines[self.i][2]
        while self.i < len(self.lines):
            ind, content, line = self.lines[self.i]
            if ind != indent or not (content == "-" or content.startswith("- ")):
                break
            rest = content[1:].lstrip(" ")
            self.i += 1
            if not rest:
                items.append(self.nested(indent, line, False))
                continue
            if rest.startswith("- ") or rest == "-":
                raise _Unsupported("nested sequence on one line")
            column = indent + len(content) - len(rest)
            if _key_end(rest) > 0:
                # "- key: value": a mapping whose first line is this one
                self.i -= 1
                self.lines[self.i] = (column, rest, line)
                items.append(self.mapping(column))
            else:
                items.append(self.value(rest, line))
        if self.i < len(self.lines) and self.lines[self.i][0] > indent:
            raise _Unsupported("indentation")
        return Node(items, first, "seq")

    def mapping(self, indent: int) -> Node:
        out: dict[str, Node] = {}
        first = self.lines[self.i][2]
        while self.i < len(self.lines):
            ind, content, line = self.lines[self.i]
            if ind != indent or content == "-" or content.startswith("- "):
                break
            colon = _key_end(content)
            if colon < 0:
                raise _Unsupported(content)
            if colon > MAX_KEY:
                raise _Unsupported("long key")
            key = self.scalar(content[:colon].rstrip(" "))
            if not isinstance(key, str) or key in out:
                raise _Unsupported("key")
            rest = content[colon + 1:].strip(" ")
            self.i += 1
            child = self.nested(indent, line, True) if not rest else self.value(rest, line)
            child.key_line = line
            out[key] = child
        if self.i < len(self.lines) and self.lines[self.i][0] > indent:
            raise _Unsupported("indentation")
        return Node(out, first, "map")


def _key_end(content: str) -> int:
    """Where the ':' of "key: value" or "key:" is; -1 if this is not such a line."""
    i = content.find(":")
    if i > 0 and (i == len(content) - 1 or content[i + 1] == " ") and content[0] not in "'\"[{":
        return i
    return -1


def fast_load(text: str) -> Node | None:
    """The Node tree of *text*, or None when it is outside the subset (then use
    yamlsrc.load_yaml, or libyaml). An empty document is an empty mapping."""
    if _NOT_PLAIN.search(text):
        return None
    try:
        r = _Reader(text)
        if not r.lines:
            return Node({}, 1, "map")
        root = r.block(0)
        if r.i != len(r.lines):
            raise _Unsupported("trailing lines")
        return root
    except (_Unsupported, RecursionError):
        return None
