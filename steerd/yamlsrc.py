"""YAML with line numbers, and the error type every validator reports with.

Config and rules validation must name file, line, key and value; plain
``yaml.safe_load`` forgets where a value came from, so we keep each value's
line next to it in a :class:`Node` tree.

One reader for every file steerd reads and every YAML style (block, flow,
JSON): libyaml, PyYAML's C parser, produces the events with their marks and
:func:`load_yaml` builds the Node tree straight from them. PyYAML's own
composer and constructor would build two more layers of Python objects
(yaml.Node, then plain data) and resolve every scalar's type with a chain of
regular expressions; here a scalar's type is resolved once per distinct text.

Everything a user can write ends as a :class:`ValidationError` naming the file
and line, never another exception: undecodable bytes, syntax errors, unknown
tags, scalars a tag cannot construct (``!!int ""``, a 4,301-digit integer),
complex keys, duplicate keys, recursive aliases, nesting deeper than
MAX_DEPTH and aliases expanding to more than MAX_ALIAS_NODES nodes (an alias
"bomb" of a few hundred bytes would otherwise expand to gigabytes in every
tree walk). Merge keys (``<<: *defaults``) are YAML 1.1 as PyYAML reads them:
the mapping's own keys win, then the merged mappings in order.
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import yaml
from yaml.events import (AliasEvent, DocumentStartEvent, MappingEndEvent, MappingStartEvent,
                         ScalarEvent, SequenceEndEvent, SequenceStartEvent, StreamEndEvent)

#: Problem values longer than this (as repr) are cut: an error message stays
#: readable, and a huge value cannot make the message huge.
MAX_VALUE_CHARS = 200
#: Nodes that aliases may add to the tree (each alias counts its anchor's size).
MAX_ALIAS_NODES = 100_000
#: Nesting deeper than this is refused (no config or rules file nests past ~6).
MAX_DEPTH = 64


def short_repr(value: Any) -> str:
    """repr(value), cut to MAX_VALUE_CHARS characters."""
    text = repr(value)
    if len(text) <= MAX_VALUE_CHARS:
        return text
    return f"{text[:MAX_VALUE_CHARS - 40]}... ({len(text)} characters)"


@dataclass(frozen=True)
class Problem:
    """One validation failure, located precisely enough to fix without guessing."""

    file: str
    line: int
    key: str
    value: Any
    expected: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: got {short_repr(self.value)}, " \
               f"expected {self.expected}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "key": self.key,
                "value": short_repr(self.value), "expected": self.expected}


class ValidationError(Exception):
    """All problems of one file at once (operators fix a file in one pass)."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Node:
    """A YAML value plus where it was written. Mappings hold ``dict[str, Node]``,
    sequences ``list[Node]``, scalars their constructed Python value."""

    __slots__ = ("value", "line", "tag", "key_line")

    def __init__(self, value: Any, line: int, tag: str, key_line: int = 0):
        self.value = value
        self.line = line
        self.tag = tag          # "map" | "seq" | "scalar"
        # Line of the key this value belongs to (0 for the root and list items). A
        # block mapping or list starts on the line *after* its key, and problems
        # about a whole section (unknown key, wrong type, missing child) should
        # point at the key.
        self.key_line = key_line

    def plain(self) -> Any:
        """The value with all nested Node wrappers removed."""
        if self.tag == "map":
            return {k: v.plain() for k, v in self.value.items()}
        if self.tag == "seq":
            return [v.plain() for v in self.value]
        return self.value

    def __repr__(self) -> str:
        return f"Node({self.value!r}, line={self.line}, tag={self.tag!r})"


