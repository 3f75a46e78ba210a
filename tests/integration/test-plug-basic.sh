#!/bin/bash
# Hotplug, one disk of each kind, all in one appliance (one boot): a raw
# whole-disk ext4, a qcow2 with an MBR table (ext4 + vfat), a GPT disk
# (ext4, an empty partition, ext2, a locked LUKS partition), a whole-disk
# LVM PV with two LVs (dashes in the names), an MBR disk with ext4 and an
# LVM PV partition (a distribution's layout), an ext4 whose journal needs
# recovery, and a CD-ROM with an ISO.  For each: mkdir plugs it, the
# listing, `info`, `image`, every file compared with what the image was
# made from, symlinks, EROFS on writes; `plugged` and .status follow;
# rmdir unplugs; plugging again works on the same appliance.  At the end
# the images are unchanged (nothing was written to them) and unmounting
# leaves no qemu, connector or appliance domain.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
vmt_init

lv_start a

# ---- the images, from trees kept for comparison
T=$VMT_DIR/trees I=$VMT_DIR/img
mkdir -p "$T" "$I"
for t in whole mbr1 gpt1 gpt3 lvroot lvhome plain lv2root lv2home dirty cd; do
    img_tree "$T/$t" "$t"
done
img_tree "$T/mbr2" mbr2 nosymlink
img_ext4 "$I/whole.raw" "$T/whole" whole
img_mbr "$I/mbr.qcow2" "$T/mbr1" "$T/mbr2" mbr
img_gpt "$I/gpt.raw" "$T/gpt1" "$T/gpt3" gpt
img_dirty "$I/dirty.raw" "$T/dirty" dirty
img_iso "$I/cd.iso" "$T/cd" CDLABEL
img_fish_lvm_whole "$I/lvm.raw" vg-data "$T/lvroot" "$T/lvhome" lvm
img_fish_lvm_part "$I/lvm2.raw" "$T/plain" vg2 "$T/lv2root" "$T/lv2home" lvm2
img_fish_run
images=("$I/whole.raw" "$I/mbr.qcow2" "$I/gpt.raw" "$I/dirty.raw" "$I/cd.iso" "$I/lvm.raw"
        "$I/lvm2.raw")
sums_before=$(image_sums "${images[@]}")
say "images made"

lv_define a alpha \
    "$(disk_xml "$I/whole.raw" raw vda virtio)" \
    "$(disk_xml "$I/mbr.qcow2" qcow2 vdb virtio data-disk)" \
    "$(disk_xml "$I/gpt.raw" raw vdc virtio gpt-disk)" \
    "$(disk_xml "$I/lvm.raw" raw vdd virtio lvm-disk)" \
    "$(disk_xml "$I/lvm2.raw" raw vdf virtio distro)" \
    "$(disk_xml "$I/dirty.raw" raw vde virtio crashed)" \
    "$(cdrom_xml hdc "$I/cd.iso")"

M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg"
D=$M/a/alpha
UUID=$(lv_virsh a domuuid alpha | sed '/^$/d')

assert_listing "$D/devices" crashed data-disk distro gpt-disk hdc lvm-disk vda
assert_listing "$D/disks"
assert_file_bytes "$D/devices/vda/plugged" $'0\n'

# ---- the first plug boots the appliance
plug "$D/disks/vda"
say "first plug (appliance boot included): $PLUG_MS ms"
assert_file_bytes "$D/devices/vda/plugged" $'1\n'
assert_listing "$D/disks" vda
P=$D/disks/vda
cat "$P/info"
assert_listing "$P" image info whole
assert_tree_same "$T/whole" "$P/whole" "whole-disk ext4"
assert_eq "readlink whole/link" hello.txt "$(readlink "$P/whole/link")"
assert_eq "readlink whole/sub/deep/up" ../../hello.txt "$(readlink "$P/whole/sub/deep/up")"
assert_file_bytes "$P/whole/hello.txt" $'hello from whole\n'
assert_eq "mode of whole/data.bin" 640 "$(stat -c %a "$P/whole/data.bin")"
assert_eq "size of whole/data.bin" 40000 "$(stat -c %s "$P/whole/data.bin")"
[[ -d $P/whole/sub/deep ]] || fail "whole/sub/deep is not a directory"
[[ -L $P/whole/link ]] || fail "whole/link is not a symlink"
# image: the whole disk, raw
assert_eq "size of image" 16777216 "$(stat -c %s "$P/image")"
assert_same_file "$P/image" "$I/whole.raw" "image of vda"
info=$(cat "$P/info")
assert_grep "info names the disk" '^disk: vda$' "$info"
assert_grep "info gives the size" '^size: 16777216$' "$info"
assert_grep "info: no partition table" '^partition table: none$' "$info"
assert_grep "info: whole disk" '^whole disk' "$info"
assert_grep "info: ext4" '^ +filesystem: ext4$' "$info"
assert_grep "info: label" "^ +label: whole\$" "$info"
assert_grep "info: uuid" "^ +uuid: ${IMG_UUID[$I/whole.raw]}\$" "$info"
assert_grep "info: directory" '^ +directory: whole$' "$info"

