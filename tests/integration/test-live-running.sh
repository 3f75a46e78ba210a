#!/bin/bash
# Running guests, in one appliance (one boot).  run1 idles in SeaBIOS with
# a qcow2 disk (vda), a raw disk (vdb, its journal in need of recovery) and
# a read-only raw disk (vdc), each one ext4 filesystem of known content:
#  - a backup job of someone else's runs on run1: mkdir of vda is EBUSY
#    (within libvirt's 30 s job-lock timeout), with libvirt's message in
#    the log, and leaves nothing; vdc
#    (read-only: no job needed) plugs all the same, attached directly;
#  - that job ended: vda then vdb plug through one backup job of
#    virtmount's (virsh backup-dumpxml: one socket, both disks), attached
#    read-only as NBD exports; both read right (files and whole image);
#  - the point in time: the guest's qemu writes to vdb after the plug; the
#    image file changes, the plugged vdb does not;
#  - unplugging vda alone keeps vdb readable and the job running; the last
#    unplug ends it (domjobinfo: None) and removes socket and scratch files;
#  - the guest runs throughout: no lifecycle event but those the test
#    causes, domstate running at every step;
#  - destroyed while plugged: its job plugs drop within seconds, an open
#    file gets EIO, nothing hangs, vdc stays; plugged again it is a plain
#    attach, and while plugged the domain cannot start (the image lock);
#  - a shut-off domain with a network (NBD) disk plugged is started: the
#    plug drops (open file: EIO); plugged again, it comes through a backup
#    job (an explicit scratch for a network disk);
#  - unmounted with a running domain's disk still plugged: no job, socket,
#    scratch file, appliance domain, qemu or connector remains.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
source "$(dirname "$0")/live.sh"
vmt_init
live_init

DROP=15     # seconds allowed for a plug to drop after its domain stops/starts

lv_start a
T=$VMT_DIR/trees I=$VMT_DIR/img
mkdir -p "$T" "$I"
for t in qc raw ro net; do img_tree "$T/$t" "$t"; done
# Files larger than any read-ahead, so that a read after a drop reaches
# virtmount rather than the page cache.
head -c 8M /dev/urandom > "$T/raw/big.bin"
head -c 3M /dev/urandom > "$T/net/big.bin"
img_ext4 "$I/qc.raw" "$T/qc" qc 16M
qemu-img convert -q -f raw -O qcow2 "$I/qc.raw" "$I/qc.qcow2" || fail "qemu-img convert"
# vdb's journal needs recovery, as a running guest's often does: it must
# be mounted without replay (the drive is read-only).
img_dirty "$I/raw.raw" "$T/raw" raw
cp --sparse=always "$I/raw.raw" "$I/raw.orig"
img_ext4 "$I/ro.raw" "$T/ro" ro 8M
img_ext4 "$I/net.raw" "$T/net" net 8M
NBDSOCK=$VMT_DIR/nbd.sock
live_nbd_serve "$I/net.raw" "$NBDSOCK"

lv_define a run1 \
    "$(disk_xml "$I/qc.qcow2" qcow2 vda virtio)" \
    "$(disk_xml "$I/raw.raw" raw vdb virtio)" \
    "$(disk_xml "$I/ro.raw" raw vdc virtio "" ro)"
lv_define a net1 "$(nbd_unix_disk_xml vda "$NBDSOCK")"
U1=$(live_uuid a run1)
live_events a run1
live_start a run1
# (a start is "Resumed", then "Started": the events that precede the test)
wait_for 5 "the event recorder sees run1 start" grep -q Started "$VMT_DIR/events-a-run1"
events_at_start=$(live_events_of a run1 | wc -l)
sums_qc=$(md5sum < "$I/qc.qcow2")
sums_ro=$(md5sum < "$I/ro.raw")
running() { live_state_is a run1 running || fail "run1 is not running: $(lv_virsh a domstate run1 --reason)"; }

M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg"
LOG=${VMT_MOUNT_LOG[$M]}
D=$M/a/run1
assert_file_bytes "$D/state" $'running\n'
assert_listing "$D/devices" vda vdb vdc

