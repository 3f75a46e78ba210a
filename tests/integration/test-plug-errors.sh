#!/bin/bash
# Hotplug's errors, each with its errno, in bounded time, with a log line
# where the cause is outside virtmount, and nothing left half-plugged:
#   ENOENT  mkdir disks/<not a disk>; rmdir of a disk that is not plugged
#   EPERM   mkdir anywhere but disks/ (the plugged disk's own dir included)
#   EBUSY   rmdir while a file or directory under the disk is open (then,
#           closed, it works; a file just read and closed does not block
#           rmdir)
#   EEXIST  mkdir of a plugged disk
#   EROFS   mkdir inside a plugged filesystem
#   EIO     a disk whose image file is missing; an NBD disk whose server
#           does not answer (a closed port on 127.0.0.1): libvirt refuses
#           the attach, quickly; the next plug works
# The mount uses the default accel=auto: KVM does not work on these
# machines (its appliance hangs: ~30 s are spent finding that out), so the
# appliance must come up under TCG all the same, say so in .status and the
# log, and remember it in the state dir.  Unmounting leaves no qemu,
# connector or appliance domain.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
vmt_init

lv_start a
T=$VMT_DIR/trees I=$VMT_DIR/img
mkdir -p "$T" "$I"
img_tree "$T/good" good
img_ext4 "$I/good.raw" "$T/good" good 8M
closed_port=$(free_tcp_port)
lv_define a alpha \
    "$(disk_xml "$I/good.raw" raw vda virtio)" \
    "$(disk_xml "$I/does-not-exist.qcow2" qcow2 vdb virtio missing)" \
    "$(nbd_disk_xml vdc 127.0.0.1 "$closed_port" netdisk)"

M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a)"
LOG=${VMT_MOUNT_LOG[$M]}
D=$M/a/alpha
assert_listing "$D/devices" missing netdisk vda

appliances() { lv_virsh a list --all --name | grep '^virtmount-appliance' || true; }

# ---- errors that need no appliance
timed_errno ENOENT 5 mkdir "$D/disks/nosuch"
timed_errno ENOENT 5 mkdir "$M/a/nodomain/disks/vda"
for d in "$M" "$M/a" "$D" "$D/devices" "$D/devices/vda"; do
    assert_errno EPERM mkdir "$d/newdir"
done
assert_errno ENOENT rmdir "$D/disks/vda"
assert_eq "no appliance for refused plugs" "" "$(appliances)"

# ---- the first plug: accel=auto falls back to TCG
plug "$D/disks/vda"
say "first plug, accel=auto (KVM tried, then TCG): $PLUG_MS ms"
status=$(cat "$M/.status")
assert_grep ".status: tcg after auto" '^ *accel: tcg$' "$status"
grep -Eqi 'kvm.*(tcg|does not work)' "$LOG" || fail "no log line about falling back from KVM"
assert_eq "remembered accel" tcg "$(cat "$VMT_DIR/state/accel-a" 2>/dev/null)"
appliance=$(appliances)
[[ -n $appliance ]] || fail "no appliance domain after the first plug"
assert_eq "one appliance domain" 1 "$(wc -l <<<"$appliance")"
# The appliance's disks: its root and vda.
nblk() { lv_virsh a domblklist "$appliance" | sed '/^$/d' | wc -l; }
assert_eq "appliance disks with vda plugged" 2 "$(nblk)"

# ---- EEXIST, EPERM and EROFS around a plugged disk
timed_errno EEXIST 5 mkdir "$D/disks/vda"
assert_errno EPERM mkdir "$D/disks/vda/newdir"
assert_errno EROFS mkdir "$D/disks/vda/whole/newdir"
assert_errno EROFS create "$D/disks/vda/whole/newfile"
[[ $(errno_of rmdir "$D/disks/vda/whole") != OK ]] || fail "rmdir of disks/vda/whole succeeded"

# ---- EBUSY while a file is open; then rmdir works
exec 3< "$D/disks/vda/whole/hello.txt"
timed_errno EBUSY 10 rmdir "$D/disks/vda"
say "rmdir with a file open: EBUSY in $PLUG_MS ms"
assert_file_bytes "$D/devices/vda/plugged" $'1\n'
assert_tree_same "$T/good" "$D/disks/vda/whole" "vda after a refused unplug"
read -r line <&3
assert_eq "the open file still reads" "hello from good" "$line"
exec 3<&-
unplug "$D/disks/vda"
say "rmdir after close: $PLUG_MS ms"
assert_file_bytes "$D/devices/vda/plugged" $'0\n'
# A file read and closed just before rmdir (its RELEASE may come late).
plug "$D/disks/vda"
for i in 1 2 3; do
    cat "$D/disks/vda/whole/hello.txt" "$D/disks/vda/whole/data.bin" >/dev/null
    unplug "$D/disks/vda"
    say "rmdir right after reading a file: $PLUG_MS ms"
    plug "$D/disks/vda"
done
# A held directory is open too.
exec 3< <(exec python3 -c '
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
print(os.getpid(), flush=True)
time.sleep(60)' "$D/disks/vda/whole/sub")
read -r holder <&3 || fail "the directory holder did not start"
timed_errno EBUSY 10 rmdir "$D/disks/vda"
kill "$holder"
exec 3<&-
wait_for 10 "rmdir once the directory is closed" rmdir "$D/disks/vda"
say "rmdir after closing a directory: $WAITED_MS ms"
assert_eq "appliance disks with nothing plugged" 1 "$(nblk)"

# ---- EIO: the image file is missing
plug "$D/disks/vda"
timed_errno EIO 20 mkdir "$D/disks/missing"
say "plug of a missing image: EIO in $PLUG_MS ms"
grep -Eqi 'missing.*(no such file|cannot access|could not open)|does-not-exist' "$LOG" ||
    fail "no log line names libvirt's message for the missing image"
assert_file_bytes "$D/devices/missing/plugged" $'0\n'
assert_listing "$D/disks" vda
assert_eq "no stray attachment after EIO" 2 "$(nblk)"
assert_grep ".status after EIO" '^ *drives: 1 of 254$' "$(cat "$M/.status")"

# ---- EIO: the NBD server does not answer
timed_errno EIO 30 mkdir "$D/disks/netdisk"
say "plug of an unreachable NBD disk: EIO in $PLUG_MS ms"
grep -Eqi "netdisk.*(refused|connect|nbd)|127\.0\.0\.1.*$closed_port|:$closed_port" "$LOG" ||
    fail "no log line names libvirt's message for the unreachable NBD disk"
assert_file_bytes "$D/devices/netdisk/plugged" $'0\n'
assert_listing "$D/disks" vda
assert_eq "no stray attachment after EIO (nbd)" 2 "$(nblk)"

# ---- and then plugging still works, on the same appliance
timed_errno EIO 30 mkdir "$D/disks/missing"
unplug "$D/disks/vda"
plug "$D/disks/vda"
say "plug after the failures: $PLUG_MS ms"
assert_tree_same "$T/good" "$D/disks/vda/whole" "vda after failed plugs"
assert_eq "same appliance throughout" "$appliance" "$(appliances)"
status=$(cat "$M/.status")
assert_grep ".status: one plugged" '^ *plugged drives: 1$' "$status"
assert_grep ".status: drives" '^ *drives: 1 of 254$' "$status"

vm_umount "$M"
assert_nothing_left a "$VMT_DIR/state"
say "PASS"