# ---- .status with one drive plugged
status=$(cat "$M/.status")
echo "$status"
assert_grep ".status: one drive" '^ *plugged drives: 1$' "$status"
assert_grep ".status: the drive" "^ *$UUID/vda as [A-Za-z0-9_-]*[A-Za-z]\$" "$status"
assert_grep ".status: the appliance" '^ *appliance virtmount-appliance-' "$status"
assert_grep ".status: running" '^ *state: running$' "$status"
assert_grep ".status: tcg" '^ *accel: tcg$' "$status"
assert_grep ".status: drives" '^ *drives: 1 of 254$' "$status"
assert_grep ".status: memory" '^ *memory: ' "$status"
appliance=$(grep -o 'virtmount-appliance-[A-Za-z0-9_-]*' <<<"$status" | head -n 1)
assert_grep "libvirt lists the appliance" "^$appliance\$" "$(lv_virsh a list --name)"

# ---- writes inside a plugged filesystem: EROFS
assert_errno EROFS create "$P/whole/newfile"
assert_errno EROFS mkdir "$P/whole/newdir"
assert_errno EROFS open_w "$P/whole/hello.txt"
assert_errno EROFS unlink "$P/whole/hello.txt"
assert_errno EROFS open_w "$P/image"
# mkdir in the plugged disk's own directory: EPERM
assert_errno EPERM mkdir "$P/newdir"

# ---- qcow2, MBR: ext4 + vfat
plug "$D/disks/data-disk"
say "plug data-disk: $PLUG_MS ms"
P=$D/disks/data-disk
cat "$P/info"
assert_listing "$P" image info part1 part2
assert_tree_same "$T/mbr1" "$P/part1" "MBR partition 1 (ext4)"
assert_tree_same "$T/mbr2" "$P/part2" "MBR partition 2 (vfat)"
assert_eq "size of image (qcow2: the virtual size)" 67108864 "$(stat -c %s "$P/image")"
assert_same_file "$P/image" "$I/mbr.raw" "image of data-disk (qcow2) vs its raw"
info=$(cat "$P/info")
assert_grep "info: msdos" '^partition table: msdos$' "$info"
assert_grep "info: partition 1" '^partition 1' "$info"
assert_grep "info: partition 2" '^partition 2' "$info"
assert_grep "info: p1 start" '^ +start: 1048576$' "$info"
assert_grep "info: p1 size" '^ +size: 31457280$' "$info"
assert_grep "info: vfat" '^ +filesystem: vfat$' "$info"
assert_grep "info: p1 uuid" "^ +uuid: ${IMG_UUID[$I/mbr.qcow2:part1]}\$" "$info"
assert_grep "info: p2 label" "^ +label: ${IMG_LABEL[$I/mbr.qcow2:part2]}\$" "$info"
assert_grep "info: part2 directory" '^ +directory: part2$' "$info"

# ---- GPT: ext4, nothing, ext2, LUKS
plug "$D/disks/gpt-disk"
say "plug gpt-disk: $PLUG_MS ms"
P=$D/disks/gpt-disk
cat "$P/info"
assert_listing "$P" image info part1 part3
assert_tree_same "$T/gpt1" "$P/part1" "GPT partition 1 (ext4)"
assert_tree_same "$T/gpt3" "$P/part3" "GPT partition 3 (ext2)"
info=$(cat "$P/info")
assert_grep "info: gpt" '^partition table: gpt$' "$info"
for n in 1 2 3 4; do assert_grep "info: partition $n" "^partition $n\$" "$info"; done
assert_grep "info: ext2" '^ +filesystem: ext2$' "$info"
assert_grep "info: LUKS locked" 'LUKS \(locked\)' "$info"
assert_grep "info: LUKS uuid" "^ +uuid: ${IMG_UUID[$I/gpt.raw:part4]}\$" "$info"
assert_grep "info: p1 uuid" "^ +uuid: ${IMG_UUID[$I/gpt.raw:part1]}\$" "$info"
assert_grep "info: no directory for partition 2" '^ +filesystem: none$' "$info"
assert_grep "info: p3 label" '^ +label: gpt-three$' "$info"

# ---- LVM: a whole-disk PV, two LVs
plug "$D/disks/lvm-disk"
say "plug lvm-disk: $PLUG_MS ms"
P=$D/disks/lvm-disk
cat "$P/info"
assert_listing "$P" image info lv-vg--data-my--home lv-vg--data-root
assert_tree_same "$T/lvroot" "$P/lv-vg--data-root" "LV vg-data/root"
assert_tree_same "$T/lvhome" "$P/lv-vg--data-my--home" "LV vg-data/my-home"
info=$(cat "$P/info")
assert_grep "info: LV root" '^logical volume vg-data/root$' "$info"
assert_grep "info: LV my-home" '^logical volume vg-data/my-home$' "$info"
assert_grep "info: LV directory" '^ +directory: lv-vg--data-my--home$' "$info"
assert_grep "info: LV vg-data/root's uuid" "^ +uuid: ${IMG_UUID[$I/lvm.raw:vg-data/root]}\$" "$info"