# ---- someone else's backup job: EBUSY, nothing left
cat > "$VMT_DIR/own-backup.xml" <<EOF
<domainbackup mode='pull'>
  <server transport='unix' socket='$VMT_DIR/own.sock'/>
  <disks>
    <disk name='vda' backup='yes' type='file'><scratch file='$VMT_DIR/own-vda.qcow2'/></disk>
    <disk name='vdb' backup='no'/>
    <disk name='vdc' backup='no'/>
  </disks>
</domainbackup>
EOF
lv_virsh a backup-begin run1 "$VMT_DIR/own-backup.xml" >/dev/null || fail "virsh backup-begin (ours) failed"
own_job=$(live_backup_xml a run1)
# libvirt waits 30 s for the domain's job lock before it refuses.
timed_errno EBUSY 45 mkdir "$D/disks/vda"
say "mkdir with another backup job running: EBUSY in $PLUG_MS ms"
grep -Ei 'backup job.*run1|run1.*backup' "$LOG" | grep -Ei 'job|already|running' >/dev/null ||
    fail "no log line with libvirt's reason for EBUSY"
say "log: $(grep -Ei 'run1' "$LOG" | tail -n 1)"
assert_listing "$D/disks"
assert_file_bytes "$D/devices/vda/plugged" $'0\n'
assert_eq "their job untouched" "$own_job" "$(live_backup_xml a run1)"
assert_eq "no files of ours for run1" "" "$(live_files_of "$U1")"
assert_eq "no appliance for a refused plug" "" \
    "$(lv_virsh a list --all --name | grep '^virtmount-appliance' || true)"

# A read-only disk needs no job: it plugs while theirs runs (first boot).
plug "$D/disks/vdc"
say "plug read-only vdc beside another job (appliance boot): $PLUG_MS ms"
assert_tree_same "$T/ro" "$D/disks/vdc/whole" "read-only disk of a running domain"
appliance=$(live_appliances "$M" | head -n 1)
[[ -n $appliance ]] || fail "no appliance in .status"
axml=$(live_appliance_xml a "$appliance")
assert_grep "vdc attached directly (its image file)" "<source file='$I/ro.raw'" "$axml"
assert_eq "their job still the only one" "$own_job" "$(live_backup_xml a run1)"
lv_virsh a domjobabort run1 >/dev/null || fail "virsh domjobabort (ours) failed"
wait_for 10 "our job ends" live_job_none a run1
running

# ---- vda, then vdb: one job of virtmount's
plug "$D/disks/vda"
say "plug vda of running run1 (backup job started): $PLUG_MS ms"
running
job1=$(live_backup_xml a run1) || fail "no backup job after plugging vda: $job1"
echo "$job1"
sock=$(sed -n "s/^.*<server transport='unix' socket='\([^']*\)'.*$/\1/p" <<<"$job1")
[[ $sock =~ ^/var/tmp/virtmount-[0-9a-f]{8}-${U1:0:8}-nbd\.sock$ ]] ||
    fail "the job's socket is not virtmount's: '$sock'"
[[ -S $sock ]] || fail "the job's socket $sock does not exist"
assert_grep "job: pull mode" "<domainbackup mode='pull'" "$job1"
assert_grep "job covers vda" "<disk name='vda' backup='yes'" "$job1"
assert_grep "job covers vdb" "<disk name='vdb' backup='yes'" "$job1"
assert_grep "job skips read-only vdc" "<disk name='vdc' backup='no'" "$job1"
for t in vda vdb; do
    [[ -f /var/tmp/virtmount-${sock:19:8}-${U1:0:8}-$t.qcow2 ]] ||
        fail "no scratch file for $t: $(live_files_of "$U1")"
done
assert_grep "domjobinfo: a backup" 'Backup' "$(lv_virsh a domjobinfo run1)"
axml=$(live_appliance_xml a "$appliance")
assert_grep "vda attached as the NBD export" "<source protocol='nbd' name='vda'" "$axml"
grep -A8 "<source protocol='nbd' name='vda'" <<<"$axml" | grep -q '<readonly/>' ||
    fail "the NBD export of vda is not attached read-only: $axml"
