#!/usr/bin/env bash
# Boot the Debian 6.1 kernel once under qemu (software emulation) with virtme-ng,
# the host filesystem as the guest's read-only root, and run the real-kernel lab
# (`pytest tests/vm`) inside it. Prints the guest's output, the total time, and
# exits with pytest's exit code; "passed" only when pytest passed with nothing
# skipped (in our own guest a skip hides a missing module or tool).
#
#   scripts/vm-run.sh [PYTEST ARGS...]        e.g. scripts/vm-run.sh -k split -x
#
# Environment:
#   VM_TIMEOUT   hard limit for the whole VM session in seconds (default 600)
#   VM_KVER      guest kernel version (default: newest one scripts/vm-setup.sh unpacked)
#   VM_VENV      virtme-ng's venv (default /opt/steerd-vm)
#   VM_PYTHON    the interpreter that runs pytest in the guest (default .venv/bin/python)
#   VM_MEM, VM_CPUS   guest memory and vCPUs (default 3G, 2)
#   VM_LOG_DIR   if set, a host directory the guest copies its lab logs into
#                (charon, steerd); otherwise the guest writes nothing to the host.
#
# Nothing is left behind on the host: the guest sees the host's files read-only
# (writes go to tmpfs overlays inside the guest), and the whole process group
# (vng, qemu) is killed on timeout or interruption.
set -u

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 1
VM_TIMEOUT=${VM_TIMEOUT:-600}
VM_VENV=${VM_VENV:-/opt/steerd-vm}
VM_PYTHON=${VM_PYTHON:-.venv/bin/python}
VM_MEM=${VM_MEM:-3G}
VM_CPUS=${VM_CPUS:-2}

say() { echo "vm-run: $*"; }
die() { say "$*"; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (qemu, and the guest runs as the calling user)"
[ -x "$VM_VENV/bin/vng" ] || die "virtme-ng not found in $VM_VENV: run scripts/vm-setup.sh"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: run scripts/vm-setup.sh"
[ -x "$VM_PYTHON" ] || die "$VM_PYTHON missing: make venv first"

if [ -z "${VM_KVER:-}" ]; then
    VM_KVER=$(for k in /boot/vmlinuz-*-amd64; do
        v=${k#/boot/vmlinuz-}
        if [ -f "/lib/modules/$v/kernel/net/xfrm/xfrm_interface.ko" ] && [ -e "/lib/modules/$v/build" ]; then
            echo "$v"
        fi
    done | sort -V | tail -n 1)
fi
if [ -z "$VM_KVER" ] || [ ! -r "/boot/vmlinuz-$VM_KVER" ]; then
    die "no guest kernel with modules: run scripts/vm-setup.sh"
fi

# The guest command: tests/vm/guest.sh with the pytest arguments, quoted for the
# guest shell; STEERD_* variables of the caller are passed on.
envs="VM_PYTHON=$(printf %q "$VM_PYTHON")"
while IFS= read -r name; do
    envs+=" $name=$(printf %q "${!name}")"
done < <(compgen -e | grep '^STEERD_' || true)
guest_cmd="cd $(printf %q "$here") && env $envs sh tests/vm/guest.sh"
for a in "$@"; do guest_cmd+=" $(printf %q "$a")"; done
extra=()
if [ -n "${VM_LOG_DIR:-}" ]; then
    mkdir -p "$VM_LOG_DIR"
    extra+=(--rwdir "$VM_LOG_DIR")
    guest_cmd="VM_LOG_DIR=$(printf %q "$VM_LOG_DIR") $guest_cmd"
fi

# virtme-ng's temporary files (virtiofsd socket and pid) are removed at its exit,
# but not after a kill, and QEMU's virtiofsd leaves a pid file in /run/virtiofsd:
# note what exists now, remove what is new after.
leftovers() { ls -d /tmp/virtme* /run/virtiofsd/.*virtme* /run/virtiofsd/*virtme* 2>/dev/null || true; }
tmp_before=$(leftovers)
# the guest's output, kept to read pytest's summary line (a skip is not a pass)
out=$(mktemp /tmp/vm-run-out.XXXXXX)
[ -d /run/virtiofsd ] && had_piddir=1 || had_piddir=""

say "booting $VM_KVER under qemu (no KVM, ${VM_CPUS} vCPUs, ${VM_MEM}); limit ${VM_TIMEOUT}s"
start=$EPOCHREALTIME
# setsid: vng, qemu and everything they start share one new process group, which
# `timeout` (not --foreground) signals as a whole; the trap covers Ctrl-C and kill.
# The output goes through a pipe (cat): qemu reopens its stdout by path, and on a
# regular file that second open would write over what the first one wrote.
setsid timeout --kill-after=20 "$VM_TIMEOUT" \
    env PATH="$VM_VENV/bin:$PATH" vng --disable-kvm --run "/boot/vmlinuz-$VM_KVER" \
        --memory "$VM_MEM" --cpus "$VM_CPUS" --cwd "$here" "${extra[@]}" -- "$guest_cmd" \
        </dev/null > >(tee "$out") 2>&1 &
pid=$!
cleanup() {
    # nothing of this session may outlive it: its process group, virtme's files
    kill -KILL -- -"$pid" 2>/dev/null || true
    for f in $(leftovers); do
        printf '%s\n' "$tmp_before" | grep -qxF "$f" || rm -rf "$f"
    done
    [ -n "$had_piddir" ] || rmdir /run/virtiofsd 2>/dev/null || true
    rm -f "$out"
}
trap 'kill -TERM -- -$pid 2>/dev/null; sleep 2; cleanup; say "interrupted"; exit 130' INT TERM
wait $pid
rc=$?
trap - INT TERM
wait  # the output pipe's reader
# pytest's last summary line, e.g. "==== 14 passed, 1 skipped in 210.3s ===="
summary=$(grep -E '^=+ .*[0-9]+ (passed|failed|skipped|errors?|xfailed|xpassed|deselected).* in [0-9.]+s' "$out" | tail -n 1)
cleanup
if [ "$rc" -eq 0 ]; then
    if [ -z "$summary" ]; then
        say "no pytest summary in the guest's output: counting it as a failure"
        rc=1
    elif printf '%s' "$summary" | grep -qE 'skipped|xfailed|xpassed|error'; then
        say "tests were skipped or xfailed inside the VM, where that is a failure: $summary"
        rc=1
    elif ! printf '%s' "$summary" | grep -qE '[0-9]+ passed'; then
        say "no test passed: $summary"
        rc=1
    fi
fi
elapsed=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
case $rc in
    124|137) say "TIMEOUT: the VM session exceeded ${VM_TIMEOUT}s and was killed (rc $rc)"; rc=124 ;;
    0) say "VM lab passed" ;;
    *) say "VM lab FAILED (rc $rc)" ;;
esac
say "total VM session time ${elapsed} s (boot, lab setup and tests)"
exit $rc
