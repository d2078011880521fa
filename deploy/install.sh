#!/bin/sh
# Install or upgrade steerd from this source tree (Debian/Ubuntu gateway).
#
#   sudo deploy/install.sh [--deps] [--no-restart] [--pip-args "ARGS"]
#   deploy/install.sh --root /tmp/img          stage into a directory, touch nothing else
#
# What goes where (paths as seen on the target system):
#   /opt/steerd/releases/<version>-<time>/  a venv (--system-site-packages, so Debian's
#                                           python3-bpfcc is importable) with steerd's
#                                           wheel installed; the wheel carries the
#                                           classifier's C sources (steerd/ebpf), so the
#                                           Python code and the C of one release stay
#                                           together, switched by one rename
#   /opt/steerd/current                     symlink to the active release
#   /usr/local/bin/steerd, steerctl         symlinks into /opt/steerd/current/bin
#   /usr/local/lib/steerd/steerd-stop-post  the unit's ExecStopPost helper
#   /usr/local/lib/systemd/system/steerd.service
#                                           the unit (local changes: `systemctl edit steerd`,
#                                           which writes to /etc and survives upgrades)
#   /etc/steerd/steerd.yaml, rules.yaml     examples, only when absent (never overwritten)
#   /usr/share/steerd/                      README, examples, Prometheus alerts, Grafana
#                                           dashboard
#   group `steerd`                          members may run read-only steerctl commands
#
# Upgrades lose nothing: the new release is built next to the running one, checked
# (it must import, and the installed config must pass its `steerctl config check`),
# then `current` is switched with an atomic rename and a running steerd is
# restarted with `systemctl try-restart`. A restart keeps the data path (see
# steerd.service): traffic flows on the last programming while the new daemon
# compiles its classifier, and the new daemon adopts the pinned maps without moving
# a flow. The previous release is kept for a rollback:
#   ln -sfn releases/<previous> /opt/steerd/current && systemctl restart steerd
#
# Options:
#   --root DIR        install under DIR instead of / (also: DESTDIR=DIR). Nothing
#                     outside DIR is touched: no group, no systemctl, no apt. Console
#                     scripts in the venv are rewritten to their final /opt/steerd paths.
#   --deps            apt-get install what steerd needs at run time (python3-bpfcc,
#                     python3-venv, iproute2, kernel headers) via scripts/install-deps.sh
#   --no-restart      do not restart a running steerd (it keeps the old release until
#                     the next restart)
#   --pip-args ARGS   extra pip arguments, word-split, e.g. an offline install:
#                     --pip-args "--no-index --find-links /media/wheels"
set -eu

PYTHON=/usr/bin/python3   # Debian's python: the one python3-bpfcc installs bcc for
OPT=/opt/steerd
SHARE=/usr/share/steerd
LIBEXEC=/usr/local/lib/steerd
UNIT_DIR=/usr/local/lib/systemd/system
ETC=/etc/steerd

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

# in_use DIR: does a running process execute from release DIR? A release's console
# scripts name its own interpreter (#!/opt/steerd/releases/<r>/bin/python3), so the
# daemon's command line names its release even when started through `current`.
in_use() {
    for cmdline in /proc/[0-9]*/cmdline; do
        if tr '\0' '\n' < "$cmdline" 2>/dev/null | grep -qF "$1/"; then
            return 0
        fi
    done
    return 1
}