grep -A3 "<source protocol='nbd' name='vda'" <<<"$axml" | grep -Fq "socket='$sock'" ||
    fail "the NBD export of vda is not on the job's socket: $axml"
assert_listing "$D/disks/vda" image info whole
assert_file_bytes "$D/disks/vda/whole/hello.txt" $'hello from qc\n'

plug "$D/disks/vdb"
say "plug vdb (same job): $PLUG_MS ms"
running
assert_eq "one job for vda and vdb (backup-dumpxml unchanged)" "$job1" "$(live_backup_xml a run1)"
assert_eq "still one appliance" "$appliance" "$(live_appliances "$M")"
assert_grep ".status: three drives" '^ *plugged drives: 3$' "$(cat "$M/.status")"

# ---- the point in time: the guest writes to vdb (bytes 512-1023, unused
# by ext4 and by the boot sector SeaBIOS reads); the file changes, the
# plugged vdb does not.
live_qemu_write a run1 virtio-disk1 512 512 0x55
cmp -s -n 1024 "$I/raw.raw" "$I/raw.orig" && fail "the guest's write did not reach raw.raw"
running
assert_same_file "$D/disks/vdb/image" "$I/raw.orig" "vdb's image (point in time before the guest's write)"
assert_tree_same "$T/raw" "$D/disks/vdb/whole" "raw disk of a running domain"
assert_same_file "$D/disks/vda/image" "$I/qc.raw" "vda's image (qcow2 read as its raw content)"
assert_tree_same "$T/qc" "$D/disks/vda/whole" "qcow2 disk of a running domain"
say "vda and vdb read right, vdb at its point in time"

# ---- unplug vda alone: vdb still reads, the job goes on
unplug "$D/disks/vda"
say "unplug vda: $PLUG_MS ms"
assert_listing "$D/disks" vdb vdc
assert_eq "the job goes on for vdb" "$job1" "$(live_backup_xml a run1)"
[[ -S $sock ]] || fail "the job's socket went with vda"
assert_tree_same "$T/raw" "$D/disks/vdb/whole" "vdb after vda was unplugged"
cmp -s -- "$D/disks/vdb/image" "$I/raw.orig" || fail "vdb's image changed after vda was unplugged"
running

# ---- the last job plug: the job ends, its files go
unplug "$D/disks/vdb"
say "unplug vdb (job ends): $PLUG_MS ms"
wait_for 5 "no job on run1 after the last unplug" live_job_none a run1
lv_virsh a backup-dumpxml run1 >/dev/null 2>&1 && fail "backup-dumpxml still shows a job"
assert_eq "no socket or scratch file left" "" "$(live_files_of "$U1")"
assert_listing "$D/disks" vdc
assert_tree_same "$T/ro" "$D/disks/vdc/whole" "vdc, with no job"
running

# ---- plug again (a new job, a new point in time), then destroy run1
plug "$D/disks/vda"
plug "$D/disks/vdb"
say "vda, vdb plugged again: $PLUG_MS ms"
assert_same_file "$D/disks/vdb/image" "$I/raw.raw" "vdb's image at the new point in time"
running
states=$(live_events_of a run1 | tail -n +$((events_at_start + 1)))
[[ -z $states ]] || fail "run1 had lifecycle events while plugged (paused?): $states"
say "run1 had no lifecycle event since its start: never paused"

exec 7< "$D/disks/vdb/whole/big.bin"
head -c 100 <&7 >/dev/null
lv_virsh a destroy run1 >/dev/null
t0=$(now_us)
gone() { [[ ! -e $D/disks/vda && ! -e $D/disks/vdb ]]; }
wait_for $DROP "run1's job plugs drop after destroy" gone
say "destroyed: plugs dropped after $(( ($(now_us) - t0) / 1000 )) ms"
assert_listing "$D/disks" vdc
assert_file_bytes "$D/devices/vdb/plugged" $'0\n'
rc=0
err=$(timeout 20 dd bs=4096 count=2 skip=7M iflag=skip_bytes <&7 2>&1 >/dev/null) || rc=$?
[[ $rc -ne 124 ]] || fail "reading an open file of a dropped plug hangs"
[[ $rc -ne 0 ]] || fail "reading an open file of a dropped plug succeeded"
grep -q 'Input/output error' <<<"$err" || fail "open file of a dropped plug: not EIO: $err"
exec 7<&-
timed_errno ENOENT 10 stat "$D/disks/vda/whole/hello.txt"
wait_for 10 "a log line about run1's plugs being dropped" grep -Eq 'vdb.*dropped.*stopped' "$LOG"
wait_for 10 "run1's socket and scratch files go" live_no_files "$U1"
assert_tree_same "$T/ro" "$D/disks/vdc/whole" "vdc (no job) after run1 stopped"

