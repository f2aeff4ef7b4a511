#!/usr/bin/env bash
# mkoracles.sh DEST — builds a second test oracle, qemu-img from Debian 13
# (trixie), into DEST without touching the system's packages.
#
# The system's apt configuration is never changed: a private one (its own
# source list, package lists and cache, all under DEST) fetches debootstrap
# from trixie, debootstrap builds a minimal trixie root in DEST/root, and
# qemu-utils is installed inside that root. DEST/bin/qemu-img and
# DEST/bin/qemu-io run the root's binaries through the root's own dynamic
# loader and libraries, on host paths.
#
# The mirror is the one the system's own apt sources use.
set -euo pipefail

dest=${1:?usage: mkoracles.sh DEST}
suite=trixie
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
root=$dest/root

if [ -x "$dest/bin/qemu-img" ] && "$dest/bin/qemu-img" --version >/dev/null 2>&1; then
  exit 0
fi

# The first Debian mirror of the system's sources (deb822 or one-line form).
mirror=$(
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2; exit}' || true
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' || true
  } | grep -v security | head -n1 || true)
if [ -z "$mirror" ]; then
  echo "mkoracles: no Debian mirror found in the system's apt sources" >&2
  exit 1
fi

for tool in dpkg-deb apt-get chroot; do
  command -v "$tool" >/dev/null || { echo "mkoracles: $tool is needed" >&2; exit 1; }
done

apt=$dest/apt
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/dl"
echo "deb [signed-by=$keyring] $mirror $suite main" >"$apt/sources.list"
private=(-o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
  -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache"
  -o Dir::State::Status=/dev/null -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
apt-get -qq "${private[@]}" update
(cd "$apt/dl" && apt-get -qq "${private[@]}" download debootstrap)
rm -rf "$apt/debootstrap"
dpkg-deb -x "$apt"/dl/debootstrap_*.deb "$apt/debootstrap"

if [ ! -x "$root/usr/bin/apt-get" ]; then
  rm -rf "$root"
  DEBOOTSTRAP_DIR="$apt/debootstrap/usr/share/debootstrap" \
    "$apt/debootstrap/usr/sbin/debootstrap" --variant=minbase --keyring="$keyring" \
    "$suite" "$root" "$mirror" >"$dest/debootstrap.log" 2>&1 ||
    { tail -n 20 "$dest/debootstrap.log" >&2; exit 1; }
fi
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -qq update
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends qemu-utils >/dev/null

mkdir -p "$dest/bin"
for tool in qemu-img qemu-io; do
  cat >"$dest/bin/$tool" <<WRAP
#!/bin/sh
# $tool from Debian $suite, run through its own root's loader and libraries.
exec "$root/usr/lib64/ld-linux-x86-64.so.2" --library-path "$root/usr/lib/x86_64-linux-gnu" "$root/usr/bin/$tool" "\$@"
WRAP
  chmod 755 "$dest/bin/$tool"
done
"$dest/bin/qemu-img" --version | head -n1
