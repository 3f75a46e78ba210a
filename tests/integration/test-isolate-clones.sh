#!/bin/bash
# Cloned guests: two disks whose LVM carries the same VG name and the same
# PV UUIDs.  orig.raw is a whole-disk PV holding VG "vgclone" with two ext4
# LVs (made in one guestfish boot: no device-mapper on the host); clone.raw
# is a copy of it whose two LVs then got filesystems of other content
# (written at the LVs' offsets, checked by their labels first).
# With the default of one appliance per host:
#  - orig plugged, then the clone: the clone clashes, goes to an appliance
#    of its own (.status: two appliances, one drive each; the log says
#    so), and each disk shows its own LVs with its own content;
#  - a third, plain disk goes to the shared appliance, not the clone's;
#  - the clone unplugged and plugged again: into its appliance again, no
#    third one, and straight there (the log says its last plug told), not
#    through a probe in the shared appliance first;
#  - unmounted: nothing remains.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
source "$(dirname "$0")/live.sh"
vmt_init
live_init

lv_start a
T=$VMT_DIR/trees I=$VMT_DIR/img
mkdir -p "$T" "$I"
for t in oroot ohome croot chome plain; do img_tree "$T/$t" "$t"; done
img_fish_lvm_whole "$I/orig.raw" vgclone "$T/oroot" "$T/ohome" orig
img_fish_run
img_ext4 "$I/plain.raw" "$T/plain" plain 8M

# The clone: the same PV and VG, other content in each LV: a filesystem
# of the same size written over each, found by its label (the first
# superblock with it: s_volume_name is at 120 in the superblock, which is
# at 1024 in the filesystem).
cp --sparse=always "$I/orig.raw" "$I/clone.raw"
label_at() { blkid -p -O "$2" -o value -s LABEL -- "$1" 2>/dev/null || true; }
le32_at() { od -An -tu4 -j "$2" -N 4 -- "$1" | tr -d ' '; }
# clone_lv IMAGE LABEL NEW-LABEL TREE
clone_lv() {
    local img=$1 label=$2 new=$3 tree=$4 pos off blocks bsize
    pos=$(grep -obUaF -m 1 -- "$label" "$img" | head -n 1 | cut -d: -f1)
    [[ -n $pos ]] || fail "no filesystem labelled $label in $img"
    off=$((pos - 1024 - 120))
    assert_eq "label of the filesystem at $off" "$label" "$(label_at "$img" "$off")"
    blocks=$(le32_at "$img" $((off + 1024 + 4)))
    bsize=$((1024 << $(le32_at "$img" $((off + 1024 + 24)))))
    img_ext4_fs "$VMT_DIR/lv.fs" "$((blocks * bsize / 1024))k" "$tree" "$new"
    dd if="$VMT_DIR/lv.fs" of="$img" bs=1024 seek=$((off / 1024)) conv=notrunc status=none ||
        fail "writing $new into $img"
    assert_eq "label at $off of $img" "$new" "$(label_at "$img" "$off")"
    rm -f -- "$VMT_DIR/lv.fs"
    say "$img: $label at $off ($((blocks * bsize)) bytes) replaced by $new"
}
clone_lv "$I/clone.raw" "${IMG_LABEL[$I/orig.raw:vgclone/root]:-orig-root}" clone-root "$T/croot"
clone_lv "$I/clone.raw" "${IMG_LABEL[$I/orig.raw:vgclone/my-home]:-orig-my-home}" clone-home "$T/chome"
declare -A pv=()
for img in orig clone; do
    pv[$img]=$(blkid -p -o value -s UUID -- "$I/$img.raw")
    [[ -n ${pv[$img]} ]] || fail "$img.raw has no PV UUID"
done
assert_eq "the clone's PV UUID is the original's" "${pv[orig]}" "${pv[clone]}"

