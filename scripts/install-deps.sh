#!/bin/sh
# Install the Debian packages steerd's demo and tests need, and point bcc at
# kernel headers: bcc compiles the classifier at run time and looks in
# /lib/modules/$(uname -r)/build. On kernels without a matching headers
# package (custom/cloud kernels), link the distribution's headers instead.
set -eu
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build" ]; then
    if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
        missing="$missing linux-headers-$kver"
    else
        ls -d /usr/src/linux-headers-*-common >/dev/null 2>&1 || missing="$missing linux-headers-amd64"
    fi
fi
if [ -n "$missing" ]; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
if [ ! -e "/lib/modules/$kver/build" ]; then
    arch=$(ls -d /usr/src/linux-headers-*-amd64 /usr/src/linux-headers-*-arm64 2>/dev/null | sort -V | tail -1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$arch" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
    echo "linked /lib/modules/$kver/build -> $arch"
fi
