"""Prepare a config or a rule set completely before anything runs on it.

Everything that can reject an input happens here, with no effect on the
running daemon: parsing, validation, the settings a reload cannot change and
the rule compiler's capacity check. The daemon runs these functions off its
event loop (in a short-lived child, steerd.stager) and switches only to a
result that is complete; `steerctl config check` and `rules apply --dry-run`
call the same ones, so "valid" means "the daemon can load it".
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from .config import SiteConfig, load_config
from .rules import CompiledRules, Limits, RuleSet, compile_rules, load_rules, parse_rules
from .rules.sites import limit_to_sites
from .yamlsrc import Problem, ValidationError, gc_paused

log = logging.getLogger("steerd.staging")

# Settings the running daemon cannot change in place: the maps are sized and
# placed at start; the socket, its group and the metrics listener are opened at
# start, so a reload that "applied" them would silently keep the old exposure.
RESTART_ONLY = {
    "dataplane.bpffs": lambda c: c.dataplane.bpffs,
    "dataplane.slots": lambda c: c.dataplane.slots,
    "dataplane.flow_table_size": lambda c: c.dataplane.flow_table_size,
    "dataplane.max_sites": lambda c: c.dataplane.max_sites,
    "metrics.listen": lambda c: c.metrics_listen,
    "control_socket": lambda c: c.control_socket,
    "control_group": lambda c: c.control_group,
    "events.file": lambda c: c.events_file,
    "events.keep": lambda c: c.events_keep,
}


@dataclass(frozen=True)
class Staged:
    """A validated config with its compiled rules (None: the config has no rules_file)."""

    cfg: SiteConfig
    ruleset: RuleSet | None
    compiled: CompiledRules | None


def ifindexes(ingress) -> dict[str, int]:
    """Ingress names -> ifindex for rules that match on the ingress interface."""
    out = {}
    for name in ingress:
        try:
            out[name] = socket.if_nametoindex(name)
        except OSError:
            log.warning("ingress %s not found: its ingress rules match nothing for now", name)
    return out


def check_restart_only(old: SiteConfig, new: SiteConfig) -> None:
    """Reject a reload that changes a setting only a restart applies, naming each key."""
    problems = [Problem(new.path, 0, key, get(new),
                        f"{get(old)!r} as running (changing it needs a restart of steerd)")
                for key, get in RESTART_ONLY.items() if get(old) != get(new)]
    if problems:
        raise ValidationError(problems)


def rules_of(cfg: SiteConfig) -> RuleSet | None:
    """The config's rule set. A configured rules_file that is missing is an error:
    silently running without rules would drop every pin."""
    if not cfg.rules_file:
        return None
    if not os.path.exists(cfg.rules_file):
        raise ValidationError([Problem(cfg.path, 0, "rules_file", cfg.rules_file,
                                       "an existing rules file (or no rules_file key)")])
    return load_rules(cfg.rules_file, cfg.wans, set(cfg.ingress), sla_classes=cfg.sla_classes,
                      sites=cfg.site_wans)


def compile_for(ruleset: RuleSet, cfg: SiteConfig, limits: Limits) -> CompiledRules:
    """Compile against the data path's capacities (raises ValidationError when over).
    No cyclic GC meanwhile: its full collections over the new objects hold the
    GIL for 100 ms and more, and the probe loop shares it (gc_paused's reasons).
    Hub mode: rules limited with `site:` get their dst cut to those sites' ranges."""
    with gc_paused():
        compiled = compile_rules(limit_to_sites(ruleset, cfg.site_ranges), ifindexes(cfg.ingress),
                                 limits)
        compiled.layout   # noqa: B018  (the encoded tables: built here, off the loop)
    return compiled


def stage_config(path: str, running: SiteConfig | None, limits: Limits) -> Staged:
    """Load, validate and compile what a reload (or `config check`) would apply."""
    cfg = load_config(path)
    if running is not None:
        check_restart_only(running, cfg)
    ruleset = rules_of(cfg)
    compiled = compile_for(ruleset, cfg, limits) if ruleset is not None else None
    return Staged(cfg, ruleset, compiled)


def parse_rules_for(text: str, path: str, cfg: SiteConfig) -> RuleSet:
    """Parse and validate a rules file sent by `steerctl rules apply` against *cfg*."""
    return parse_rules(text, path, cfg.wans, set(cfg.ingress), sla_classes=cfg.sla_classes,
                       sites=cfg.site_wans)
