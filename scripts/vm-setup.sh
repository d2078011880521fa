#!/bin/sh
# Install what the real-kernel lab (tests/vm, `make test-vm`) needs on a Debian 12
# machine; idempotent, quiet when everything is already there.
#
#   - a Debian 6.1 kernel with modules (XFRM interfaces, ESP, netem) for the guest:
#     linux-image-<version>-amd64 of the installed linux-headers-<version>-amd64
#     (bcc inside the guest compiles against those headers), *unpacked* (not
#     installed: no initramfs or boot-loader hooks on the host), then depmod;
#     /lib/modules/<version>/build and source point at the headers;
#   - qemu-system-x86 (software emulation; nested KVM hangs on these machines),
#     busybox-static (virtme-ng builds the guest's initramfs with it), udev (without
#     it the guest command's output and exit code are lost), strongSwan's charon and
#     swanctl, iproute2, kmod;
#   - virtme-ng from PyPI in its own venv (VM_VENV, default /opt/steerd-vm).
#
# Environment: VM_VENV, VM_KVER (kernel version, default: newest installed
# linux-headers-*-amd64, else the one linux-headers-amd64 brings).
set -eu

VM_VENV=${VM_VENV:-/opt/steerd-vm}
VNG_VERSION=${VNG_VERSION:-1.42}
APT_PKGS="qemu-system-x86 busybox-static udev strongswan-charon strongswan-swanctl iproute2 kmod"

say() { echo "vm-setup: $*"; }

[ "$(id -u)" -eq 0 ] || { say "must run as root"; exit 1; }
[ "$(dpkg --print-architecture)" = amd64 ] || { say "only amd64 is supported"; exit 1; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

apt_updated=""
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        apt-get update -q >/dev/null
        apt_updated=1
    fi
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# 1. Debian packages
missing=""
for p in $APT_PKGS; do installed "$p" || missing="$missing $p"; done
if [ -n "$missing" ]; then
    say "installing:$missing"
    # shellcheck disable=SC2086
    apt_install $missing
fi

# 2. The guest kernel: the version of the installed amd64 headers
headers_version() {
    # newest /usr/src/linux-headers-<version>-amd64 that has a Makefile
    for d in /usr/src/linux-headers-*-amd64; do
        [ -f "$d/Makefile" ] && basename "$d" | sed 's/^linux-headers-//'
    done | sort -V | tail -n 1
}
KVER=${VM_KVER:-$(headers_version)}
if [ -z "$KVER" ]; then
    say "installing linux-headers-amd64 (bcc in the guest compiles against them)"
    apt_install linux-headers-amd64
    KVER=$(headers_version)
fi
[ -n "$KVER" ] || { say "no linux-headers-*-amd64 found"; exit 1; }
installed "linux-headers-$KVER" || apt_install "linux-headers-$KVER"

if [ ! -s "/boot/vmlinuz-$KVER" ] || [ ! -f "/lib/modules/$KVER/kernel/net/xfrm/xfrm_interface.ko" ] \
        || [ ! -s "/lib/modules/$KVER/modules.dep" ]; then
    say "unpacking linux-image-$KVER (kernel and modules for the guest)"
    [ -n "$apt_updated" ] || { apt-get update -q >/dev/null; apt_updated=1; }
    work=$(mktemp -d /tmp/vm-setup.XXXXXX)
    trap 'rm -rf "$work"' EXIT INT TERM
    (cd "$work" && apt-get download -q "linux-image-$KVER" >/dev/null)
    mkdir "$work/x"
    dpkg-deb -x "$work"/linux-image-*.deb "$work/x"
    # Copy into place rather than extracting over / (on merged-/usr systems
    # /lib is a symlink that a plain tar extraction could replace).
    mkdir -p "/lib/modules/$KVER"
    cp -a "$work/x/lib/modules/$KVER/." "/lib/modules/$KVER/"
    cp -a "$work/x/boot/." /boot/
    rm -rf "$work"
    trap - EXIT INT TERM
    depmod "$KVER"
fi
[ -e "/lib/modules/$KVER/build" ] || ln -sfn "/usr/src/linux-headers-$KVER" "/lib/modules/$KVER/build"
if [ ! -e "/lib/modules/$KVER/source" ]; then
    common=$(for d in /usr/src/linux-headers-*-common; do [ -d "$d" ] && echo "$d"; done | sort -V | tail -n 1)
    [ -z "$common" ] || ln -sfn "$common" "/lib/modules/$KVER/source"
fi

# 3. virtme-ng in its own venv (kept apart from the project venv: `make clean` keeps it)
if ! "$VM_VENV/bin/vng" --version 2>/dev/null | grep -qx "virtme-ng $VNG_VERSION"; then
    say "installing virtme-ng $VNG_VERSION into $VM_VENV"
    [ -x "$VM_VENV/bin/pip" ] || /usr/bin/python3 -m venv "$VM_VENV"
    "$VM_VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION"
fi

# 4. virtiofs for the guest's root: far faster than 9p under emulation (Python
#    imports: pyroute2 8 s instead of 19 s, bcc 4 s instead of 17 s). virtme-ng
#    speaks the Rust virtiofsd's options; Debian 12 has QEMU's C virtiofsd, so an
#    adapter in the venv (first on vng's PATH) translates. Without it vng uses 9p.
adapter() {
    cat <<'ADAPTER'
#!/bin/sh
# Written by steerd's scripts/vm-setup.sh. virtme-ng passes the Rust virtiofsd's
# options; Debian 12 ships QEMU's C virtiofsd: translate. The guest mounts its root
# read-only; virtiofsd exits when qemu goes.
real=/usr/lib/qemu/virtiofsd
case "${1:-}" in
    --version|-V) exec "$real" --version ;;
    --help|-h) echo "virtiofsd adapter for virtme-ng (QEMU's C virtiofsd)"; exit 0 ;;
esac
sock="" dir="" cache=auto
while [ $# -gt 0 ]; do
    case $1 in
        --socket-path) sock=$2; shift ;;
        --shared-dir) dir=$2; shift ;;
        --cache) cache=$2; shift ;;
    esac
    shift
done
if [ -z "$sock" ] || [ -z "$dir" ]; then
    echo "virtiofsd adapter: need --socket-path and --shared-dir" >&2
    exit 2
fi
rm -f "$sock"
echo $$ > "$sock.pid"
exec "$real" --socket-path="$sock" -o source="$dir" -o cache="$cache" -o sandbox=chroot -o log_level=err
ADAPTER
}
if [ -x /usr/lib/qemu/virtiofsd ] && ! adapter | cmp -s - "$VM_VENV/bin/virtiofsd"; then
    adapter > "$VM_VENV/bin/virtiofsd"
    chmod 755 "$VM_VENV/bin/virtiofsd"
    say "installed a virtiofsd adapter in $VM_VENV/bin (guest root over virtiofs)"
fi

say "ready: guest kernel $KVER, $("$VM_VENV/bin/vng" --version), $(qemu-system-x86_64 --version | head -n 1)"