class _GcPause:
    """Counts the users of gc_paused (threads may read files side by side)."""

    lock = threading.Lock()
    users = 0
    was_enabled = True


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a big file becomes objects.

    Reading 10,000 rules allocates ~10^6 objects that all stay alive: the
    collector would scan the growing heap again and again and take most of the
    time (5-8x), and more in the daemon, whose heap is already large. Reference
    counting still frees everything; collection comes back when the last
    concurrent user leaves, as it was before the first. Also a decorator."""
    with _GcPause.lock:
        if _GcPause.users == 0:
            _GcPause.was_enabled = gc.isenabled()
            gc.disable()
        _GcPause.users += 1
    try:
        yield
    finally:
        with _GcPause.lock:
            _GcPause.users -= 1
            if _GcPause.users == 0 and _GcPause.was_enabled:
                gc.enable()


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # the pure-Python parser has the same events
_RESOLVERS = yaml.SafeLoader.yaml_implicit_resolvers
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_T = "tag:yaml.org,2002:"
_STR, _MAP, _SEQ, _MERGE = _T + "str", _T + "map", _T + "seq", _T + "merge"
# Scalar tags and their constructors; any other tag is refused (no Python objects).
_SCALAR_TAGS = {_T + t: _CONSTRUCTOR.yaml_constructors[_T + t]
                for t in ("null", "bool", "int", "float", "binary", "timestamp")}
_TAG_NAMES = "!!str, !!int, !!float, !!bool, !!null, !!binary, !!timestamp, !!map, !!seq"


def _resolve(text: str) -> str:
    """The tag of a plain scalar, as PyYAML's SafeLoader resolves it."""
    for tag, regexp in _RESOLVERS.get(text[:1], ()):
        if regexp.match(text):
            return tag
    return _STR


class _Frame:
    """A mapping or sequence being built."""

    __slots__ = ("node", "items", "is_map", "slot", "key", "key_line", "merges", "anchor", "start")

    def __init__(self, node: Node, slot: str | int, anchor: str | None, start: int):
        self.node = node
        self.items = node.value
        self.is_map = node.tag == "map"
        self.slot = slot           # its key or index in the parent (for problem keys)
        self.key: Any = _NO_KEY    # mappings: the key whose value comes next
        self.key_line = 0
        self.merges: list[Node] = []
        self.anchor = anchor
        self.start = start         # nodes built before it (its size = built - start)


_NO_KEY = object()   # a mapping expects a key next
_BAD_KEY = object()  # the pending key was refused; its value is dropped


class _Stop(Exception):
    """A problem after which the rest of the stream cannot be read."""


