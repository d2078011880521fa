#!/bin/sh
# Runs INSIDE the VM (scripts/vm-run.sh boots it): load the modules the lab needs,
# run `pytest tests/vm` against the real 6.1 kernel, print the time, exit with
# pytest's exit code. The repository is the host's, read-only; nothing is written
# back (bytecode and pytest's cache are off).
set -u
python=${VM_PYTHON:-.venv/bin/python}
echo "guest: kernel $(uname -r), $(nproc) vCPUs, up $(cut -d' ' -f1 /proc/uptime) s at start of the test command"
for m in xfrm_interface xfrm_user esp4 sch_netem cls_bpf sch_ingress veth; do
    modprobe "$m" || echo "guest: modprobe $m failed"
done
# bcc compiles against the guest kernel's headers
[ -e "/lib/modules/$(uname -r)/build" ] || echo "guest: no /lib/modules/$(uname -r)/build: bcc will fail"
# the site receiver asks for an 8 MiB socket buffer (clamped to rmem_max)
sysctl -qw net.core.rmem_max=16777216 net.core.wmem_max=16777216 net.core.netdev_max_backlog=10000
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
export PYTHONDONTWRITEBYTECODE=1 STEERD_VM=1 PYTHONUNBUFFERED=1
start=$(cut -d' ' -f1 /proc/uptime)
"$python" -m pytest -p no:cacheprovider -rA --durations=0 --timeout=600 -v tests/vm "$@"
rc=$?
end=$(cut -d' ' -f1 /proc/uptime)
if [ -n "${VM_LOG_DIR:-}" ] && [ -d /run/steerd-vm-logs ]; then
    cp -r /run/steerd-vm-logs/. "$VM_LOG_DIR/" 2>/dev/null || true
fi
awk -v a="$start" -v b="$end" 'BEGIN { printf "guest: pytest session %.1f s\n", b - a }'
exit $rc