src=$(cd "$(dirname "$0")/.." && pwd)
root=${DESTDIR:-/}
deps=no
restart=yes
pip_args=""
while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --deps) deps=yes; shift ;;
        --no-restart) restart=no; shift ;;
        --pip-args) [ $# -ge 2 ] || die "--pip-args needs a value"; pip_args=$2; shift 2 ;;
        --pip-args=*) pip_args=${1#--pip-args=}; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
case $root in /*) ;; *) die "--root must be an absolute path, got $root" ;; esac
# R prefixes every path we write: "" for the live system, "/tmp/img" when staging.
R=${root%/}
live=no
[ -z "$R" ] && live=yes

if [ ! -f "$src/pyproject.toml" ] || [ ! -f "$src/ebpf/steer.c" ]; then
    die "run me from a steerd source tree ($src)"
fi
[ -x "$PYTHON" ] || die "$PYTHON not found (apt-get install python3 python3-venv)"
if [ $live = yes ] && [ "$(id -u)" -ne 0 ]; then
    die "installing on the live system needs root (or use --root DIR to stage)"
fi

if [ $deps = yes ]; then
    [ $live = yes ] || die "--deps installs system packages; not with --root"
    "$src/scripts/install-deps.sh" python3-bpfcc python3-venv iproute2
fi
# steerd cannot run without bcc, but staging or building an image can.
if ! "$PYTHON" -c 'import bcc' 2>/dev/null; then
    say "warning: $PYTHON cannot import bcc; install Debian's python3-bpfcc (or rerun with --deps)"
fi

version=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$src/pyproject.toml")
release="$version-$(date -u +%Y%m%d%H%M%S)"
[ -e "$R$OPT/releases/$release" ] && release="$release-$$"
rel="$OPT/releases/$release"          # final path
stage=$(mktemp -d "${TMPDIR:-/tmp}/steerd-install.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# --- 1. the release: a venv with steerd's wheel ----------------------------------
# The wheel is built from a copy: building in the tree itself would leave build/ and
# *.egg-info in a checkout that may be in use.
mkdir -p "$stage/src" "$stage/dist"
tar -C "$src" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml setup.py README.md \
    steerd ebpf | tar -C "$stage/src" -xf -
say "building release $release in $R$rel"
mkdir -p "$R$OPT/releases"
"$PYTHON" -m venv --system-site-packages "$R$rel"
# shellcheck disable=SC2086 # pip_args is a list of words on purpose
"$R$rel/bin/pip" wheel --quiet --disable-pip-version-check --no-deps $pip_args \
    --wheel-dir "$stage/dist" "$stage/src" || die "building the wheel failed; nothing switched"
set -- "$stage/dist"/steerd-*.whl
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
    die "expected one steerd wheel in $stage/dist, found: $*"
fi
# shellcheck disable=SC2086
"$R$rel/bin/pip" install --quiet --disable-pip-version-check --no-warn-script-location \
    $pip_args "$1"
if [ -n "$R" ]; then
    # venvs hard-code their own path in script shebangs and activate scripts:
    # point them at where the release will live, not where it was staged.
    grep -rlF "$R$OPT" "$R$rel/bin" "$R$rel/pyvenv.cfg" | while read -r f; do
        sed -i "s|$R$OPT|$OPT|g" "$f"
    done
fi
# Never switch to a release that cannot even import (the interpreter finds its
# site-packages from its own location, so this works when staged too).
# The C sources must have come with the wheel: steerd compiles them at start.
"$R$rel/bin/python" -c 'import steerd.daemon, steerd.cli
from steerd.dataplane.sources import ebpf_dir
assert (ebpf_dir() / "steer.c").is_file(), ebpf_dir()' \
    || die "the new release does not import or lacks its C sources; left in $R$rel, nothing switched"
if [ ! -x "$R$rel/bin/steerd" ] || [ ! -x "$R$rel/bin/steerctl" ]; then
    die "console scripts missing in $R$rel/bin"
fi

# --- 2. configuration, docs, helpers (before the switch: the unit needs them) -------
install -d -m 0755 "$R$SHARE/examples" "$R$SHARE/prometheus" "$R$SHARE/grafana" \
    "$R$LIBEXEC" "$R$UNIT_DIR" "$R/usr/local/bin"
# An existing /etc/steerd keeps its owner and mode (an operator may have made it 0700).
[ -d "$R$ETC" ] || install -d -m 0755 "$R$ETC"
install -m 0644 "$src/README.md" "$R$SHARE/README.md"
install -m 0644 "$src/deploy/steerd.example.yaml" "$R$SHARE/examples/steerd.yaml"
install -m 0644 "$src/deploy/rules.example.yaml" "$R$SHARE/examples/rules.yaml"
install -m 0644 "$src/deploy/prometheus/alerts.yml" "$R$SHARE/prometheus/alerts.yml"
install -m 0644 "$src/deploy/grafana/steerd.json" "$R$SHARE/grafana/steerd.json"
for f in steerd.yaml rules.yaml; do
    if [ -e "$R$ETC/$f" ]; then
        say "keeping existing $ETC/$f"
    else
        install -m 0644 "$R$SHARE/examples/$f" "$R$ETC/$f"
        say "installed example $ETC/$f: adapt it to this site before starting steerd"
    fi
done
install -m 0755 "$src/deploy/steerd-stop-post" "$R$LIBEXEC/steerd-stop-post"
install -m 0644 "$src/deploy/steerd.service" "$R$UNIT_DIR/steerd.service"

# Check the config the daemon will load with the code it will run. A bad config
# does not stop the install (the files are in place) but does stop the restart.
# Only on the live system: a staged root's config may name files of the target
# (rules_file: /etc/steerd/rules.yaml) that we would read from this host instead.
config_ok=yes
if [ $live = yes ] && ! "$rel/bin/steerctl" config check "$ETC/steerd.yaml" >/dev/null; then
    config_ok=no
    say "warning: $ETC/steerd.yaml does not pass \`steerctl config check\` with the new release"
fi

# --- 3. switch: one atomic rename of the `current` symlink --------------------------
previous=$(readlink "$R$OPT/current" 2>/dev/null || true)
ln -sfn "releases/$release" "$R$OPT/current.new"
mv -Tf "$R$OPT/current.new" "$R$OPT/current"
for b in steerd steerctl; do
    ln -sfn "$OPT/current/bin/$b" "$R/usr/local/bin/$b.new"
    mv -Tf "$R/usr/local/bin/$b.new" "$R/usr/local/bin/$b"
done
say "switched $OPT/current -> releases/$release${previous:+ (was $previous)}"

# Keep the new release, the previous one (rollback) and any a process still runs
# (after --no-restart, or a refused restart, the daemon runs an older release until
# it is restarted); drop the others.
for d in "$R$OPT/releases"/*; do
    [ -d "$d" ] || continue
    name=releases/${d##*/}
    if [ "$name" = "releases/$release" ] || [ "$name" = "$previous" ]; then
        continue
    fi
    if in_use "$d"; then
        say "keeping $OPT/$name: still in use by a running process"
        continue
    fi
    rm -rf "$d"
