"""The C/Python contract: steerd/abi.py against the #defines and structs in ebpf/.

The C is read as text (comments stripped, #defines and struct bodies parsed), so
the check does not depend on where in a file a number sits, and needs neither
root nor bcc.
"""
from __future__ import annotations

import ctypes as ct
import re
from pathlib import Path

import pytest

from steerd import abi

EBPF = Path(__file__).resolve().parents[2] / "ebpf"
_C_TYPES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8}
_INT = re.compile(r"(0[xX][0-9a-fA-F]+|\d+)[uUlL]*")


def _strip_comments(text: str) -> str:
    """Comments out, newlines kept (line numbers stay right)."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def c_sources() -> dict[str, str]:
    return {p.name: _strip_comments(p.read_text()) for p in sorted(EBPF.glob("*.[ch]"))}


def c_defines() -> dict[str, list[tuple[int, str]]]:
    """Integer #defines: name -> [(value, "file:line"), ...] (a name may be defined
    in several files, or as an #ifndef default)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for fname, text in c_sources().items():
        for lineno, line in enumerate(text.splitlines(), 1):
            m = re.match(r"\s*#\s*define\s+([A-Za-z_]\w*)\s+(\S.*?)\s*$", line)
            if m and _INT.fullmatch(m.group(2)):
                value = int(_INT.fullmatch(m.group(2)).group(1), 0)
                out.setdefault(m.group(1), []).append((value, f"ebpf/{fname}:{lineno}"))
    return out


def c_structs() -> dict[str, list[tuple[str, int]]]:
    """struct name -> [(field, size in bytes)] for structs of fixed-size integers."""
    out = {}
    for text in c_sources().values():
        for m in re.finditer(r"\bstruct\s+(\w+)\s*\{([^{}]*)\}\s*;", text):
            fields = []
            for decl in filter(None, (d.strip() for d in m.group(2).split(";"))):
                f = re.fullmatch(r"(\w+)\s+(\w+)\s*(?:\[\s*(\d+)\s*\])?", decl)
                if f is None or f.group(1) not in _C_TYPES:
                    break   # not a plain integer struct (nested, macro-sized): not mirrored
                fields.append((f.group(2), _C_TYPES[f.group(1)] * int(f.group(3) or 1)))
            else:
                out[m.group(1)] = fields
    return out


def abi_numbers() -> dict[str, int]:
    return {k: v for k, v in vars(abi).items()
            if k.isupper() and isinstance(v, int) and not isinstance(v, bool)}


def contract_errors() -> list[str]:
    """Every disagreement between steerd/abi.py and ebpf/, as readable lines."""
    errors = []
    defines = c_defines()
    for name, value in abi_numbers().items():
        if name not in defines:
            errors.append(f"steerd/abi.py {name} = {value:#x}: no #define {name} in ebpf/")
        for c_value, where in defines.get(name, []):
            if c_value != value:
                errors.append(f"steerd/abi.py {name} = {value:#x} but {where} "
                              f"#define {name} {c_value:#x}")
    numbers = abi_numbers()
    for prefix in abi.COMPLETE_PREFIXES:
        for name in sorted(n for n in defines if n.startswith(prefix) and n not in numbers):
            value, where = defines[name][0]
            errors.append(f"{where} #define {name} {value:#x} has no mirror in steerd/abi.py")
    structs = c_structs()
    for cname, py in abi.STRUCTS.items():
        mine = [(n, ct.sizeof(t)) for n, t in py._fields_]
        if cname not in structs:
            errors.append(f"steerd/abi.py {py.__name__}: no struct {cname} in ebpf/")
        elif structs[cname] != mine:
            errors.append(f"steerd/abi.py {py.__name__} {mine} but struct {cname} "
                          f"{structs[cname]} (field, bytes)")
    return errors


def test_python_and_c_agree():
    assert contract_errors() == []


@pytest.mark.parametrize("name", ["RV_DROP", "RL_F_DSCP", "NO_TUNNEL", "FH_MUL", "MAX_RULES"])
def test_a_number_changed_on_one_side_is_named(monkeypatch, name):
    value = getattr(abi, name)
    monkeypatch.setattr(abi, name, value + 1)
    errors = contract_errors()
    assert errors and all(f"steerd/abi.py {name} = {value + 1:#x} but ebpf/" in e for e in errors), errors


def test_a_c_only_constant_is_named(monkeypatch):
    monkeypatch.delattr(abi, "RV_SPREAD")
    assert any("#define RV_SPREAD 0x2 has no mirror in steerd/abi.py" in e for e in contract_errors())


def test_struct_layout_mismatch_is_named(monkeypatch):
    class Short(ct.Structure):
        _fields_ = [("gen", ct.c_uint32), ("nrules", ct.c_uint16)]
    monkeypatch.setitem(abi.STRUCTS, "rl_cfg", Short)
    assert any("Short" in e and "struct rl_cfg" in e for e in contract_errors())


def test_parser_sees_what_the_contract_relies_on():
    """The parse itself: a file the contract cannot read would pass vacuously."""
    defines, structs = c_defines(), c_structs()
    assert {"NO_TUNNEL", "RL_NONE", "RV_DROP", "RL_F_INGRESS", "FH_SEED", "MAX_TUNNELS"} <= set(defines)
    assert set(abi.STRUCTS) <= set(structs)
    assert structs["steer_cfg"] == [("nslots", 4), ("mark_mask", 4), ("flow_idle_ns", 8)]


def test_a_valid_config_fits_the_classifiers_tunnel_maps():
    """config.MAX_TUNNELS bounds what a config may declare (tunnel indexes, marks,
    tables); the classifier's tunnel maps hold abi.MAX_TUNNELS entries."""
    from steerd import config
    assert config.MAX_TUNNELS <= abi.MAX_TUNNELS