# ---- MBR: ext4, and a PV partition (a second VG in the same appliance)
plug "$D/disks/distro"
say "plug distro: $PLUG_MS ms"
P=$D/disks/distro
cat "$P/info"
assert_listing "$P" image info part1 lv-vg2-my--home lv-vg2-root
assert_tree_same "$T/plain" "$P/part1" "ext4 beside the PV"
assert_tree_same "$T/lv2root" "$P/lv-vg2-root" "LV vg2/root"
assert_tree_same "$T/lv2home" "$P/lv-vg2-my--home" "LV vg2/my-home"
info=$(cat "$P/info")
assert_grep "info: msdos" '^partition table: msdos$' "$info"
assert_grep "info: PV partition" '^ +filesystem: LVM2_member$' "$info"
assert_grep "info: LV vg2/root" '^logical volume vg2/root$' "$info"
assert_grep "info: LV vg2/my-home's uuid" "^ +uuid: ${IMG_UUID[$I/lvm2.raw:vg2/my-home]}\$" "$info"
assert_grep "info: LV vg2/my-home's label" '^ +label: lvm2-my-home$' "$info"
assert_grep "info: part1's uuid" "^ +uuid: ${IMG_UUID[$I/lvm2.raw:part1]}\$" "$info"
# The first LVM disk's LVs are still there.
assert_tree_same "$T/lvroot" "$D/disks/lvm-disk/lv-vg--data-root" "LV vg-data/root, with vg2 active"

# ---- ext4 with a journal that needs recovery (mounted without replay)
plug "$D/disks/crashed"
say "plug crashed: $PLUG_MS ms"
P=$D/disks/crashed
cat "$P/info"
assert_listing "$P" image info whole
assert_tree_same "$T/dirty" "$P/whole" "ext4 needing recovery"

# ---- the CD-ROM, attached as a disk
plug "$D/disks/hdc"
say "plug hdc: $PLUG_MS ms"
P=$D/disks/hdc
cat "$P/info"
assert_listing "$P" image info whole
assert_tree_same "$T/cd" "$P/whole" "ISO 9660 CD-ROM"
assert_grep "info: iso9660" '^ +filesystem: iso9660$' "$(cat "$P/info")"
assert_eq "size of the CD-ROM's image" "$(stat -c %s "$I/cd.iso")" "$(stat -c %s "$P/image")"

# ---- all seven at once
all=(crashed data-disk distro gpt-disk hdc lvm-disk vda)
assert_listing "$D/disks" "${all[@]}"
for d in "${all[@]}"; do
    assert_file_bytes "$D/devices/$d/plugged" $'1\n'
done
status=$(cat "$M/.status")
assert_grep ".status: seven drives" '^ *plugged drives: 7$' "$status"
assert_grep ".status: drives 7" '^ *drives: 7 of 254$' "$status"
assert_eq "one appliance" 1 "$(grep -c '^ *appliance virtmount-appliance-' <<<"$status")"
# Each appliance serial is distinct.
serials=$(sed -n 's/^ *[0-9a-f-]*\/[^ ]* as \(.*\)$/\1/p' <<<"$status" | sort)
assert_eq "seven distinct appliance serials" 7 "$(sort -u <<<"$serials" | wc -l)"

# ---- unplug everything
for d in vda data-disk gpt-disk lvm-disk distro crashed hdc; do
    unplug "$D/disks/$d"
    say "unplug $d: $PLUG_MS ms"
    assert_file_bytes "$D/devices/$d/plugged" $'0\n'
    [[ ! -e $D/disks/$d ]] || fail "disks/$d still exists after rmdir"
done
assert_listing "$D/disks"
status=$(cat "$M/.status")
assert_grep ".status: none plugged" '^ *plugged drives: 0$' "$status"

# ---- plug again: same appliance, no second boot
plug "$D/disks/vda"
say "plug vda again (appliance running): $PLUG_MS ms"
assert_tree_same "$T/whole" "$D/disks/vda/whole" "whole-disk ext4, plugged again"
plug "$D/disks/lvm-disk"
say "plug lvm-disk again: $PLUG_MS ms"
assert_tree_same "$T/lvhome" "$D/disks/lvm-disk/lv-vg--data-my--home" "LV, plugged again"
status=$(cat "$M/.status")
assert_grep ".status: same appliance" "^ *appliance $appliance\$" "$status"
assert_grep ".status: two drives" '^ *drives: 2 of 254$' "$status"
assert_eq "still one appliance domain" "$appliance" \
    "$(lv_virsh a list --all --name | grep '^virtmount-appliance' || true)"

# ---- unmount with drives still plugged: everything goes
vm_umount "$M"
assert_nothing_left a "$VMT_DIR/state"
assert_eq "images unchanged by plugging" "$sums_before" "$(image_sums "${images[@]}")"
dumpe2fs -h "$I/dirty.raw" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery' ||
    fail "dirty.raw's journal was replayed (the image was written)"
say "PASS"
