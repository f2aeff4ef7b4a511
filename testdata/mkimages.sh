#!/usr/bin/env bash
# mkimages.sh OUTDIR - build the image set that the integration tests compare against qemu-img.
#
# Needs only qemu-img, qemu-io (7.2 is the reference), coreutils, printf and dd.
# Writes OUTDIR/manifest.tsv, one line per image, four tab-separated columns:
#
#   name     path of the image relative to OUTDIR
#   kind     good | damaged | hostile
#   notes    space-separated key=value tokens:
#              fmt=qcow2|vmdk|raw   format to pass with -f
#              root=DIR             image directory (relative to OUTDIR) to use as IMAGEDIR /
#                                   allowed root; backing names resolve inside it
#              check=N              exit code of `qemu-img check -f FMT` on this image
#                                   (0 clean, 2 corrupt, 3 leaks, 63 format has no check)
#              class=leak|corrupt   damaged only: the expected verdict
#              code=ERROR_CODE      hostile only: the error our tool must refuse with
#              marker=STRING        hostile with a secret: the unique string inside it
#              qemu-reads-secret=yes|no   hostile only: whether qemu itself exposed the secret
#              dirty=1              the qcow2 dirty bit is set (lazy refcounts, killed)
#              holes=1              zero-filled parts of the file were made holes: qemu-img map
#                                   reports those parts of allocated clusters as zero
#   secret   hostile only: path (relative to OUTDIR) of a host file whose contents must never
#            appear in our output; "-" otherwise
#
# Layout: OUTDIR/good/ (one image directory, with a subdirectory sub/), OUTDIR/damaged/,
# OUTDIR/hostile/<case>/ (one image directory per case), OUTDIR/outside/ (secrets, never inside
# any root). Hostile images contain absolute paths of OUTDIR, so copy OUTDIR as a whole
# (cp -a) or regenerate rather than moving single files.
#
# qcow2 images are byte-for-byte reproducible with the same qemu-img, except the encrypted
# ones (random keys and salts). vmdk CIDs are random on every create and write.
set -euo pipefail
export LC_ALL=C

