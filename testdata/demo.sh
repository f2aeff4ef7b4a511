#!/usr/bin/env bash
# demo.sh BINARY — runs instarfs on a copy of the demo chain in testdata/demo:
# overlay.qcow2 -> base.qcow2, and new-base.qcow2 to rebase onto.
set -euo pipefail
bin=$(realpath "$1")
here=$(dirname "$(realpath "$0")")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here"/demo/*.qcow2 "$work"/
cd "$work"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step "$bin" sandbox-check
step "$bin" info --backing-chain overlay.qcow2
step "$bin" map --output=json overlay.qcow2
step "$bin" check overlay.qcow2
printf '\ndemo finished\n'
