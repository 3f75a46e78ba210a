# Disk images with known content, and helpers for the hotplug tests
# (test-plug-*.sh).  Sourced after lib.sh, whose fail/say/lv_* it uses.
#
# Every image is made in the test's own directory from a small directory
# tree kept beside it (img_tree), so that what a plugged filesystem shows
# can be compared, byte for byte, with what was put there:
#   img_ext4       a filesystem on the bare disk (mke2fs -d: no root, no loop)
#   img_mbr        an MBR table, ext4 + vfat, as qcow2
#   img_gpt        a GPT table: ext4, a partition with no filesystem, ext2,
#                  and a locked LUKS partition
#   img_fish_lvm_whole   a whole-disk LVM PV: a VG with two ext4 LVs
#   img_fish_lvm_part    MBR: ext4, and a PV partition: a VG with two LVs
#                  (these two are made in one guestfish boot, img_fish_run:
#                  no device-mapper on the host)
#   img_dirty      ext4 whose journal needs recovery (a crashed guest's disk)
#   img_iso        an ISO 9660 CD-ROM (genisoimage or xorriso)
# Sizes are small and the files sparse.
#
# The second half holds the hotplug helpers: plug/unplug with timing, a
# plugged filesystem compared with its tree, the .status fields, and the
# check that nothing (qemu, connector, appliance domain) outlives a mount.

# ---- trees ---------------------------------------------------------------------

declare -A IMG_UUID=()    # key (image or image:partN) -> filesystem UUID
declare -A IMG_LABEL=()   # key -> filesystem label

# img_tree DIR TAG [nosymlink]: a small tree whose content depends on TAG:
# hello.txt, TAG.id (so listings differ), sub/deep/file.txt, an empty
# file, 40 000 random bytes, and a symlink (not on vfat).
img_tree() {
    local d=$1 tag=$2
    mkdir -p -- "$d/sub/deep"
    printf 'hello from %s\n' "$tag" > "$d/hello.txt"
    printf '%s\n' "$tag" > "$d/$tag.id"
    printf 'deep in %s\n' "$tag" > "$d/sub/deep/file.txt"
    : > "$d/empty"
    head -c 40000 /dev/urandom > "$d/data.bin"
    chmod 0640 "$d/data.bin"
    if [[ ${3:-} != nosymlink ]]; then
        ln -s hello.txt "$d/link"
        ln -s ../../hello.txt "$d/sub/deep/up"
    fi
}

img_new_uuid() { cat /proc/sys/kernel/random/uuid; }

# ---- filesystem images (no partition table) ---------------------------------------

# img_ext4_fs OUT SIZE TREE LABEL [TYPE]: an ext4 (or TYPE: ext2, ext3)
# filesystem image of SIZE holding TREE; sets IMG_UUID[OUT], IMG_LABEL[OUT].
img_ext4_fs() {
    local out=$1 size=$2 tree=$3 label=$4 type=${5:-ext4}
    local uuid
    uuid=$(img_new_uuid)
    rm -f -- "$out"
    mke2fs -q -F -t "$type" -L "$label" -U "$uuid" -d "$tree" -- "$out" "$size" >/dev/null ||
        fail "mke2fs $out"
    IMG_UUID[$out]=$uuid
    IMG_LABEL[$out]=$label
}

