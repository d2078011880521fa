#!/bin/sh
# After tests and the demo nothing of steerd may remain: no lab namespace,
# no steerd ip rule or table in the host, no pinned maps, no lab bpffs mount.
set -eu
fail=0
left=$(ip netns list | grep -E '^(sdlab|sdt|hp-|rb-|r4-)' || true)
[ -z "$left" ] || { echo "left-over namespaces: $left"; fail=1; }
if ip rule | grep -q 'lookup 210[1-8]'; then echo "left-over ip rules"; fail=1; fi
if [ -d /sys/fs/bpf/steerd ]; then echo "left-over /sys/fs/bpf/steerd"; fail=1; fi
if grep -q ' /run/steerd-lab' /proc/mounts; then echo "left-over lab bpffs mount"; fail=1; fi
[ $fail -eq 0 ] && echo "clean: no namespace, rule, route or pinned map left behind"
exit $fail
