#!/bin/bash
# Changes made with virsh while mounted show within 1 s (virtmount follows
# libvirt's events): define, undefine, redefine (a disk added), rename,
# start, destroy.  Each name or file is looked at before the change too, so
# that a kernel cache (negative dentry, page cache) that is not invalidated
# shows up as a failure.
source "$(dirname "$0")/lib.sh"
vmt_init

lv_start a
I=$VMT_DIR/img
mkdir -p "$I"
mk_image "$I/old.raw" raw 8M
mk_image "$I/new.raw" raw 8M
mk_image "$I/extra.qcow2" qcow2 16M
lv_define a old "$(disk_xml "$I/old.raw" raw vda virtio)"
lv_define a idle

M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a)"
A=$M/a

listed() { grep -Fxq -- "$2" <<<"$(ls -A -- "$1")"; }
# present DIR NAME: listed by readdir and found by lookup.
present() { listed "$1" "$2" && [[ -d $1/$2 ]]; }
# absent DIR NAME: neither listed nor found.
absent() { ! listed "$1" "$2" && [[ ! -e $1/$2 ]]; }
# content_is FILE TEXT: FILE's content is TEXT and a newline.
content_is() { [[ "$(cat -- "$1"; echo x)" == "$2"$'\nx' ]]; }
# xml_current DOMAIN: domain.xml is what virsh dumpxml says now.
xml_current() { cmp -s -- "$A/$1/domain.xml" <(lv_virsh a dumpxml "$1"); }

assert_eq "domains at start" "$(printf 'idle\nold')" "$(sorted_ls "$A")"
assert_errno ENOENT stat "$A/new"        # leaves a negative dentry behind
assert_file_bytes "$A/idle/state" $'shut off\n'

# ---- define
domain_xml new "$(disk_xml "$I/new.raw" raw vda virtio)" > "$VMT_DIR/new.xml"
lv_virsh a define "$VMT_DIR/new.xml" >/dev/null
wait_for 1 "defined domain 'new' appears in $A" present "$A" new
say "defined 'new': visible after ${WAITED_MS} ms"
wait_for 1 "domain.xml of 'new' matches virsh dumpxml" xml_current new
assert_eq "devices of new" vda "$(sorted_ls "$A/new/devices")"

# ---- undefine (its directory was looked at, its files read)
cat "$A/old/domain.xml" "$A/old/state" >/dev/null
lv_virsh a undefine old >/dev/null
wait_for 1 "undefined domain 'old' disappears from $A" absent "$A" old
say "undefined 'old': gone after ${WAITED_MS} ms"

# ---- start and destroy
lv_virsh a start idle >/dev/null
wait_for 1 "state of idle becomes running" content_is "$A/idle/state" running
say "started 'idle': running after ${WAITED_MS} ms"
wait_for 1 "domain.xml of idle (running) matches virsh dumpxml" xml_current idle
lv_virsh a destroy idle >/dev/null
wait_for 1 "state of idle becomes shut off" content_is "$A/idle/state" "shut off"
say "destroyed 'idle': shut off after ${WAITED_MS} ms"
wait_for 1 "domain.xml of idle (shut off) matches virsh dumpxml" xml_current idle

# ---- the definition changed: redefined with one more disk.  (Not with
# `virsh attach-device --config`: on a shut-off domain libvirt 9.0 emits no
# event for that, so nothing event-driven can see it.)
assert_errno ENOENT stat "$A/new/devices/extra-disk"
lv_redefine a new "$(disk_xml "$I/new.raw" raw vda virtio)" \
    "$(disk_xml "$I/extra.qcow2" qcow2 vdb virtio extra-disk)"
wait_for 1 "disk extra-disk appears in new/devices after redefining" \
    present "$A/new/devices" extra-disk
wait_for 1 "domain.xml of new matches virsh dumpxml after redefining" xml_current new
assert_file_bytes "$A/new/devices/extra-disk/size" $'16777216\n'
assert_file_bytes "$A/new/devices/extra-disk/format" $'qcow2\n'

# ---- rename: the old name goes, the new one comes
lv_virsh a domrename new renamed >/dev/null
wait_for 1 "renamed domain appears" present "$A" renamed
wait_for 1 "old name of renamed domain disappears" absent "$A" new
assert_eq "domains at the end" "$(printf 'idle\nrenamed')" "$(sorted_ls "$A")"
assert_eq "devices of renamed" "$(printf 'extra-disk\nvda')" "$(sorted_ls "$A/renamed/devices")"

vm_umount "$M"
say "live OK"