class _Builder:
    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Node, int]] = {}
        self.built = 0            # nodes built, aliases counted at their anchor's size
        self.expanded = 0         # of which added by aliases
        self.plain_cache: dict[str, Any] = {}

    def where(self, last: str | int | None = None) -> str:
        """The dotted key of the node being read (``tunnels[1].bandwidth``)."""
        out = ""
        slots = [f.slot for f in self.stack[1:]] if self.stack else []
        if self.stack and self.stack[-1].is_map:
            key = self.stack[-1].key
            last = key if isinstance(key, str) else last
        elif self.stack:
            last = len(self.stack[-1].items)
        for s in slots + ([] if last is None else [last]):
            out += f"[{s}]" if isinstance(s, int) else (f".{s}" if out else str(s))
        return out or "<top>"

    def bad(self, line: int, key: str, value: Any, expected: str) -> None:
        self.problems.append(Problem(self.path, line, key, value, expected))

    def stop(self, line: int, value: Any, expected: str) -> _Stop:
        self.bad(line, "<yaml>", value, expected)
        return _Stop()

    def scalar(self, ev: ScalarEvent, line: int) -> Any:
        text, tag = ev.value, ev.tag
        if tag is None or tag == "!":
            if ev.implicit[0]:                  # plain (PyYAML: "!" too): typed by its text
                try:
                    return self.plain_cache[text]
                except KeyError:
                    pass
                tag = _resolve(text)
                if tag not in _SCALAR_TAGS:     # str, and YAML 1.1's "<<" and "=" as text
                    self.plain_cache[text] = text
                    return text
                value = self.construct(tag, text, line)
                self.plain_cache[text] = value
                return value
            return text                                      # quoted: a string
        if tag == _STR:
            return text
        if tag not in _SCALAR_TAGS:
            self.bad(line, "<yaml>", f"!{tag[len(_T):]}" if tag.startswith(_T) else tag,
                     f"well-formed YAML: no tag, or one of {_TAG_NAMES} "
                     "(quote a value that starts with '!', like \"!10.0.0.0/8\")")
            return text
        return self.construct(tag, text, line)

    def construct(self, tag: str, text: str, line: int) -> Any:
        try:
            return _SCALAR_TAGS[tag](_CONSTRUCTOR, yaml.ScalarNode(tag, text))
        except Exception:   # noqa: BLE001 - PyYAML's constructors raise anything on odd text
            # (!!bool x: KeyError, !!timestamp x: AttributeError, !!int "": IndexError)
            name = tag[len(_T):]
            what = "an integer" if name == "int" else f"a YAML {name}"
            if name == "int" and len(text) > 4300:      # Python's int() limit
                what += " of at most 4,300 digits"
            self.bad(line, self.where(), text, what)
            return text

    def collection_tag(self, ev: Any, want: str, line: int) -> None:
        if ev.tag not in (None, "!", want):
            self.bad(line, "<yaml>", ev.tag, f"well-formed YAML: no tag, or {want.replace(_T, '!!')}")

    def build(self, text: str) -> Node | None:
        loader = _LOADER(text)
        try:
            return self._events(loader.get_event)
        finally:
            loader.dispose()

    def _events(self, get: Any) -> Node | None:
        stack, anchors, cache = self.stack, self.anchors, self.plain_cache
        root: Node | None = None
        docs = 0
        while True:
            ev = get()
            t = type(ev)
            if t is ScalarEvent:
                line = ev.start_mark.line + 1
                top = stack[-1] if stack else None
                if top is not None and top.is_map and top.key is _NO_KEY:
                    # a key: its text, not its value (``1:`` and ``null:`` are keys too)
                    top.key = _MERGE if ev.value == "<<" and ev.implicit[0] and ev.tag is None \
                        else ev.value
                    top.key_line = line
                    if ev.anchor is not None:
                        anchors[ev.anchor] = (Node(ev.value, line, "scalar"), 1)
                    continue
                # the common case inline: a plain scalar whose text was seen before
                value = cache.get(ev.value, _NO_KEY) if ev.tag is None and ev.implicit[0] \
                    else _NO_KEY
                if value is _NO_KEY:
                    value = self.scalar(ev, line)
                node = Node(value, line, "scalar")
                self.built += 1
                if ev.anchor is not None:
                    anchors[ev.anchor] = (node, 1)
            elif t is MappingStartEvent or t is SequenceStartEvent:
                line = ev.start_mark.line + 1
                is_map = t is MappingStartEvent
                self.collection_tag(ev, _MAP if is_map else _SEQ, line)
                if len(stack) >= MAX_DEPTH:
                    raise self.stop(line, f"nesting deeper than {MAX_DEPTH} levels",
                                    f"at most {MAX_DEPTH} nested mappings and lists")
                slot: str | int = 0
                if stack:
                    parent = stack[-1]
                    slot = parent.key if parent.is_map else len(parent.items)
                    if not isinstance(slot, (str, int)):
                        slot = "<<" if slot is _MERGE else "?"
                node = Node({} if is_map else [], line, "map" if is_map else "seq")
                stack.append(_Frame(node, slot, ev.anchor, self.built))
                if ev.anchor is not None:
                    anchors.pop(ev.anchor, None)      # an alias to it now would be recursive
                self.built += 1
                continue
            elif t is MappingEndEvent or t is SequenceEndEvent:
                f = stack[-1]
                if f.merges:
                    self.merge(f)
                stack.pop()
                node = f.node
                if f.anchor is not None:
                    anchors[f.anchor] = (node, self.built - f.start)
            elif t is AliasEvent:
                line = ev.start_mark.line + 1
                if ev.anchor not in anchors:
                    open_ = any(f.anchor == ev.anchor for f in stack)
                    raise self.stop(line, f"*{ev.anchor}",
                                    "well-formed YAML: an alias may not point into the node "
                                    "that contains it (recursive alias)" if open_ else
                                    f"well-formed YAML: an alias to an anchor defined before it "
                                    f"(no &{ev.anchor} above)")
                target, size = anchors[ev.anchor]
                self.built += size
                self.expanded += size
                if self.expanded > MAX_ALIAS_NODES:
                    raise self.stop(line, f"aliases expanding to more than {MAX_ALIAS_NODES:,} nodes",
                                    "fewer or smaller aliases")
                top = stack[-1] if stack else None
                if top is not None and top.is_map and top.key is _NO_KEY:
                    if target.tag == "scalar":
                        top.key = str(target.value)
                    else:
                        self.bad(line, self.where(), target.plain(), "a plain key, not a "
                                 "mapping or list (complex keys are not used by steerd)")
                        top.key = _BAD_KEY
                    top.key_line = line
                    continue
                node = Node(target.value, target.line, target.tag)   # own key_line
            elif t is DocumentStartEvent:
                line = ev.start_mark.line + 1
                docs += 1
                if docs > 1:
                    raise self.stop(line, "a second document", "well-formed YAML: one document "
                                    "(no '---' after the content)")
                continue
            elif t is StreamEndEvent:
                return root
            else:       # stream start, document end
                continue
            if not stack:
                root = node
                continue
            f = stack[-1]
            if not f.is_map:
                f.items.append(node)
            elif f.key is _NO_KEY:         # a mapping or list as a key
                self.bad(line, self.where(), node.plain(),
                         "a plain key, not a mapping or list (complex keys are not used by steerd)")
                f.key, f.key_line = _BAD_KEY, line
            else:
                key = f.key
                f.key = _NO_KEY
                if key is _BAD_KEY:
                    continue
                if key is _MERGE:
                    f.merges.append(node)
                elif key in f.items:
                    self.bad(f.key_line, self.where(key), key, "each key only once in a mapping")
                else:
                    node.key_line = f.key_line
                    f.items[key] = node

    def merge(self, f: _Frame) -> None:
        """``<<: *a`` or ``<<: [*a, *b]``: keys not in the mapping itself, first merge wins."""
        own = f.items
        merged: dict[str, Node] = {}
        for m in f.merges:
            for src in (m.value if m.tag == "seq" else [m]):
                if src.tag != "map":
                    self.bad(src.line, f"{self.where()}.<<", src.plain(),
                             "a mapping or a list of mappings to merge (<<: *name)")
                    continue
                for k, v in src.value.items():
                    if k not in own and k not in merged:
                        merged[k] = v
        own.update(merged)


