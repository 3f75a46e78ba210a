#!/bin/bash
# Guest files on XFS (issue 5): the tree of test-files.sh (files.sh: every
# kind of file, odd names, xattrs, ns times, a sparse file past 4 GiB,
# 100 000 entries in one directory, a deep path) copied into XFS with
# rsync -aHAX through a loop mount (these machines' kernel has XFS; the
# appliance's mounts it without recovery), and plugged:
#  - rsync -aHAX --checksum --dry-run finds no difference with the tree;
#  - every object has the tree's type, mode, owner, size, link count, ns
#    mtime, target, device number, xattrs and sha256, hard links one st_ino;
#    diff -r --no-dereference agrees over the regular files;
#  - guestfish reads the same sha256 from the image (checksums-out);
#  - st_ino of every object is the same across an unplug/replug and an
#    unmount/remount (same statedir).
# As in test-files.sh, the 4 GiB file is compared by its regions, and
# many/ walked only where needed.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
source "$(dirname "$0")/files.sh"
vmt_init
files_init

for p in rsync setfattr getfattr mkfs.xfs guestfish sha256sum unshare; do
    command -v "$p" >/dev/null || skip "$p is not installed (mkfs.xfs: xfsprogs)"
done
[[ -e /dev/loop-control ]] || skip "no loop devices: files_xfs fills the image through one"
grep -qw xfs /proc/filesystems || skip "this machine's kernel has no XFS (files_xfs fills the image through a loop mount)"

T=$VMT_DIR/tree I=$VMT_DIR/img
mkdir -p "$I"
t0=$(now_us)
files_tree "$T"
files_many "$T"
files_xfs "$I/xfs.raw" 512M "$T" files-xfs
files_walk "$T" "$VMT_DIR/walk.tree"
say "tree and image made, tree walked: $(( ($(now_us) - t0) / 1000 )) ms ($(wc -l < "$VMT_DIR/walk.tree") objects)"

GF=$VMT_DIR/guestfish
files_guestfish_start "$GF" "$I/xfs.raw" raw "$T"

lv_start a
lv_define a alpha "$(disk_xml "$I/xfs.raw" raw vda virtio)"
M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg"
A=$M/a/alpha/disks
plug "$A/vda"
say "plug vda (appliance boot included): $PLUG_MS ms"
P=$A/vda/whole
assert_listing "$A/vda" image info whole
assert_grep "info: xfs" '^ +filesystem: xfs$' "$(cat "$A/vda/info")"

t0=$(now_us)
assert_rsync_same "xfs: rsync -aHAX --checksum" "$T" "$P" -aHAX --checksum --exclude="/$FILES_BIG"
assert_rsync_same "xfs: rsync -aHAX (the 4 GiB file)" "$T/big" "$P/big" -aHAX
files_assert_big_regions "$T" "$P" "xfs"
say "rsync -aHAX --checksum --dry-run: no difference ($(( ($(now_us) - t0) / 1000 )) ms)"
t0=$(now_us)
files_walk "$P" "$VMT_DIR/walk.xfs"
files_assert_walks_same "xfs" "$VMT_DIR/walk.tree" "$VMT_DIR/walk.xfs"
say "(walk: $(( ($(now_us) - t0) / 1000 )) ms)"
assert_tree_same_files "$T" "$P" "xfs" many huge.sparse
assert_eq "absolute symlink, as stored" /etc/passwd "$(readlink "$P/sym/abs")"
assert_eq "hard links: st_nlink" 3 "$(stat -c %h "$P/links/a")"
files_assert_device_not_opened "$P/special/null" "$P/special/blk"
assert_errno EROFS create "$P/newfile"

files_guestfish_wait
files_sha256 "$P" guestfish > "$VMT_DIR/sums.xfs"
files_guestfish_compare "$GF" "$VMT_DIR/sums.xfs" "$P" xfs

unplug "$A/vda"
plug "$A/vda"
say "replug: $PLUG_MS ms"
files_walk "$P" "$VMT_DIR/walk.replug" ino
assert_same_file "$VMT_DIR/walk.replug.ino" "$VMT_DIR/walk.xfs.ino" "st_ino of every object across an unplug/replug"
say "st_ino of $(wc -l < "$VMT_DIR/walk.xfs.ino") objects the same after a replug"
vm_umount "$M"

vm_mount "$M" "host=a=$(lv_uri a),accel=tcg"
plug "$A/vda"
say "plug after the remount (appliance boot included): $PLUG_MS ms"
files_walk "$P" "$VMT_DIR/walk.remount" ino
assert_same_file "$VMT_DIR/walk.remount.ino" "$VMT_DIR/walk.xfs.ino" "st_ino of every object across an unmount/remount"
say "st_ino of every object the same after a remount"
vm_umount "$M"
assert_nothing_left a "$VMT_DIR/state"
say "PASS"