# img_vfat_fs OUT SIZE-KIB TREE LABEL: a vfat image holding TREE (mtools).
img_vfat_fs() {
    local out=$1 kib=$2 tree=$3 label=$4
    rm -f -- "$out"
    mkfs.vfat -C -n "$label" -- "$out" "$kib" >/dev/null || fail "mkfs.vfat $out"
    mcopy -s -p -i "$out" "$tree"/* ::/ || fail "mcopy into $out"
    IMG_UUID[$out]=$(blkid -p -o value -s UUID -- "$out")
    IMG_LABEL[$out]=$label
}

# img_place DISK PARTITION-IMAGE START-SECTOR: write a filesystem image into
# the disk at that sector.
img_place() {
    dd if="$2" of="$1" bs=512 seek="$3" conv=notrunc,sparse status=none ||
        fail "dd $2 into $1"
}

# ---- whole disks -------------------------------------------------------------------

# img_ext4 OUT TREE TAG [SIZE]: a raw disk that is one ext4 filesystem.
img_ext4() {
    img_ext4_fs "$1" "${4:-16M}" "$2" "$3"
}

# img_dirty OUT TREE TAG: ext4 on the bare disk with needs_recovery set, as
# a guest that crashed leaves it; a read-only device cannot replay it.
img_dirty() {
    img_ext4_fs "$1" 16M "$2" "$3"
    debugfs -w -R 'feature needs_recovery' "$1" >/dev/null 2>&1 || fail "debugfs $1"
    dumpe2fs -h "$1" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery' ||
        fail "$1 does not need recovery after debugfs"
}

# img_mbr OUT.qcow2 TREE1 TREE2 TAG: 64 MiB, MBR: partition 1 ext4 (30 MiB,
# TREE1), partition 2 FAT (type 0c, the rest, TREE2, which must hold no
# symlinks).  Leaves the raw disk as OUT.raw for block comparisons.
img_mbr() {
    local out=$1 t1=$2 t2=$3 tag=$4 raw=${1%.qcow2}.raw
    rm -f -- "$raw"
    truncate -s 64M -- "$raw"
    sfdisk -q "$raw" >/dev/null <<EOF || fail "sfdisk $raw"
label: dos
start=2048, size=61440, type=83
start=63488, type=c
EOF
    img_ext4_fs "$raw.p1" 30M "$t1" "$tag-ext4"
    img_vfat_fs "$raw.p2" $(( (131072 - 63488) / 2 )) "$t2" "${tag^^}-FAT"
    img_place "$raw" "$raw.p1" 2048
    img_place "$raw" "$raw.p2" 63488
    IMG_UUID[$out:part1]=${IMG_UUID[$raw.p1]}; IMG_LABEL[$out:part1]=${IMG_LABEL[$raw.p1]}
    IMG_UUID[$out:part2]=${IMG_UUID[$raw.p2]}; IMG_LABEL[$out:part2]=${IMG_LABEL[$raw.p2]}
    rm -f -- "$raw.p1" "$raw.p2"
    qemu-img convert -q -f raw -O qcow2 "$raw" "$out" || fail "qemu-img convert $raw"
}

# img_gpt OUT TREE1 TREE3 TAG: 48 MiB raw, GPT: partition 1 ext4 (16 MiB,
# TREE1), 2 nothing (4 MiB of zeros), 3 ext2 (16 MiB, TREE3), 4 LUKS1 (the
# rest, passphrase "secret"), locked.
img_gpt() {
    local out=$1 t1=$2 t3=$3 tag=$4
    rm -f -- "$out"
    truncate -s 48M -- "$out"
    sfdisk -q "$out" >/dev/null <<EOF || fail "sfdisk $out"
label: gpt
start=2048, size=32768, name=one
start=34816, size=8192, name=two
start=43008, size=32768, name=three
start=75776, name=four
EOF
    img_ext4_fs "$out.p1" 16M "$t1" "$tag-one"
    img_ext4_fs "$out.p3" 16M "$t3" "$tag-three" ext2
    img_place "$out" "$out.p1" 2048
    img_place "$out" "$out.p3" 43008
    IMG_UUID[$out:part1]=${IMG_UUID[$out.p1]}; IMG_LABEL[$out:part1]=${IMG_LABEL[$out.p1]}
    IMG_UUID[$out:part3]=${IMG_UUID[$out.p3]}; IMG_LABEL[$out:part3]=${IMG_LABEL[$out.p3]}
    rm -f -- "$out.p1" "$out.p3"
    # The LUKS partition: formatted apart, then placed (cryptsetup on a
    # plain file needs no device-mapper; PBKDF2 with few iterations: fast).
    local last
    last=$(sfdisk -d "$out" | sed -n 's/^.*4 : start= *75776, size= *\([0-9]*\),.*$/\1/p')
    [[ -n $last ]] || fail "no partition 4 in $out"
    truncate -s $(( last * 512 )) -- "$out.p4"
    printf secret | cryptsetup luksFormat -q --type luks1 --pbkdf-force-iterations 1000 \
        --key-file=- "$out.p4" >/dev/null 2>&1 || fail "cryptsetup luksFormat $out.p4"
    IMG_UUID[$out:part4]=$(blkid -p -o value -s UUID -- "$out.p4")
    img_place "$out" "$out.p4" 75776
    rm -f -- "$out.p4"
}

# img_iso OUT TREE LABEL: an ISO 9660 image (Rock Ridge + Joliet) of TREE.
img_iso() {
    local out=$1 tree=$2 label=$3
    if command -v genisoimage >/dev/null; then
        genisoimage -quiet -R -J -V "$label" -o "$out" "$tree" || fail "genisoimage $out"
    elif command -v xorriso >/dev/null; then
        xorriso -as mkisofs -quiet -R -J -V "$label" -o "$out" "$tree" >/dev/null 2>&1 ||
            fail "xorriso $out"
    else
        fail "neither genisoimage nor xorriso is installed (scripts/check installs genisoimage)"
    fi
    IMG_UUID[$out]=$(blkid -p -o value -s UUID -- "$out")
    IMG_LABEL[$out]=$label
}

# ---- guestfish (LVM) ------------------------------------------------------------------

IMG_APPLIANCE=

# A fixed appliance for guestfish, built once per test with virtmount's own
# recipe: no dependency on (or minutes-long build of) the per-user supermin
# cache, and the same kernel the tests' appliances boot.
img_guestfish_appliance() {
    [[ -n $IMG_APPLIANCE ]] && return 0
    local recipe
    for recipe in "$(dirname "$VIRTMOUNT")/../appliance/virtmount-build-appliance" \
                  "$SRCDIR/appliance/virtmount-build-appliance"; do
        [[ -x $recipe ]] && break
    done
    [[ -x $recipe ]] || fail "virtmount-build-appliance not found"
    IMG_APPLIANCE=$VMT_DIR/guestfish-appliance
    "$recipe" "$IMG_APPLIANCE" > "$VMT_DIR/guestfish-appliance.log" 2>&1 ||
        fail "building the guestfish appliance: $(tail -n 3 "$VMT_DIR/guestfish-appliance.log")"
}

# img_guestfish SCRIPT-FILE: run a guestfish script (TCG, our fixed
# appliance); its output goes to $VMT_DIR/guestfish.log.
img_guestfish() {
    command -v guestfish >/dev/null || skip "guestfish is not installed (libguestfs-tools)"
    img_guestfish_appliance
    local t0=$(now_us)
    LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg \
        LIBGUESTFS_PATH=$IMG_APPLIANCE LIBGUESTFS_CACHEDIR=$VMT_DIR \
        guestfish --rw -f "$1" >> "$VMT_DIR/guestfish.log" 2>&1 </dev/null ||
        fail "guestfish $1 failed: $(tail -n 10 "$VMT_DIR/guestfish.log")"
    say "guestfish $(basename "$1"): $(( ($(now_us) - t0) / 1000 )) ms"
}

# Images that need the appliance (LVM: no device-mapper on the host) are
# queued, then all made in one guestfish boot:
#   img_fish_lvm_whole OUT VG TREE-ROOT TREE-HOME TAG
#   img_fish_lvm_part  OUT TREE-PLAIN VG TREE-ROOT TREE-HOME TAG
#   img_fish_run
# Only the LVM metadata is written in the appliance: partition tables and
# filesystems are made on the host (sfdisk, mke2fs -d) and the filesystems
# uploaded onto the LVs, since each partitioning, mkfs or mount costs
# seconds of udev settling and TCG time in there.
IMG_FISH_PRE=()     # before `run`: create and add the disks
IMG_FISH_POST=()    # after it: LVM, uploads
IMG_FISH_NDISKS=0

# The appliance's name for the next disk added: /dev/sda, /dev/sdb, ...
img_fish_next_dev() {
    local letters=abcdefghijklmnopqrstuvwxyz
    echo "/dev/sd${letters:IMG_FISH_NDISKS:1}"
}

# img_fish_lvm OUT DEV VG TREE-ROOT TREE-HOME TAG: the commands that make
# DEV an LVM PV holding VG with two 16 MiB LVs, "root" and "my-home", each
# given an ext4 filesystem (made here) holding TREE-ROOT, TREE-HOME; sets
# IMG_UUID/IMG_LABEL[OUT:lv-VG-LV].
img_fish_lvm() {
    local out=$1 dev=$2 vg=$3 tr=$4 th=$5 tag=$6 lv tree fs
    IMG_FISH_POST+=("pvcreate $dev" "vgcreate $vg $dev")
    for lv in root my-home; do
        [[ $lv == root ]] && tree=$tr || tree=$th
        fs=$out.$vg-$lv.fs
        img_ext4_fs "$fs" 16M "$tree" "$tag-$lv"
        IMG_UUID[$out:$vg/$lv]=${IMG_UUID[$fs]}
        IMG_LABEL[$out:$vg/$lv]=${IMG_LABEL[$fs]}
        IMG_FISH_POST+=("lvcreate $lv $vg 16" "upload $fs /dev/$vg/$lv" "!rm -f $fs")
    done
    IMG_FISH_POST+=("vg-activate false $vg")
}

# img_fish_lvm_whole OUT VG TREE-ROOT TREE-HOME TAG: OUT (raw, 48 MiB) has
# no partition table: the whole disk is the PV.  With VG "vg-data" the
# directories are lv-vg--data-root and lv-vg--data-my--home.
img_fish_lvm_whole() {
    local out=$1 dev
    shift
    dev=$(img_fish_next_dev)
    rm -f -- "$out"
    truncate -s 48M -- "$out"
    IMG_FISH_PRE+=("add $out format:raw")
    IMG_FISH_NDISKS=$((IMG_FISH_NDISKS + 1))
    img_fish_lvm "$out" "$dev" "$@"
}

# img_fish_lvm_part OUT TREE-PLAIN VG TREE-ROOT TREE-HOME TAG: OUT (raw,
# 64 MiB) has an MBR table, as a distribution installs it: partition 1
# ext4 (16 MiB, TREE-PLAIN), partition 2 (type 8e, the rest) the PV.
img_fish_lvm_part() {
    local out=$1 plain=$2 tag=$6 dev
    dev=$(img_fish_next_dev)
    rm -f -- "$out"
    truncate -s 64M -- "$out"
    sfdisk -q "$out" >/dev/null <<EOF || fail "sfdisk $out"
label: dos
start=2048, size=32768, type=83
start=34816, type=8e
EOF
    img_ext4_fs "$out.p1" 16M "$plain" "$tag-plain"
    img_place "$out" "$out.p1" 2048
    IMG_UUID[$out:part1]=${IMG_UUID[$out.p1]}; IMG_LABEL[$out:part1]=${IMG_LABEL[$out.p1]}
    rm -f -- "$out.p1"
    IMG_FISH_PRE+=("add $out format:raw")
    IMG_FISH_NDISKS=$((IMG_FISH_NDISKS + 1))
    img_fish_lvm "$out" "${dev}2" "$3" "$4" "$5" "$tag"
}

# img_fish_run: make every queued image, in one boot.
img_fish_run() {
    local script=$VMT_DIR/images.fish
    { printf '%s\n' "${IMG_FISH_PRE[@]}"; echo run; printf '%s\n' "${IMG_FISH_POST[@]}"; } > "$script"
    img_guestfish "$script"
    IMG_FISH_PRE=() IMG_FISH_POST=() IMG_FISH_NDISKS=0
}

# ---- domains --------------------------------------------------------------------

# nbd_disk_xml TARGET HOST PORT [SERIAL]: a network (NBD over TCP) disk.
nbd_disk_xml() {
    echo "<disk type='network' device='disk'>"
    echo "  <driver name='qemu' type='raw'/>"
    echo "  <source protocol='nbd'><host name='$2' port='$3'/></source>"
    echo "  <target dev='$1' bus='virtio'/>"
    [[ -n ${4:-} ]] && echo "  <serial>$4</serial>"
    echo "</disk>"
}

# ---- plugging --------------------------------------------------------------------

PLUG_MS=0

# plug DIR: mkdir DIR (a disks/<name> path), which must succeed; sets
# PLUG_MS to how long it took.
plug() {
    local t0=$(now_us) err
    err=$(mkdir -- "$1" 2>&1) || fail "plug: mkdir $1 failed: $err"
    PLUG_MS=$(( ($(now_us) - t0) / 1000 ))
}

# unplug DIR: rmdir DIR, which must succeed; sets PLUG_MS.
unplug() {
    local t0=$(now_us) err
    err=$(rmdir -- "$1" 2>&1) || fail "unplug: rmdir $1 failed: $err"
    PLUG_MS=$(( ($(now_us) - t0) / 1000 ))
}

# timed_errno EXPECTED MAX-SECONDS OP PATH: like assert_errno, and the
# operation must also return within MAX-SECONDS; sets PLUG_MS.
timed_errno() {
    local expected=$1 max=$2; shift 2
    local t0=$(now_us) got
    got=$(errno_of "$@") || fail "errno.py $* could not run"
    PLUG_MS=$(( ($(now_us) - t0) / 1000 ))
    [[ $got == "$expected" ]] || fail "$1 $2: expected $expected, got $got (after $PLUG_MS ms)"
    (( PLUG_MS <= max * 1000 )) || fail "$1 $2: $expected only after $PLUG_MS ms (more than ${max}s)"
}

# assert_tree_same TREE DIR WHAT: DIR shows exactly TREE: names, file
# contents, symlink targets (ext*'s lost+found aside).
assert_tree_same() {
    local out
    if ! out=$(diff -r --no-dereference -x lost+found -- "$1" "$2" 2>&1); then
        printf 'FAIL (%s): %s: %s differs from %s\n%s\n' "$VMT_NAME" "$3" "$2" "$1" \
            "$(head -n 30 <<<"$out")" >&2
        exit 1
    fi
}

# assert_listing DIR EXPECTED-NAMES...: the sorted listing of DIR.
assert_listing() {
    local dir=$1; shift
    local expected
    expected=$(printf '%s\n' "$@" | sort)
    assert_eq "listing of $dir" "$expected" "$(sorted_ls "$dir")"
}

# assert_grep WHAT REGEX TEXT: TEXT has a line matching REGEX (extended).
assert_grep() {
    grep -Eq -- "$2" <<<"$3" || fail "$1: no line matches /$2/ in:
$3"
}

# The .status section of one host, as text, and fields of it.
status_field() {   # status_field FIELD-NAME TEXT -> the first value
    awk -v f="$1" '{ sub(/^[ \t]+/, "") } index($0, f ": ") == 1 { print substr($0, length(f) + 3); exit }' <<<"$2"
}

# pids_with_substring STRING: processes with an argument containing STRING
# (this shell and its subshells aside).
pids_with_substring() {
    local f pid a
    local -a args
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}; pid=${pid%/cmdline}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        { mapfile -d '' -t args < "$f"; } 2>/dev/null || continue
        for a in "${args[@]}"; do
            if [[ $a == *"$1"* ]]; then echo "$pid"; break; fi
        done
    done
}

# assert_nothing_left INSTANCE STATEDIR: after virtmount has exited, no
# appliance domain on INSTANCE (libvirt), and no process -- qemu or
# connector -- using files of STATEDIR (the appliance's kernel, root and
# channel all live there), nor any qemu child of that libvirtd.
assert_nothing_left() {
    local inst=$1 state=$2 doms pids p lvpid
    doms=$(lv_virsh "$inst" list --all --name | grep '^virtmount-appliance' || true)
    [[ -z $doms ]] || fail "appliance domains left on $inst after unmount: $doms"
    pids=$(pids_with_substring "$state/")
    if [[ -n $pids ]]; then
        for p in $pids; do
            echo "left: $p $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-200)" >&2
        done
        fail "processes left using $state after unmount: $(echo $pids)"
    fi
    lvpid=$(lv_pid "$inst")
    for p in $(child_pids "$lvpid"); do
        if grep -q qemu "/proc/$p/comm" 2>/dev/null && pid_alive "$p"; then
            fail "qemu pid $p (child of libvirtd $inst) left after unmount: $(tr '\0' ' ' < "/proc/$p/cmdline" | cut -c1-200)"
        fi
    done
    local f
    for f in "${LV_BASE[$inst]}"/run/qemu/*.pid; do
        [[ -e $f ]] || continue
        p=$(cat "$f" 2>/dev/null) || continue
        # (driver.pid there is libvirtd's own)
        if pid_alive "$p" && grep -q qemu "/proc/$p/comm" 2>/dev/null; then
            fail "qemu pid $p ($f) left after unmount"
        fi
    done
    # The connector, wherever it was started from.
    for p in $(pgrep -x virtmount-conne 2>/dev/null); do
        if tr '\0' '\n' < "/proc/$p/cmdline" 2>/dev/null | grep -Fq -- "$state/"; then
            fail "connector pid $p left after unmount"
        fi
    done
    return 0
}

# image_sums FILES...: checksums, to show that plugging wrote nothing.
image_sums() { md5sum -- "$@"; }
