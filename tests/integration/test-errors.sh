#!/bin/bash
# Errors in the tree: unknown names are ENOENT; writing, creating or
# truncating anything is EROFS; mkdir is EPERM (ENOENT in disks/ for a name
# not in devices/); and nothing changed after all that.
source "$(dirname "$0")/lib.sh"
vmt_init

lv_start a
I=$VMT_DIR/img
mkdir -p "$I"
mk_image "$I/dom-1.raw" raw 8M
mk_image "$I/dom-2.qcow2" qcow2 8M
lv_define a dom \
    "$(disk_xml "$I/dom-1.raw" raw vda virtio)" \
    "$(disk_xml "$I/dom-2.qcow2" qcow2 vdb virtio data)"
URI=$(lv_uri a)

M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$URI"
D=$M/a/dom

# ---- ENOENT
for p in "$M/nohost" "$M/a/nodom" "$D/nofile" "$D/devices/nodev" \
         "$D/devices/vda/nofile" "$D/disks/vda" "$D/disks/nodisk" \
         "$M/a/.status"; do
    assert_errno ENOENT stat "$p"
done
assert_cmd_fails 'No such file or directory' ls "$M/nohost"
assert_cmd_fails 'No such file or directory' cat "$D/devices/data/nofile"

# ---- EROFS: writing, truncating, creating
files=("$M/.status" "$D/domain.xml" "$D/state" "$D/devices/vda/size"
       "$D/devices/data/source" "$D/devices/data/plugged")
for f in "${files[@]}"; do
    for op in open_w open_trunc open_rw append truncate; do
        assert_errno EROFS "$op" "$f"
    done
done
dirs=("$M" "$M/a" "$D" "$D/devices" "$D/devices/vda" "$D/disks")
for d in "${dirs[@]}"; do
    assert_errno EROFS create "$d/newfile"
done
# The same as users meet it.
assert_cmd_fails 'Read-only file system' touch "$D/state"
assert_cmd_fails 'Read-only file system' touch "$D/newfile"
assert_cmd_fails 'Read-only file system' bash -c "echo x > '$D/state'"
assert_cmd_fails 'Read-only file system' bash -c "echo x >> '$D/devices/vda/size'"
assert_cmd_fails 'Read-only file system' truncate -s 0 "$D/domain.xml"
assert_cmd_fails 'Read-only file system' truncate -s 0 "$M/.status"
echo hello > "$VMT_DIR/hello"
assert_cmd_fails 'Read-only file system' cp "$VMT_DIR/hello" "$D/devices/"

# ---- EPERM: mkdir anywhere but in disks/.  In disks/, mkdir of a name that
# is not one of devices/ is ENOENT (DESIGN.md, "Hotplug semantics"); mkdir
# of a known one plugs that disk, which boots an appliance: not tested here.
for d in "$M" "$M/a" "$D" "$D/devices" "$D/devices/vda" "$D/devices/data"; do
    assert_errno EPERM mkdir "$d/newdir"
done
assert_errno EPERM mkdir "$D/devices/vda2"
assert_errno ENOENT mkdir "$D/disks/nodisk"
assert_cmd_fails 'Operation not permitted' mkdir "$M/a/newdir"
assert_cmd_fails 'Operation not permitted' mkdir "$D/devices/newdir"
assert_cmd_fails 'No such file or directory' mkdir "$D/disks/nodisk"

# ---- nothing changed
assert_file_bytes "$D/state" $'shut off\n'
lv_virsh a dumpxml dom > "$VMT_DIR/dom.xml"
assert_same_file "$D/domain.xml" "$VMT_DIR/dom.xml" "domain.xml after write attempts"
assert_file_bytes "$D/devices/vda/size" $'8388608\n'
assert_eq "dom after write attempts" "$(printf 'devices\ndisks\ndomain.xml\nstate')" "$(sorted_ls "$D")"
assert_eq "devices after write attempts" "$(printf 'data\nvda')" "$(sorted_ls "$D/devices")"
assert_eq "disks after mkdir attempts" "" "$(sorted_ls "$D/disks")"
vm_umount "$M"

say "errors OK"
