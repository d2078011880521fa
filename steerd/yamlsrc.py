"""YAML with line numbers, and the error type every validator reports with.

Config and rules validation must name file, line, key and value; plain
``yaml.safe_load`` forgets where a value came from, so we compose the node
tree and keep each node's line next to its Python value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class Problem:
    """One validation failure, located precisely enough to fix without guessing."""

    file: str
    line: int
    key: str
    value: Any
    expected: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: got {self.value!r}, expected {self.expected}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "key": self.key,
                "value": repr(self.value), "expected": self.expected}


class ValidationError(Exception):
    """All problems of one file at once (operators fix a file in one pass)."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Node:
    """A YAML value plus where it was written. Mappings hold ``dict[str, Node]``,
    sequences ``list[Node]``, scalars their constructed Python value."""

    value: Any
    line: int
    tag: str
    # Line of the key this value belongs to (0 for the root and list items). A block
    # mapping or list starts on the line *after* its key, and problems about a whole
    # section (unknown key, wrong type, missing child) should point at the key.
    key_line: int = 0

    def plain(self) -> Any:
        """The value with all nested Node wrappers removed."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


class _Constructor(yaml.constructor.SafeConstructor):
    pass


def _convert(node: yaml.Node, path: str, problems: list[Problem], where: str) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            sub = f"{where}.{key}" if where else str(key)
            if key in out:
                problems.append(Problem(path, key_node.start_mark.line + 1, sub, key,
                                        "each key only once in a mapping"))
                continue
            child = _convert(value_node, path, problems, sub)
            child.key_line = key_node.start_mark.line + 1
            out[str(key)] = child
        return Node(out, line, "map")
    if isinstance(node, yaml.SequenceNode):
        return Node([_convert(v, path, problems, f"{where}[{i}]") for i, v in enumerate(node.value)],
                    line, "seq")
    value = _Constructor().construct_object(node, deep=True)
    return Node(value, line, "scalar")


def load_yaml(text: str, path: str) -> Node:
    """Parse *text* into a Node tree. Syntax errors, duplicate keys, bad tags or
    scalars, unreadable characters and recursive aliases all raise
    ValidationError naming *path* and the line — never another exception."""
    problems: list[Problem] = []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            return Node({}, 1, "map")
        node = _convert(root, path, problems, "")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else 1
        detail = getattr(exc, "problem", None) or str(exc)
        raise ValidationError([Problem(path, line, "<yaml>", detail, "well-formed YAML")]) from None
    except RecursionError:
        raise ValidationError([Problem(path, 1, "<yaml>", "recursive alias", "well-formed YAML")]) from None
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ValidationError([Problem(path, 1, "<yaml>", str(exc), "well-formed YAML")]) from None
    if problems:
        raise ValidationError(problems)
    return node