done
# Releases installed before the wheel carried the C sources found them through
# /usr/share/steerd/ebpf -> current/share/ebpf: keep that link while one of them can
# still be rolled back to.
if [ -L "$R$SHARE/ebpf" ] && ! ls -d "$R$OPT"/releases/*/share/ebpf >/dev/null 2>&1; then
    rm -f "$R$SHARE/ebpf"
fi

# --- 4. the live system: group, systemd --------------------------------------------
if [ $live = no ]; then
    say "staged into $R (no group, no systemctl: not the live system)"
    exit 0
fi
if ! getent group steerd >/dev/null; then
    groupadd --system steerd
    say "created group steerd (add operators for read-only steerctl: usermod -aG steerd NAME)"
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if systemctl is-active --quiet steerd.service; then
        if [ $restart = no ]; then
            say "steerd keeps running the old release until \`systemctl restart steerd\`"
        elif [ $config_ok = no ]; then
            say "NOT restarting steerd: fix $ETC/steerd.yaml first, then \`systemctl restart steerd\`"
        else
            # try-restart: the stop half keeps the data path (steerd-stop-post).
            systemctl try-restart steerd.service
            say "restarted steerd on release $release (the data path kept forwarding)"
        fi
    else
        say "next: edit $ETC/steerd.yaml, \`steerctl config check $ETC/steerd.yaml\`, \`systemctl enable --now steerd\`"
    fi
else
    say "systemd is not running here; start steerd with: steerd --config $ETC/steerd.yaml"
fi
