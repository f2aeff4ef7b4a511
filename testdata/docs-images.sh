#!/usr/bin/env bash
# docs-images.sh INSTARFS OUTDIR — renders the pictures the docs show, from a
# chain generated here with qemu-img: OUTDIR/map-example.svg and .png, the
# map.svg of a three-image chain.
set -euo pipefail
bin=$(realpath "$1")
out=$(mkdir -p "$2" && realpath "$2")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
QI() { qemu-io "$@" >/dev/null; }
qemu-img create -q -f qcow2 base.qcow2 256M
QI -c 'write -P 1 0 64M' -c 'write -P 2 128M 32M' base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
QI -c 'write -P 3 16M 24M' -c 'write -z 100M 20M' mid.qcow2
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
QI -c 'write -P 4 30M 20M' -c 'write -P 5 200M 1M' -c 'write -P 6 140M 512k' top.qcow2
"$bin" map --output=svg top.qcow2 >"$out/map-example.svg"
rsvg-convert -o "$out/map-example.png" "$out/map-example.svg"
echo "wrote $out/map-example.svg and $out/map-example.png"
