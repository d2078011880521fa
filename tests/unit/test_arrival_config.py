"""reply_on_arrival_tunnel (issue 15): global and per site, default false; a bad
value is refused at its line; the layout says which sites' tunnels record arrivals."""
from __future__ import annotations

import pytest
import yaml

from steerd.config import parse_config
from steerd.dataplane import Layout
from steerd.lab.topology import HubLab, Lab
from steerd.yamlsrc import ValidationError


def single(**top) -> str:
    return yaml.safe_dump(Lab("u").config(**top), sort_keys=False)


def hub(top=None, per_site=None) -> str:
    cfg = HubLab("h", sites=3).config()
    if top is not None:
        cfg["reply_on_arrival_tunnel"] = top
    for i, v in (per_site or {}).items():
        cfg["sites"][i]["reply_on_arrival_tunnel"] = v
    return yaml.safe_dump(cfg, sort_keys=False)


def test_default_off_global_on_and_per_site_override():
    assert [s.reply_on_arrival_tunnel for s in parse_config(single(), "c").sites] == [False]
    cfg = parse_config(single(reply_on_arrival_tunnel=True), "c")
    assert cfg.reply_on_arrival_tunnel and [s.reply_on_arrival_tunnel for s in cfg.sites] == [True]
    cfg = parse_config(hub(True, {1: False}), "c")
    assert [s.reply_on_arrival_tunnel for s in cfg.sites] == [True, False, True]
    cfg = parse_config(hub(None, {2: True}), "c")
    assert [s.reply_on_arrival_tunnel for s in cfg.sites] == [False, False, True]
    lay = Layout.from_config(cfg)
    assert [s.reply_on_arrival for s in lay.sites] == [False, False, True]


@pytest.mark.parametrize("text,key", [
    (single(reply_on_arrival_tunnel="yes"), "reply_on_arrival_tunnel"),
    (hub(None, {1: 1}), "sites[1].reply_on_arrival_tunnel"),
])
def test_a_bad_value_is_refused_at_its_line(text, key):
    with pytest.raises(ValidationError) as exc:
        parse_config(text, "steerd.yaml")
    (p,) = exc.value.problems
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "reply_on_arrival_tunnel" in t)
    assert (p.file, p.line, p.key, p.expected) == ("steerd.yaml", line, key, "true or false")


def test_a_layout_recorded_before_the_option_loads(tmp_path):
    """A layout file written by an older steerd (no reply_on_arrival) still loads."""
    from steerd.dataplane import load_layout, save_layout
    path = str(tmp_path / "layout.json")
    save_layout(Layout.from_config(parse_config(single(reply_on_arrival_tunnel=True), "c")), path)
    text = open(path, encoding="utf-8").read().replace(', "reply_on_arrival": true', "")
    open(path, "w", encoding="utf-8").write(text)
    assert [s.reply_on_arrival for s in load_layout(path).sites] == [False]
