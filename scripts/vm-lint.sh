#!/bin/sh
# Static checks of the VM and Vagrant labs: `vagrant validate` of vagrant/Vagrantfile
# (Debian's vagrant; no provider needed) and shellcheck of their shell scripts.
# Installs vagrant and shellcheck when missing (Debian). Leaves nothing behind:
# vagrant's home and the Vagrantfile's .vagrant directory go to a temporary directory.
set -eu
cd "$(dirname "$0")/.."
missing=""
command -v vagrant >/dev/null || missing="$missing vagrant"
command -v shellcheck >/dev/null || missing="$missing shellcheck"
if [ -n "$missing" ]; then
    echo "vm-lint: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
tmp=$(mktemp -d /tmp/vm-lint.XXXXXX)
trap 'rm -rf "$tmp"' EXIT INT TERM
rc=0
out=$(cd vagrant && VAGRANT_HOME="$tmp/home" VAGRANT_DOTFILE_PATH="$tmp/dot" VAGRANT_CHECKPOINT_DISABLE=1 \
    vagrant validate --ignore-provider 2>&1) || rc=$?
printf '%s\n' "$out" | grep -v "Ignoring provider config" || true
[ "$rc" -eq 0 ] || { echo "vm-lint: vagrant validate failed"; exit 1; }
shellcheck scripts/vm-setup.sh scripts/vm-run.sh scripts/vm-lint.sh vagrant/provision.sh tests/vm/guest.sh
echo "vm-lint: vagrant validate and shellcheck passed"