def load_yaml(text: str, path: str) -> Node:
    """Parse *text* into a Node tree. Every problem a user can write raises
    ValidationError naming *path* and the line, never another exception."""
    b = _Builder(path)
    with gc_paused():
        try:
            root = b.build(text)
        except _Stop:
            root = None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            # libyaml marks an unexpected end one line past a last line without "\n"
            line = min(mark.line + 1, _last_line(text)) if mark else 1
            detail = getattr(exc, "problem", None) or str(exc)
            b.problems.append(Problem(path, line, "<yaml>", detail, "well-formed YAML"))
    if b.problems:
        raise ValidationError(b.problems)
    if root is None:
        return Node({}, 1, "map")
    return root


def _last_line(text: str) -> int:
    return sum(text.count(c) for c in "\n\r\x85\u2028\u2029") + 1


def decode(data: bytes, path: str) -> str:
    """A file's bytes as text (UTF-8, a BOM allowed), or a ValidationError at the
    line of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValidationError([Problem(path, line, "<file>", data[exc.start:exc.start + 8],
                                       "UTF-8 text")]) from None


def read_text(path: str, what: str) -> str:
    """The file at *path* as text, or a ValidationError at line 0 (*what*: "a readable
    rules file") or at the line of its first non-UTF-8 byte."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ValidationError([Problem(path, 0, "<file>", exc.strerror, what)]) from None
    return decode(data, path)
