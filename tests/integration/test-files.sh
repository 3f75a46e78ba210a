#!/bin/bash
# Guest files: complete, exact, backup-safe read access (issue 5).
#
# One tree of known content (files.sh: every kind of file, odd names, xattrs,
# ns times, a sparse file past 4 GiB, 100 000 entries in one directory, a
# 1.3 KB deep path) is made into images: ext4 (as qcow2), a copy of it that
# a running guest uses, and vfat (what vfat can hold).  One appliance reads
# them all, and:
#  - rsync -aHAX --checksum --dry-run --itemize-changes --delete between the
#    tree and the plugged ext4 finds no difference; for vfat, rsync -rt;
#  - every object has the tree's type, mode, owner, size, link count, ns
#    mtime, symlink target, device number, xattrs and sha256 (one walk of
#    the tree), hard links share one st_ino, and diff -r --no-dereference
#    agrees over the regular files;
#  - guestfish, reading the same images (its own boot, in the background),
#    gives the same sha256 (checksums-out);
#  - `image` read in full is what qemu-img convert makes of the qcow2;
#  - symlinks are not resolved here, device nodes never reach this
#    machine's devices, nothing can be written;
#  - smalls/'s files, read whole in name order by rsync, come by read-ahead
#    (.status), on the appliance's reader beside its main daemon;
#  - an rsync -aHAX copy, run a second time, transfers nothing;
#  - the running guest's disk (a point-in-time view through a backup job)
#    shows the same tree;
#  - st_ino: no two filesystems share one, and every object keeps its own
#    across an unplug/replug and an unmount/remount (same statedir; vfat
#    excluded: Linux numbers its inodes in load order).
#
# Cost, and what it shapes: under TCG the appliance reads ~20-60 MB/s and
# lists many/ (100 000 entries: lstatnslist and lxattrlist in batches) in
# 20-60 s, each time a directory is opened.  So many/ is walked only where a
# check needs it (7 times), and the 4 GiB file is read in full nowhere: its
# data regions (one across 4 GiB) and a hole are read and compared, its size,
# times and xattrs compared by rsync and the walk.  guestfish, at ~1 ms a
# file and ~20 MB/s, reads neither many/'s 99 999 empty files nor that file
# in full (files_guestfish_start).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
source "$(dirname "$0")/files.sh"
vmt_init
files_init

for p in rsync setfattr getfattr mke2fs e2fsck mkfs.vfat mcopy guestfish sha256sum unshare; do
    command -v "$p" >/dev/null || skip "$p is not installed"
done
[[ -e /dev/loop-control ]] || skip "no loop devices: files_ext4 fills many/ through one"

# ---- the trees and the images (before any libvirtd: see files_ext4)
T=$VMT_DIR/tree TV=$VMT_DIR/tree-vfat I=$VMT_DIR/img
mkdir -p "$I"
t0=$(now_us)
files_tree "$T"
files_ext4 "$I/files.raw" "$T" 160M files
qemu-img convert -q -f raw -O qcow2 "$I/files.raw" "$I/files.qcow2" || fail "qemu-img convert to qcow2"
rm -f -- "$I/files.raw"
cp --sparse=always -- "$I/files.qcow2" "$I/running.qcow2"
files_tree_vfat "$TV"
files_vfat "$I/fat.raw" 32M "$TV" FILESFAT
files_walk "$T" "$VMT_DIR/walk.tree"
say "trees and images made, tree walked: $(( ($(now_us) - t0) / 1000 )) ms ($(wc -l < "$VMT_DIR/walk.tree") objects)"

# ---- guestfish reads the same images, in the background (its own boot)
GF=$VMT_DIR/guestfish
files_guestfish_start "$GF" "$I/files.qcow2" qcow2 "$T" "$I/fat.raw" raw

lv_start a
lv_define a alpha \
    "$(disk_xml "$I/files.qcow2" qcow2 vda virtio)" \
    "$(disk_xml "$I/fat.raw" raw vdb virtio)"
