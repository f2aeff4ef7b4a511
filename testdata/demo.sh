#!/usr/bin/env bash
# demo.sh BINARY — runs instarfs on a copy of the demo chain in testdata/demo:
# overlay.qcow2 -> base.qcow2, and new-base.qcow2 to rebase onto. It mounts the
# copy, rebases and commits through the control files, and unmounts.
set -euo pipefail
bin=$(realpath "$1")
here=$(dirname "$(realpath "$0")")
work=$(mktemp -d)
mnt="$work/mnt"
pid=""
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if grep -qs " $mnt " /proc/self/mounts; then
    umount -l "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/images" "$mnt"
cp "$here"/demo/*.qcow2 "$work/images/"
cd "$work"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
# shell runs a command line through bash, as a user would type it.
shell() { printf '\n\033[1m$ %s\033[0m\n' "$1"; bash -c "$1"; }

step "$bin" info --backing-chain images/overlay.qcow2
step "$bin" check images/overlay.qcow2

if [[ ! -e /dev/fuse ]]; then
  printf '\n/dev/fuse is missing: skipping the mount part of the demo\n'
  exit 0
fi
printf '\n\033[1m$ %s\033[0m\n' "$bin mount images mnt &"
"$bin" --log-level=info mount images mnt &
pid=$!
for _ in $(seq 100); do
  grep -qs " $mnt " /proc/self/mounts && break
  kill -0 "$pid" 2>/dev/null || { echo "instarfs mount failed" >&2; exit 1; }
  sleep 0.1
done
grep -qs " $mnt " /proc/self/mounts || { echo "not mounted after 10 s" >&2; exit 1; }

shell "ls mnt mnt/overlay.qcow2"
shell "cat mnt/overlay.qcow2/info.json"
shell "readlink mnt/overlay.qcow2/backing"
shell "echo new-base.qcow2 > mnt/overlay.qcow2/rebase"
shell "cat mnt/overlay.qcow2/result.json mnt/overlay.qcow2/status"
shell "readlink mnt/overlay.qcow2/backing"
shell "echo > mnt/overlay.qcow2/commit"
shell "cat mnt/overlay.qcow2/result.json mnt/overlay.qcow2/status"
shell "echo nope.qcow2 > mnt/overlay.qcow2/rebase || cat mnt/overlay.qcow2/status"

printf '\n\033[1m$ %s\033[0m\n' "kill -TERM $pid  # unmounts and exits 0"
kill -TERM "$pid"
wait "$pid"
pid=""
step "$bin" check images/overlay.qcow2
step "$bin" check images/new-base.qcow2
printf '\ndemo finished\n'