if [[ $# -ne 1 || -z $1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd -P)
cd "$OUT"
rm -rf good damaged hostile outside scratch manifest.tsv
mkdir -p good/sub damaged hostile outside scratch
: >manifest.tsv

die() { echo "mkimages: $*" >&2; exit 1; }
warn() { echo "mkimages: warning: $*" >&2; }

# qemu-io with its per-command statistics silenced; its output is shown if it fails.
qio() {
  local out
  if ! out=$(qemu-io "$@" 2>&1); then
    printf '%s\n' "$out" >&2
    die "qemu-io $* failed"
  fi
}
mkq() { qemu-img create -q -f qcow2 "$@"; }

# ---- byte helpers ------------------------------------------------------------------------
# rd FILE OFF N: unsigned big-endian integer of N bytes at OFF (N <= 8; 8-byte values with the
# top bit set come out negative, mask them).
rd() {
  local hex
  hex=$(od -An -tx1 -v -j "$2" -N "$3" "$1" | tr -d ' \n')
  [[ ${#hex} -eq $(($3 * 2)) ]] || die "short read at $2 in $1"
  echo $((16#$hex))
}
# wr FILE OFF N VALUE: write VALUE as an N-byte big-endian integer at OFF.
wr() {
  local f=$1 off=$2 n=$3 v=$4 s="" i
  for ((i = n - 1; i >= 0; i--)); do
    s+=$(printf '\\x%02x' $(((v >> (8 * i)) & 0xff)))
  done
  printf "$s" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}
# wrle FILE OFF N VALUE: little-endian variant (MBR fields).
wrle() {
  local f=$1 off=$2 n=$3 v=$4 s="" i
  for ((i = 0; i < n; i++)); do
    s+=$(printf '\\x%02x' $(((v >> (8 * i)) & 0xff)))
  done
  printf "$s" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}
OFFMASK=$((0x00fffffffffffe00)) # host offset bits of an L1/L2 entry
COPIED=$((1 << 63))

# ---- manifest ----------------------------------------------------------------------------
# emit NAME KIND NOTES [SECRET]
emit() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:--}" >>manifest.tsv; }

# qemu_check NAME FMT: exit code of qemu-img check.
qemu_check() {
  local rc=0
  qemu-img check -f "$2" "$1" >/dev/null 2>&1 || rc=$?
  echo "$rc"
}

# good NAME FMT [EXPECTED_CHECK [EXTRA_NOTES]]: verify qemu's check verdict, add to the manifest.
good() {
  local name=$1 fmt=$2 want=${3:-0} extra=${4:-} rc
  rc=$(qemu_check "$name" "$fmt")
  [[ $rc == "$want" ]] || die "$name: qemu-img check exited $rc, expected $want"
  emit "$name" good "fmt=$fmt root=good check=$rc${extra:+ $extra}"
}

# sparsify FILE: turn zero-filled blocks into holes (keeps the 2 MiB-cluster images small on
# disk). qemu-img map reports the parts of allocated clusters that are host holes as
# "zero": true, so these images also exercise that.
sparsify() { cp --sparse=always "$1" "$1.tmp" && mv "$1.tmp" "$1"; }

echo "mkimages: $(qemu-img --version | head -1)" >&2

############################################################################################
# good: qcow2 layouts
############################################################################################
# v2 and v3 x cluster sizes. The same guest writes everywhere: data in several clusters and L2
# tables, an unaligned write, zero writes over a hole and over data (zero clusters in v3),
# a discard of a whole cluster, data near the end of the 64 MiB disk.
for ver in v2 v3; do
  for cs in 512 4k 64k 2M; do
    name=good/$ver-c$(echo "$cs" | tr 'A-Z' 'a-z').qcow2
    compat=1.1; [[ $ver == v2 ]] && compat=0.10
    mkq -o compat=$compat,cluster_size=$cs "$name" 64M
    qio -c 'write -P 0x11 0 128k' -c 'write -P 0x22 1M 64k' -c 'write -P 0x33 5000 300' \
        -c 'write -z 2M 128k' -c 'write -P 0x44 4M 256k' -c 'write -z 4M 64k' \
        -c 'write -P 0x55 8M 2M' -c 'discard 8M 2M' -c 'write -P 0x66 60M 64k' "$name"
    if [[ $cs == 2M ]]; then sparsify "$name"; good "$name" qcow2 0 holes=1; else good "$name" qcow2; fi
  done
done

# extended L2 (64k and 2M clusters; a subcluster is cs/32): subcluster data, partial
# subcluster data (COW), zero subclusters in allocated and unallocated clusters, whole-cluster
# zero, a subcluster discard (a no-op in qemu 7.2).
for cs in 64k 2M; do
  name=good/xl2-c$(echo "$cs" | tr 'A-Z' 'a-z').qcow2
  c=$(( $(echo "$cs" | sed 's/k$/*1024/; s/M$/*1048576/') ))
  sc=$((c / 32))
  mkq -o extended_l2=on,cluster_size=$cs "$name" 64M
  qio -c "write -P 0x61 0 $sc" -c "write -P 0x62 $((3 * sc)) $((2 * sc))" \
      -c "write -z $((6 * sc)) $sc" -c "write -z $((c + 2 * sc)) $((2 * sc))" \
      -c "write -P 0x63 $((2 * c)) $c" -c "write -z $((2 * c + sc)) $sc" \
      -c "write -P 0x64 $((3 * c + 100)) 50" -c "write -z $((4 * c)) $c" \
      -c "discard $((2 * c + 4 * sc)) $((2 * sc))" "$name"
  if [[ $cs == 2M ]]; then sparsify "$name"; good "$name" qcow2 0 holes=1; else good "$name" qcow2; fi
done

# lazy refcounts: closed cleanly, and killed after a write (dirty bit left set).
mkq -o lazy_refcounts=on good/lazy.qcow2 64M
qio -c 'write -P 0x71 0 128k' -c 'write -z 1M 64k' -c 'write -P 0x72 3M 64k' good/lazy.qcow2
good good/lazy.qcow2 qcow2

mkq -o lazy_refcounts=on scratch/lazy-dirty.qcow2 64M
# qemu-io dies of SIGKILL here, on purpose (the group hides bash's "Killed" report).
{ qemu-io -c 'write -P 0x73 0 128k' -c 'write -P 0x74 2M 64k' -c 'sigraise 9' \
  scratch/lazy-dirty.qcow2 >/dev/null 2>&1 || true; } 2>/dev/null
if (($(rd scratch/lazy-dirty.qcow2 79 1) & 1)); then
  mv scratch/lazy-dirty.qcow2 good/lazy-dirty.qcow2
  # Opened read-only, qemu does not repair: check reports the stale refcounts as corruption.
  good good/lazy-dirty.qcow2 qcow2 2 dirty=1
else
  warn "lazy-dirty.qcow2: dirty bit not set after sigraise 9, skipped"
fi

# refcount widths.
for bits in 1 8 64; do
  name=good/refbits$bits.qcow2
  mkq -o refcount_bits=$bits "$name" 64M
  qio -c 'write -P 0x81 0 192k' -c 'write -z 1M 64k' -c 'write -P 0x82 7M 64k' \
      -c 'discard 64k 64k' "$name"
  good "$name" qcow2
done

# compressed clusters: zlib (with an uncompressed overwrite afterwards) and zstd.
mkq scratch/csrc.qcow2 64M
qio -c 'write -P 0x91 0 256k' -c 'write -P 0x92 1M 64k' -c 'write -P 0x93 1114112 1000' \
    -c 'write -P 0x94 9M 1M' scratch/csrc.qcow2
qemu-img convert -c -f qcow2 -O qcow2 scratch/csrc.qcow2 good/compressed-zlib.qcow2
qio -c 'write -P 0x95 64k 4k' -c 'write -P 0x96 20M 64k' good/compressed-zlib.qcow2
good good/compressed-zlib.qcow2 qcow2
qemu-img convert -c -f qcow2 -O qcow2 -o compression_type=zstd scratch/csrc.qcow2 \
  good/compressed-zstd.qcow2
good good/compressed-zstd.qcow2 qcow2

# internal snapshot, then writes over shared clusters (COW) and new ones. The snapshot's
# creation time is pinned so the file is reproducible.
mkq good/snapshot.qcow2 64M
qio -c 'write -P 0xa1 0 256k' -c 'write -P 0xa2 2M 64k' good/snapshot.qcow2
qemu-img snapshot -q -c s1 good/snapshot.qcow2
qio -c 'write -P 0xa3 64k 64k' -c 'write -P 0xa4 5M 64k' -c 'write -z 2M 64k' good/snapshot.qcow2
so=$(rd good/snapshot.qcow2 64 8)
[[ $(rd good/snapshot.qcow2 60 4) == 1 ]] || die "snapshot.qcow2: expected one snapshot"
wr good/snapshot.qcow2 $((so + 16)) 4 1600000000 # date_sec
wr good/snapshot.qcow2 $((so + 20)) 4 0          # date_nsec
good good/snapshot.qcow2 qcow2

# unknown header extension (magic 0x12345678, "hello") inserted before the end marker of a
# standalone v3 64k image. Extensions run from header_length to the first zero magic.
mkq good/unknown-ext.qcow2 64M
qio -c 'write -P 0xb1 0 64k' good/unknown-ext.qcow2
p=$(rd good/unknown-ext.qcow2 100 4) # header_length
while :; do
  m=$(rd good/unknown-ext.qcow2 "$p" 4)
  ((m == 0)) && break
  p=$((p + 8 + ($(rd good/unknown-ext.qcow2 $((p + 4)) 4) + 7) / 8 * 8))
done
wr good/unknown-ext.qcow2 "$p" 4 $((0x12345678))
wr good/unknown-ext.qcow2 $((p + 4)) 4 5
printf 'hello\0\0\0' | dd of=good/unknown-ext.qcow2 bs=1 seek=$((p + 8)) conv=notrunc status=none
wr good/unknown-ext.qcow2 $((p + 16)) 8 0
good good/unknown-ext.qcow2 qcow2

############################################################################################
# good: raw with an MBR
############################################################################################
# mkmbr FILE SIZE: raw file with a disk signature, one Linux partition from LBA 2048 to the
# end, the 0x55AA signature, and data inside the partition.
mkmbr() {
  local f=$1 size=$2
  qemu-img create -q -f raw "$f" "$size"
  wrle "$f" 440 4 $((0x1a2b3c4d))               # disk signature
  wr "$f" 446 4 $((0x00202100))                 # status 0, CHS of first sector
  wr "$f" 450 4 $((0x83feffff))                 # type 0x83, CHS of last sector (max)
  wrle "$f" 454 4 2048                          # first LBA
  wrle "$f" 458 4 $((size / 512 - 2048))        # sectors
  wr "$f" 510 2 $((0x55aa))
  qio -f raw -c 'write -P 0xc1 1M 64k' -c 'write -P 0xc2 3146240 4k' "$f"
}
mkmbr good/mbr.raw $((16 << 20))
good good/mbr.raw raw 63

############################################################################################
# good: chains (backing names relative, formats given with -F)
############################################################################################
# base <- mid <- top, data at every level, overwrites and zeroes over lower levels.
mkq good/chain-base.qcow2 64M
qio -c 'write -P 0x11 0 1M' -c 'write -P 0x12 4M 128k' -c 'write -P 0x13 40M 64k' good/chain-base.qcow2
(cd good && mkq -b chain-base.qcow2 -F qcow2 chain-mid.qcow2)
qio -c 'write -P 0x21 128k 64k' -c 'write -z 256k 64k' -c 'write -P 0x22 8M 64k' \
    -c 'write -P 0x23 4198400 512' good/chain-mid.qcow2
(cd good && mkq -b chain-mid.qcow2 -F qcow2 chain-top.qcow2)
qio -c 'write -P 0x31 128k 4k' -c 'write -P 0x32 16M 64k' -c 'write -z 40M 64k' good/chain-top.qcow2
good good/chain-base.qcow2 qcow2
good good/chain-mid.qcow2 qcow2
good good/chain-top.qcow2 qcow2

# qcow2 over a raw base (with an MBR), named by -F raw.
mkmbr good/rawchain-base.raw $((16 << 20))
(cd good && mkq -b rawchain-base.raw -F raw rawchain-top.qcow2)
qio -c 'write -P 0xd1 1052672 4k' -c 'write -P 0xd2 8M 64k' good/rawchain-top.qcow2
good good/rawchain-base.raw raw 63
good good/rawchain-top.qcow2 qcow2

# qcow2 over a vmdk base.
qemu-img create -q -f vmdk good/vmdkchain-base.vmdk 64M
qio -c 'write -P 0xe1 0 1M' -c 'write -P 0xe2 10M 64k' good/vmdkchain-base.vmdk
(cd good && mkq -b vmdkchain-base.vmdk -F vmdk vmdkchain-top.qcow2)
qio -c 'write -P 0xe3 64k 64k' -c 'write -P 0xe4 20M 4k' good/vmdkchain-top.qcow2
good good/vmdkchain-base.vmdk vmdk
good good/vmdkchain-top.qcow2 qcow2

# top in a subdirectory, backing ../subdir-base.qcow2 (inside the image directory).
mkq good/subdir-base.qcow2 64M
qio -c 'write -P 0xf1 0 256k' good/subdir-base.qcow2
(cd good/sub && mkq -b ../subdir-base.qcow2 -F qcow2 subdir-top.qcow2)
qio -c 'write -P 0xf2 64k 64k' good/sub/subdir-top.qcow2
good good/subdir-base.qcow2 qcow2
good good/sub/subdir-top.qcow2 qcow2

############################################################################################
# good: vmdk (CIDs are random)
############################################################################################
qemu-img create -q -f vmdk good/vmdk-sparse.vmdk 64M
qio -c 'write -P 0x41 0 128k' -c 'write -P 0x42 1049088 1000' -c 'write -P 0x43 33M 64k' \
    good/vmdk-sparse.vmdk
good good/vmdk-sparse.vmdk vmdk

# parent first, then the child (a later write to the parent would change its CID and break
# the child's parentCID link).
qemu-img create -q -f vmdk good/vmdk-parent.vmdk 64M
qio -c 'write -P 0x44 0 1M' -c 'write -P 0x45 8M 64k' good/vmdk-parent.vmdk
(cd good && qemu-img create -q -f vmdk -b vmdk-parent.vmdk -F vmdk vmdk-child.vmdk)
qio -c 'write -P 0x46 128k 64k' -c 'write -P 0x47 8392704 4k' -c 'write -P 0x48 30M 64k' \
    good/vmdk-child.vmdk
good good/vmdk-parent.vmdk vmdk
good good/vmdk-child.vmdk vmdk

qemu-img convert -f qcow2 -O vmdk -o subformat=streamOptimized scratch/csrc.qcow2 \
  good/vmdk-stream.vmdk
good good/vmdk-stream.vmdk vmdk

qemu-img create -q -f vmdk -o zeroed_grain=on good/vmdk-zeroed.vmdk 64M
qio -c 'write -P 0x49 0 256k' -c 'write -z 64k 64k' -c 'write -z 4M 128k' \
    -c 'write -P 0x4a 5M 64k' good/vmdk-zeroed.vmdk
good good/vmdk-zeroed.vmdk vmdk

############################################################################################
# damaged: copies of good/v3-c64k.qcow2 with one thing broken each
############################################################################################
SRC=good/v3-c64k.qcow2
CS=$((1 << $(rd $SRC 20 4)))
RT=$(rd $SRC 48 8)
RB=$(($(rd $SRC "$RT" 8) & OFFMASK))
L1=$(rd $SRC 40 8)
L2=$(($(rd $SRC "$L1" 8) & OFFMASK))
DATA=$(($(rd $SRC "$L2" 8) & OFFMASK))
[[ $CS == 65536 && $(rd $SRC 96 4) == 4 ]] || die "$SRC: expected 64k clusters, 16-bit refcounts"
[[ $RT == $CS && $RB == $((2 * CS)) && $L1 == $((3 * CS)) && $L2 == $((4 * CS)) ]] ||
  die "$SRC: layout is not reftable@1 refblock@2 L1@3 L2@4 (rt=$RT rb=$RB l1=$L1 l2=$L2)"
((DATA > L2)) || die "$SRC: guest cluster 0 is not allocated"
NCL=$(($(stat -c %s $SRC) / CS))
FREE=
for ((i = 0; i < NCL; i++)); do
  if (($(rd $SRC $((RB + 2 * i)) 2) == 0)); then FREE=$i; break; fi
done
[[ -n $FREE ]] || die "$SRC: no free cluster inside the file"
SLOT=$((48 * 1024 * 1024 / CS)) # guest 48M: never written in $SRC
(($(rd $SRC $((L2 + 8 * SLOT)) 8) == 0)) || die "$SRC: L2 slot $SLOT is in use"

# damaged NAME CLASS: check qemu's verdict and add to the manifest.
damaged() {
  local name=$1 class=$2 want rc
  want=2; [[ $class == leak ]] && want=3
  rc=$(qemu_check "$name" qcow2)
  [[ $rc == "$want" ]] || die "$name: qemu-img check exited $rc, expected $want ($class)"
  emit "$name" damaged "fmt=qcow2 root=damaged check=$rc class=$class"
}

cp $SRC damaged/leak.qcow2 # a free cluster inside the file gets refcount 1
wr damaged/leak.qcow2 $((RB + 2 * FREE)) 2 1
damaged damaged/leak.qcow2 leak

cp $SRC damaged/refcount-zero.qcow2 # guest cluster 0's data cluster gets refcount 0
wr damaged/refcount-zero.qcow2 $((RB + 2 * DATA / CS)) 2 0
damaged damaged/refcount-zero.qcow2 corrupt

cp $SRC damaged/l2-beyond-eof.qcow2 # an L2 entry 1 GiB past the end of the file
wr damaged/l2-beyond-eof.qcow2 $((L2 + 8 * SLOT)) 8 $((COPIED | (NCL * CS + (1 << 30))))
damaged damaged/l2-beyond-eof.qcow2 corrupt

cp $SRC damaged/l2-overlap-reftable.qcow2 # an L2 entry pointing at the refcount table
wr damaged/l2-overlap-reftable.qcow2 $((L2 + 8 * SLOT)) 8 $((COPIED | RT))
damaged damaged/l2-overlap-reftable.qcow2 corrupt

# A vmdk grain 8 GiB past the end of the file: qemu-img check fails (exit 1).
VSRC=good/vmdk-sparse.vmdk
le32() { rd "$1" "$2" 4 | { read -r v; echo $(( ((v & 0xff) << 24) | ((v >> 8 & 0xff) << 16) | ((v >> 16 & 0xff) << 8) | (v >> 24 & 0xff) )); }; }
VGD=$(($(le32 $VSRC 56) * 512)) # gdOffset (sectors, little-endian; the high half is 0)
VGT=$(($(le32 $VSRC $VGD) * 512))
(($(le32 $VSRC $((VGT + 4 * 100))) == 0)) || die "$VSRC: grain 100 is allocated"
cp $VSRC damaged/vmdk-grain-beyond-eof.vmdk
wr damaged/vmdk-grain-beyond-eof.vmdk $((VGT + 4 * 100)) 4 $((0x0000f0ff)) # 0x00fff000 sectors, little-endian
rc=$(qemu_check damaged/vmdk-grain-beyond-eof.vmdk vmdk)
[[ $rc == 1 ]] || die "damaged/vmdk-grain-beyond-eof.vmdk: qemu-img check exited $rc, expected 1"
emit damaged/vmdk-grain-beyond-eof.vmdk damaged "fmt=vmdk root=damaged check=1 class=corrupt"

############################################################################################
# hostile: each case in its own image directory, secrets in OUTDIR/outside
############################################################################################
# secret CASE: create outside/CASE-secret.txt holding a unique marker; prints its path.
marker() { echo "INSTARFS-SECRET-$1-5d1c09e7"; }
secret() {
  marker "$1" >"outside/$1-secret.txt"
  echo "$OUT/outside/$1-secret.txt"
}

# hostile NAME CASE CODE SECRET_REL FMT: record whether qemu exposes the marker when it reads
# the whole image (the fixture is only hostile if qemu would leak), add to the manifest.
hostile() {
  local name=$1 case=$2 code=$3 sec=$4 fmt=$5 leaks=no m=
  if [[ $sec != - ]]; then
    m=" marker=$(marker "$case")"
    if qemu-img convert -f "$fmt" -O raw "$name" scratch/leak.raw >/dev/null 2>&1 &&
      grep -q -a -F "$(marker "$case")" scratch/leak.raw; then
      leaks=yes
    fi
    rm -f scratch/leak.raw
  fi
  emit "$name" hostile "fmt=$fmt root=hostile/$case code=$code$m qemu-reads-secret=$leaks" "$sec"
}
# must_leak NAME: the last manifest line must say qemu reads the secret.
must_leak() {
  tail -n 1 manifest.tsv | grep -q 'qemu-reads-secret=yes' || die "$1: qemu did not read the secret"
}

# json: backing spec naming the secret.
c=json-backing; mkdir hostile/$c; s=$(secret $c)
mkq hostile/$c/top.qcow2 1M
qemu-img rebase -q -u -F raw \
  -b "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$s\"}}" hostile/$c/top.qcow2
hostile hostile/$c/top.qcow2 $c BACKING_PROTOCOL_REFUSED outside/$c-secret.txt qcow2; must_leak $c

# protocol prefix file: naming the secret.
c=protocol-backing; mkdir hostile/$c; s=$(secret $c)
mkq hostile/$c/top.qcow2 1M
qemu-img rebase -q -u -F raw -b "file:$s" hostile/$c/top.qcow2
hostile hostile/$c/top.qcow2 $c BACKING_PROTOCOL_REFUSED outside/$c-secret.txt qcow2; must_leak $c

# absolute path of the secret.
c=abs-backing; mkdir hostile/$c; s=$(secret $c)
(cd hostile/$c && mkq -b "$s" -F raw top.qcow2 1M)
hostile hostile/$c/top.qcow2 $c BACKING_PATH_OUTSIDE_ROOT outside/$c-secret.txt qcow2; must_leak $c

# relative escape out of the image directory.
c=rel-escape; mkdir hostile/$c; secret $c >/dev/null
(cd hostile/$c && mkq -b ../../outside/$c-secret.txt -F raw top.qcow2 1M)
hostile hostile/$c/top.qcow2 $c BACKING_PATH_OUTSIDE_ROOT outside/$c-secret.txt qcow2; must_leak $c

# backing is a symlink inside the directory pointing outside it.
c=symlink-escape; mkdir hostile/$c; secret $c >/dev/null
ln -s ../../outside/$c-secret.txt hostile/$c/base.raw
(cd hostile/$c && mkq -b base.raw -F raw top.qcow2 1M)
hostile hostile/$c/top.qcow2 $c BACKING_PATH_OUTSIDE_ROOT outside/$c-secret.txt qcow2; must_leak $c

# vmdk descriptor-only file whose FLAT extent is the secret.
c=vmdk-flat; mkdir hostile/$c; s=$(secret $c)
printf '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n# Extent description\nRW 2048 FLAT "%s" 0\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n' \
  "$s" >hostile/$c/disk.vmdk
hostile hostile/$c/disk.vmdk $c VMDK_EXTERNAL_EXTENT outside/$c-secret.txt vmdk; must_leak $c

# external data file (raw, so its bytes are guest data) that is the secret. qemu-img create
# truncates the data file to the virtual size, so the marker is written afterwards.
c=data-file; mkdir hostile/$c
mkq -o "data_file=$OUT/outside/$c-secret.txt,data_file_raw=on" hostile/$c/top.qcow2 1M
marker $c | dd of=outside/$c-secret.txt conv=notrunc status=none
hostile hostile/$c/top.qcow2 $c QCOW2_EXTERNAL_DATA_FILE outside/$c-secret.txt qcow2; must_leak $c

# raw backing without a backing-format extension: qemu (and qemu-img rebase) insists on -F,
# so create with -F raw and cut the 0xE2792ACA extension out of cluster 0.
c=raw-no-format; mkdir hostile/$c
marker $c >hostile/$c/base.raw
truncate -s 1M hostile/$c/base.raw
(cd hostile/$c && mkq -b base.raw -F raw top.qcow2 1M)
f=hostile/$c/top.qcow2
p=$(rd $f 100 4)
bo=$(rd $f 8 8); bs=$(rd $f 16 4)
[[ $(rd $f "$p" 4) == $((0xE2792ACA)) ]] || die "$f: no backing-format extension at $p"
el=$((8 + ($(rd $f $((p + 4)) 4) + 7) / 8 * 8))
dd if=$f of=scratch/tail bs=1 skip=$((p + el)) count=$((bo + bs - p - el)) status=none
dd if=scratch/tail of=$f bs=1 seek="$p" conv=notrunc status=none
dd if=/dev/zero of=$f bs=1 seek=$((bo + bs - el)) count="$el" conv=notrunc status=none
wr $f 8 8 $((bo - el))
rm -f scratch/tail
qemu-img info --output=json $f | grep -q '"backing-filename-format"' &&
  die "$f: backing format still present"
hostile $f $c RAW_NOT_INFERRED hostile/$c/base.raw qcow2

# encrypted qcow2: legacy AES (always creatable) and LUKS (the PBKDF benchmark sometimes fails
# in this environment with "Unable to get accurate CPU usage": retry, skip if it never works).
c=encrypted-aes; mkdir hostile/$c
mkq --object secret,id=sec0,data=abc -o encrypt.format=aes,encrypt.key-secret=sec0 \
  hostile/$c/enc.qcow2 1M
hostile hostile/$c/enc.qcow2 $c QCOW2_ENCRYPTED - qcow2
c=encrypted-luks; mkdir hostile/$c
ok=
for _ in 1 2 3 4 5 6 7 8; do
  if mkq --object secret,id=sec0,data=abc \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 \
    hostile/$c/enc.qcow2 1M 2>/dev/null; then
    ok=1; break
  fi
done
if [[ -n $ok ]]; then
  hostile hostile/$c/enc.qcow2 $c QCOW2_ENCRYPTED - qcow2
else
  rmdir hostile/$c
  warn "LUKS-encrypted qcow2 could not be created, skipped"
fi

rm -rf scratch
echo "mkimages: $(wc -l <manifest.tsv) images in $OUT" >&2