# Shut off now: a plain attach of the image itself; run1 cannot start.
plug "$D/disks/vdb"
say "plug vdb of shut-off run1: $PLUG_MS ms"
axml=$(live_appliance_xml a "$appliance")
assert_grep "vdb attached directly now" "<source file='$I/raw.raw'" "$axml"
assert_tree_same "$T/raw" "$D/disks/vdb/whole" "vdb of the shut-off domain"
err=$(lv_virsh a start run1 2>&1) && fail "run1 started while its disk is plugged"
grep -qi 'lock' <<<"$err" || fail "starting run1: not refused on the image lock: $err"
say "start refused: $(grep -i lock <<<"$err" | head -n 1)"
unplug "$D/disks/vdb"
unplug "$D/disks/vdc"

# ---- a shut-off domain's network disk: dropped when it starts
N=$M/a/net1
plug "$N/disks/vda"
say "plug net1's NBD disk (shut off): $PLUG_MS ms"
assert_tree_same "$T/net" "$N/disks/vda/whole" "NBD disk of a shut-off domain"
exec 8< "$N/disks/vda/whole/big.bin"
head -c 100 <&8 >/dev/null
live_start a net1
t0=$(now_us)
wait_for $DROP "net1's NBD plug drops when net1 starts" test ! -e "$N/disks/vda"
say "net1 started: its plug dropped after $(( ($(now_us) - t0) / 1000 )) ms"
rc=0
err=$(timeout 20 dd bs=4096 count=2 skip=2800K iflag=skip_bytes <&8 2>&1 >/dev/null) || rc=$?
[[ $rc -ne 124 ]] || fail "reading an open file of a dropped network plug hangs"
grep -q 'Input/output error' <<<"$err" || fail "open file of a dropped network plug: not EIO (rc $rc): $err"
exec 8<&-
wait_for 10 "a log line about net1's plug being dropped" grep -Eq 'vda.*dropped.*started' "$LOG"
# Running now: through a backup job, with a scratch file for a network disk.
plug "$N/disks/vda"
say "plug net1's NBD disk (running, backup job): $PLUG_MS ms"
jobn=$(live_backup_xml a net1) || fail "no backup job on net1: $jobn"
assert_grep "net1's job covers its network disk" "<disk name='vda' backup='yes'" "$jobn"
assert_tree_same "$T/net" "$N/disks/vda/whole" "NBD disk of a running domain"
unplug "$N/disks/vda"
wait_for 5 "no job on net1" live_job_none a net1
live_assert_clean a net1
lv_virsh a destroy net1 >/dev/null

# ---- unmount with a running domain's disk plugged: nothing remains
live_start a run1
plug "$D/disks/vda"
assert_tree_same "$T/qc" "$D/disks/vda/whole" "vda once more"
[[ -n $(live_files_of "$U1") ]] || fail "no socket for run1's new job"
vm_umount "$M"
live_assert_nothing_left a "$VMT_DIR/state" "$LOG"
wait_for 5 "no job on run1 after unmount" live_job_none a run1
live_assert_clean a run1 net1
running
assert_eq "qcow2 image unchanged by plugging" "$sums_qc" "$(md5sum < "$I/qc.qcow2")"
assert_eq "read-only image unchanged" "$sums_ro" "$(md5sum < "$I/ro.raw")"
dumpe2fs -h "$I/raw.raw" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery' ||
    fail "raw.raw's journal was replayed (the image was written)"
say "PASS"
