#!/bin/sh
# Provision one VM of the Vagrant lab (runs as root inside it):
#   provision.sh pop|site
# Installs strongSwan (charon-systemd + swanctl), then lets tests/vm/vmlab.py make
# this machine one side of the lab, exactly as the CI lab builds each namespace:
# XFRM interfaces (if_id per tunnel) over the WAN NICs, netem, the swanctl config
# (the pop's rendered by steerd's `ipsec:` renderer). The pop also gets steerd's
# dependencies (Debian's bcc, kernel headers), a venv with steerd, and steerd as a
# systemd unit (steerd-lab).
set -eu
role=${1:?usage: provision.sh pop|site}
repo=/vagrant
venv=/opt/steerd-venv
export DEBIAN_FRONTEND=noninteractive

pkgs="strongswan-swanctl charon-systemd iproute2 python3 python3-yaml iputils-ping"
if [ "$role" = pop ]; then
    pkgs="$pkgs python3-bpfcc bpfcc-tools python3-venv linux-headers-$(uname -r) nftables"
fi
apt-get update -q >/dev/null
# shellcheck disable=SC2086  # the package list is split on purpose
apt-get install -y -q --no-install-recommends $pkgs >/dev/null
# the kernel modules the lab uses (built as modules in Debian's kernel)
for m in xfrm_interface xfrm_user esp4 sch_netem cls_bpf sch_ingress veth; do
    modprobe "$m"
done
printf '%s\n' xfrm_interface esp4 sch_netem > /etc/modules-load.d/steerd-lab.conf

python=/usr/bin/python3
if [ "$role" = pop ]; then
    if [ ! -x "$venv/bin/python" ]; then
        /usr/bin/python3 -m venv --system-site-packages "$venv"
        "$venv/bin/pip" install -q --upgrade pip
    fi
    "$venv/bin/pip" install -q -e "$repo"
    python=$venv/bin/python
    ln -sfn "$venv/bin/steerctl" /usr/local/bin/steerctl
fi
systemctl enable --now strongswan.service >/dev/null 2>&1 || true
"$python" "$repo/tests/vm/vmlab.py" side "$role"
echo "steerd lab: $role ready"