lv_define a beta "$(disk_xml "$I/running.qcow2" qcow2 vda virtio)"

M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg"
A=$M/a/alpha/disks
plug "$A/vda"
say "plug vda (appliance boot included): $PLUG_MS ms"
P=$A/vda/whole
assert_listing "$A/vda" image info whole

# ---- the tree, as stored
t0=$(now_us)
assert_rsync_same "ext4: rsync -aHAX --checksum" "$T" "$P" -aHAX --checksum --exclude="/$FILES_BIG"
assert_rsync_same "ext4: rsync -aHAX (the 4 GiB file)" "$T/big" "$P/big" -aHAX
files_assert_big_regions "$T" "$P" "ext4"
say "rsync -aHAX --checksum --dry-run: no difference ($(( ($(now_us) - t0) / 1000 )) ms)"
files_assert_read_ahead "$M" "ext4"
t0=$(now_us)
files_walk "$P" "$VMT_DIR/walk.ext4"
files_assert_walks_same "ext4" "$VMT_DIR/walk.tree" "$VMT_DIR/walk.ext4"
say "(walk: $(( ($(now_us) - t0) / 1000 )) ms)"
t0=$(now_us)
assert_tree_same_files "$T" "$P" "ext4" many huge.sparse
say "diff -r --no-dereference: no difference, many/ and the 4 GiB file aside ($(( ($(now_us) - t0) / 1000 )) ms)"

# A few things by name, so that a failure says plainly what broke.
assert_eq "absolute symlink, as stored" /etc/passwd "$(readlink "$P/sym/abs")"
assert_eq "relative symlink" ../text.txt "$(readlink "$P/sym/rel")"
assert_file_bytes "$P/sym/rel" $'hello, guest\n'
assert_eq "hard links: one inode" 1 "$(stat -c %i "$P/links/a" "$P/links/b" "$P/other/c" | sort -u | wc -l)"
assert_eq "hard links: st_nlink" 3 "$(stat -c %h "$P/links/a")"
assert_eq "size past 4 GiB" "$FILES_BIG_SIZE" "$(stat -c %s "$P/$FILES_BIG")"
assert_eq "ns mtime" 1234567890.987654321 "$(stat -c %.9Y "$P/text.txt")"
assert_eq "owner" 1234:5678 "$(stat -c %u:%g "$P/random-1M")"
assert_eq "user.plain" hello "$(getfattr --absolute-names --only-values -n user.plain "$P/xattr/file")"
assert_eq "device node" "character special file 1:3" \
    "$(stat -c '%F %Hr:%Lr' "$P/special/null")"
files_assert_device_not_opened "$P/special/null" "$P/special/blk" "$P/special/tty"
assert_eq "open a socket" ENXIO "$(files_open_errno "$P/special/sock")"
# (a fifo is the kernel's own, local to this machine: no data, no hang)
assert_eq "open a fifo, non-blocking" OK "$(files_open_errno "$P/special/fifo")"
assert_errno EROFS create "$P/newfile"
assert_errno EROFS open_w "$P/text.txt"
assert_errno EROFS setxattr "$P/xattr/file"
assert_errno EROFS unlink "$P/links/a"
assert_errno EROFS mkdir "$P/sticky/newdir"

# ---- image: the whole disk, as qemu-img converts the qcow2 to raw
t0=$(now_us)
qemu-img convert -q -f qcow2 -O raw "$I/files.qcow2" "$I/files-converted.raw"
assert_same_file "$A/vda/image" "$I/files-converted.raw" "image of vda vs qemu-img convert -O raw"
say "image: qemu-img convert's raw ($(stat -c %s "$I/files-converted.raw") bytes, $(( ($(now_us) - t0) / 1000 )) ms)"
rm -f -- "$I/files-converted.raw"

