"""The package's layering: every module sits on a layer, imports only go down (or
sideways within a layer, without a circle), and the pure core never reaches the
kernel. The README's architecture picture draws the same layers.

Imports are read from the source (ast), lazy ones inside functions included:
an import deferred to run time is still a dependency. Imports under
``if TYPE_CHECKING:`` are not (they never run).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from steerd.yamlsrc import gc_paused

PKG = Path(__file__).resolve().parents[2] / "steerd"
README = PKG.parent / "README.md"

#: Lowest first. A module may import from its own layer or any layer below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("shared", ("abi", "yamlsrc", "units", "schema", "events", "mos")),
    ("pure core", ("config", "ipsec", "health", "silence", "sla", "schedule", "selection",
                   "rules", "controller", "status")),
    ("kernel adapters", ("dataplane", "probe", "xfrm", "sdnotify")),
    ("daemon", ("staging", "stager", "control", "metrics", "hooks", "drain", "daemon")),
    ("front end", ("cli",)),
    ("tools", ("lab", "testing")),
]
PURE = ("shared", "pure core")
#: What "reaching the kernel" means for the pure core: eBPF, netlink, sockets,
#: running ip/tc.
KERNEL_MODULES = {"bcc", "pyroute2", "socket", "fcntl", "select", "subprocess"}
#: Circles that exist and are being removed elsewhere: each entry must still be a
#: circle (the test fails when it is gone, so the entry goes too).
KNOWN_CIRCLES: dict[tuple[str, ...], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import that runs."""
    # CPython 3.11.2's AST constructor counts its recursion depth and raises
    # SystemError ("AST constructor recursion depth mismatch") when a garbage
    # collection inside it runs a finalizer (an unclosed socket's ResourceWarning
    # from an earlier test): no collection while parsing (gh-106905, fixed in 3.11.5)
    with gc_paused():
        tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return out


def graph() -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """steerd module -> {steerd module it imports: line}, and -> {outside top-level: line}."""
    files = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}
    inner: dict[str, dict[str, int]] = {}
    outer: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        inner[mod], outer[mod] = {}, {}
        for name, line in _imports(path):
            if name == "steerd" or name.startswith("steerd."):
                # `from steerd.rules import F_SRC` names a module and an attribute
                target = name if name in files else name.rpartition(".")[0]
                if target in files and target not in (mod, "steerd"):
                    inner[mod].setdefault(target, line)
            else:
                outer[mod].setdefault(name.split(".")[0], line)
    return inner, outer


def layer_of(mod: str) -> int | None:
    first = mod.split(".")[1] if "." in mod else ""
    for i, (_, members) in enumerate(LAYERS):
        if first in members:
            return i
    return None


def test_every_module_is_on_a_layer():
    inner, _ = graph()
    missing = [m for m in inner if m != "steerd" and layer_of(m) is None]
    assert not missing, (f"{missing}: put each on a layer in LAYERS (tests/unit/test_layers.py) "
                         "and in README.md's architecture picture")


def test_imports_only_go_down():
    inner, _ = graph()
    upward = [f"{m} (layer {LAYERS[layer_of(m)][0]}) imports {t} (layer {LAYERS[layer_of(t)][0]}), "
              f"steerd/{m.removeprefix('steerd.').replace('.', '/')} line {line}"
              for m, deps in inner.items() if m != "steerd"
              for t, line in deps.items() if layer_of(t) > layer_of(m)]
    assert upward == []


def circles(inner: dict[str, dict[str, int]]) -> set[tuple[str, ...]]:
    """Module circles, as sorted tuples of the short names in each strongly
    connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in inner.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w.removeprefix("steerd."))
                if w == v:
                    break
            if len(comp) > 1:
                found.add(tuple(sorted(comp)))

    for v in inner:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    inner, _ = graph()
    found = circles(inner)
    assert found - set(KNOWN_CIRCLES) == set(), "import circles"
    stale = set(KNOWN_CIRCLES) - found
    assert not stale, f"{stale} are no longer circles: drop them from KNOWN_CIRCLES"


def test_the_pure_core_does_not_reach_the_kernel():
    _, outer = graph()
    pure = {i for i, (name, _) in enumerate(LAYERS) if name in PURE}
    bad = [f"{m} imports {x} (line {line})" for m, deps in outer.items()
           if m != "steerd" and layer_of(m) in pure
           for x, line in deps.items() if x in KERNEL_MODULES]
    assert bad == []


def readme_layers() -> list[tuple[str, str]]:
    """(layer, its text) from the picture in README.md's Architecture section, top down."""
    text = README.read_text()
    block = text[text.index("## Architecture"):].split("```")[1]
    labels = [name for name, _ in LAYERS]
    out: list[tuple[str, str]] = []
    for line in block.splitlines():
        if not line.lstrip().startswith("│"):
            continue
        body = line.strip().strip("│").strip()
        label = next((n for n in labels if body.startswith(n + " ")), None)
        if label:
            out.append((label, body[len(label):]))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + " " + body)
    return out


def test_the_readme_picture_shows_every_module_on_its_layer():
    drawn = readme_layers()
    assert [name for name, _ in drawn] == [name for name, _ in reversed(LAYERS)], \
        "README.md's picture: one row per layer, highest first"
    text = dict(drawn)
    inner, _ = graph()
    missing = []
    for mod in inner:
        parts = mod.split(".")[1:]
        if not parts or parts[-1] == "__main__":
            continue
        where = text[LAYERS[layer_of(mod)][0]]
        is_pkg = (PKG.joinpath(*parts) / "__init__.py").exists()
        words = [parts[0] + "/"] if is_pkg or len(parts) > 1 else [parts[0]]
        words += parts[1:]
        if not all(re.search(rf"(?<![\w/]){re.escape(w)}(?![\w])", where) for w in words):
            missing.append(mod)
    assert missing == [], f"README.md's architecture picture does not show {missing} on their layers"


def test_the_checks_see_violations():
    """The graph and the checks on made-up input: an upward import, a circle."""
    assert circles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == {("a", "b", "c")}
    inner, outer = graph()
    assert "steerd.dataplane" in inner["steerd.daemon"]          # the daemon drives the kernel seam
    assert "bcc" in outer["steerd.dataplane.program"]
    assert layer_of("steerd.cli") > layer_of("steerd.daemon") > layer_of("steerd.dataplane.tc") \
        > layer_of("steerd.rules.model") > layer_of("steerd.abi")