lv_define a origdom "$(disk_xml "$I/orig.raw" raw vda virtio)" "$(disk_xml "$I/plain.raw" raw vdb virtio)"
lv_define a clonedom "$(disk_xml "$I/clone.raw" raw vda virtio)"

M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg"
LOG=${VMT_MOUNT_LOG[$M]}
O=$M/a/origdom/disks/vda C=$M/a/clonedom/disks/vda
appliance_domains() { lv_virsh a list --name | grep '^virtmount-appliance' | sort || true; }
holds() { local x; x=$(lv_virsh a dumpxml "$1") && grep -Fq "<source file='$2'" <<<"$x"; }
lvdirs=(image info lv-vgclone-my--home lv-vgclone-root)

plug "$O"
say "plug the original (appliance boot): $PLUG_MS ms"
assert_listing "$O" "${lvdirs[@]}"
shared=$(live_appliances "$M")

plug "$C"
say "plug the clone (clash: an appliance of its own): $PLUG_MS ms"
assert_listing "$C" "${lvdirs[@]}"
status=$(cat "$M/.status")
echo "$status"
names=$(live_appliances "$M")
assert_eq "two appliances" 2 "$(wc -l <<<"$names")"
own=$(grep -vxF -- "$shared" <<<"$names")
for a in $names; do assert_eq "drives of $a" "1 of 254" "$(live_drives_of "$M" "$a")"; done
holds "$shared" "$I/orig.raw" || fail "the original is not in $shared"
holds "$own" "$I/clone.raw" || fail "the clone is not in $own"
grep -i 'clash' "$LOG" | grep -q vda || fail "no log line about the clone's clash"
say "log: $(grep -i clash "$LOG" | tail -n 1)"
assert_eq "libvirt runs the two" "$(sort <<<"$names")" "$(appliance_domains)"
# Each its own content, both at once.
assert_tree_same "$T/oroot" "$O/lv-vgclone-root" "the original's root LV"
assert_tree_same "$T/ohome" "$O/lv-vgclone-my--home" "the original's my-home LV"
assert_tree_same "$T/croot" "$C/lv-vgclone-root" "the clone's root LV"
assert_tree_same "$T/chome" "$C/lv-vgclone-my--home" "the clone's my-home LV"
assert_grep "the clone's info" '^logical volume vgclone/root$' "$(cat "$C/info")"

# A plain disk: the shared appliance, not the clone's.
plug "$M/a/origdom/disks/vdb"
say "plug a plain disk: $PLUG_MS ms"
holds "$shared" "$I/plain.raw" || fail "the plain disk is not in the shared appliance $shared"
assert_eq "drives of the shared appliance" "2 of 254" "$(live_drives_of "$M" "$shared")"
assert_eq "drives of the clone's" "1 of 254" "$(live_drives_of "$M" "$own")"
assert_tree_same "$T/plain" "$M/a/origdom/disks/vdb/whole" "the plain disk"

# The clone again: its appliance again.
unplug "$C"
assert_eq "drives of the clone's appliance, empty" "0 of 254" "$(live_drives_of "$M" "$own")"
plug "$C"
say "plug the clone again: $PLUG_MS ms"
assert_eq "still two appliances" "$(sort <<<"$names")" "$(appliance_domains)"
assert_eq "still two in .status" "$names" "$(live_appliances "$M")"
holds "$own" "$I/clone.raw" || fail "the clone, plugged again, is not in $own"
assert_eq "clashes found by probing" 1 "$(grep -c 'clash with a drive already plugged' "$LOG")"
assert_eq "clashes known from the last plug" 1 "$(grep -c 'as at its last plug, clash' "$LOG")"
assert_tree_same "$T/croot" "$C/lv-vgclone-root" "the clone's root LV, plugged again"
assert_tree_same "$T/ohome" "$O/lv-vgclone-my--home" "the original's my-home LV, still"

vm_umount "$M"
live_assert_nothing_left a "$VMT_DIR/state" "$LOG"
say "PASS"