# ---- a copy, and a second run that transfers nothing.  The 4 GiB file is
# put there from the tree (same size and times): rsync -a must see it as
# unchanged, and so read none of it.
t0=$(now_us)
DEST=$VMT_DIR/copy
mkdir -p "$DEST/big"
cp -a --sparse=always -- "$T/$FILES_BIG" "$DEST/$FILES_BIG"
rsync -aHAX --sparse -- "$P/" "$DEST/" || fail "rsync -aHAX of the plugged tree"
say "rsync -aHAX to an empty directory: $(( ($(now_us) - t0) / 1000 )) ms"
assert_rsync_same "the copy" "$T" "$DEST" -aHAX --checksum
t0=$(now_us)
files_assert_rsync_nothing "second rsync -aHAX" "$P" "$DEST"
say "second rsync -aHAX: nothing transferred ($(( ($(now_us) - t0) / 1000 )) ms)"

# ---- vfat
plug "$A/vdb"
say "plug vdb (vfat): $PLUG_MS ms"
PV=$A/vdb/whole
# vfat stores no owner, mode, link or xattr, and mtimes to 2 s, and mcopy
# does not keep directory times: names, contents and file times compared.
assert_rsync_same "vfat: rsync -rt --checksum" "$TV" "$PV" -rt --checksum --omit-dir-times --modify-window=1
assert_tree_same_files "$TV" "$PV" "vfat"
files_sha256 "$TV" > "$VMT_DIR/sums.tree-vfat"
files_sha256 "$PV" > "$VMT_DIR/sums.vfat"
assert_same_file "$VMT_DIR/sums.vfat" "$VMT_DIR/sums.tree-vfat" "sha256 of every file, vfat vs its tree"
files_walk "$PV" "$VMT_DIR/walk.vfat" ino

# ---- the running guest's copy: a point-in-time view through a backup job
lv_virsh a start beta >/dev/null || fail "virsh start beta"
wait_for 10 "beta runs" files_domain_is a beta running
plug "$M/a/beta/disks/vda"
say "plug the running beta's vda: $PLUG_MS ms"
PR=$M/a/beta/disks/vda/whole
t0=$(now_us)
files_walk "$PR" "$VMT_DIR/walk.running"
files_assert_walks_same "running guest" "$VMT_DIR/walk.tree" "$VMT_DIR/walk.running"
say "(walk: $(( ($(now_us) - t0) / 1000 )) ms)"
files_assert_inodes_distinct "$VMT_DIR/walk.ext4.ino" "$VMT_DIR/walk.running.ino" "$VMT_DIR/walk.vfat.ino"

# ---- guestfish's sums
files_guestfish_wait
files_sha256 "$P" guestfish > "$VMT_DIR/sums.ext4"
files_guestfish_compare "$GF" "$VMT_DIR/sums.ext4" "$P" ext4
files_guestfish_compare "$GF.2" "$VMT_DIR/sums.vfat" "$PV" vfat

# ---- unplug, plug again: the same numbers
unplug "$A/vda"
plug "$A/vda"
say "replug vda: $PLUG_MS ms"
files_walk "$P" "$VMT_DIR/walk.replug" ino
assert_same_file "$VMT_DIR/walk.replug.ino" "$VMT_DIR/walk.ext4.ino" "st_ino of every object across an unplug/replug"
say "st_ino of $(wc -l < "$VMT_DIR/walk.ext4.ino") objects the same after a replug"

unplug "$M/a/beta/disks/vda"
vm_umount "$M"
lv_virsh a destroy beta >/dev/null || fail "virsh destroy beta"

# ---- unmount, mount again (same statedir): the same numbers
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg"
plug "$A/vda"
say "plug vda after the remount (appliance boot included): $PLUG_MS ms"
files_walk "$P" "$VMT_DIR/walk.remount" ino
assert_same_file "$VMT_DIR/walk.remount.ino" "$VMT_DIR/walk.ext4.ino" "st_ino of every object across an unmount/remount"
say "st_ino of every object the same after a remount"
vm_umount "$M"
assert_nothing_left a "$VMT_DIR/state"
say "PASS"
