#!/bin/bash
# A remote host: "far" is a second libvirtd reached over loopback TCP
# (qemu+tcp://127.0.0.1:PORT/system), in a mount namespace where
# virtmount's state dir (the appliance's kernel, initrd and root), its
# helpers, libguestfs's appliance and /boot are empty directories: only
# what travels over the libvirt connection can work there.  "near" is a
# local daemon on a unix socket.
#  - mount 1: far's running guest (a qcow2 and a raw disk) plugs through a
#    backup job on far, into an appliance booted on far from files shipped
#    into far's storage pool "virtmount" (logged once); both disks read
#    right, the guest keeps running; unplugged, the job ends; unmounted,
#    nothing of it remains on far but the pool's four volumes;
#  - mount 2 (-o appliances=2): the shipped appliance is reused (no upload,
#    volumes untouched); far's vda plugs and reads, near's disk too; a
#    second far plug boots far's second appliance, and far's daemon is
#    stopped in the middle of it: that mkdir fails, in bounded time, with
#    a log line; near's disk still reads, near's listing works; far comes
#    back; unmounted, no appliance, job or file of ours remains on either.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
source "$(dirname "$0")/live.sh"
vmt_init
live_init

NOTICE=${VMT_REMOTE_NOTICE:-30}   # seconds for a plug to fail once its host's daemon is gone

STATE=$VMT_DIR/state
HELPERS=$(cd "$(dirname "$VIRTMOUNT")/.." && pwd)/appliance
mkdir -p "$STATE"
hide=(--hide "$STATE" --hide /boot --hide "$HELPERS")
[[ -d /usr/lib/x86_64-linux-gnu/guestfs ]] && hide+=(--hide /usr/lib/x86_64-linux-gnu/guestfs)
lv_start a
lv_start b --tcp "${hide[@]}"
NEAR=$(lv_uri a) FAR=$(lv_tcp_uri b)
POOL=${LV_BASE[b]}/lib/virtmount       # far's /var/lib/libvirt/virtmount, seen from here

T=$VMT_DIR/trees I=$VMT_DIR/img
mkdir -p "$T" "$I"
for t in fqc fraw near; do img_tree "$T/$t" "$t"; done
head -c 8M /dev/urandom > "$T/fqc/big.bin"    # more than any read-ahead
img_ext4 "$I/fqc.raw" "$T/fqc" fqc 16M
qemu-img convert -q -f raw -O qcow2 "$I/fqc.raw" "$I/fqc.qcow2" || fail "qemu-img convert"
img_ext4 "$I/fraw.raw" "$T/fraw" fraw 16M
img_ext4 "$I/near.raw" "$T/near" near 8M
lv_define b farrun \
    "$(disk_xml "$I/fqc.qcow2" qcow2 vda virtio)" \
    "$(disk_xml "$I/fraw.raw" raw vdb virtio)"
lv_define a nearoff "$(disk_xml "$I/near.raw" raw vda virtio)"
UF=$(live_uuid b farrun)
live_start b farrun
running() { live_state_is b farrun running || fail "farrun is not running: $(lv_virsh b domstate farrun --reason)"; }
far_volumes() { lv_virsh b vol-list virtmount | awk 'NF { print $1 }' | sort; }
far_appliances() { lv_virsh b list --all --name | grep '^virtmount-appliance' || true; }
near_appliances() { lv_virsh a list --all --name | grep '^virtmount-appliance' || true; }

M=$VMT_DIR/mnt
opts="host=near=$NEAR,host=far=$FAR,accel=tcg"

# ---- mount 1: plug, read, unplug on far
vm_mount "$M" "$opts"
LOG=${VMT_MOUNT_LOG[$M]}
F=$M/far/farrun
assert_file_bytes "$F/state" $'running\n'
# What far's daemon sees of ours: nothing.
[[ -n $(ls -A "$STATE") ]] || fail "virtmount's state dir is empty here (test broken)"
[[ -z $(live_ns_ls b "$STATE") ]] || fail "far's daemon sees virtmount's state dir: $(live_ns_ls b "$STATE")"

plug "$F/disks/vda"
say "first plug on far (appliance built, shipped, booted there; backup job): $PLUG_MS ms"
running
assert_eq "shipping logged once" 1 "$(live_count 'shipping the appliance' "$LOG")"
say "log: $(grep 'shipping the appliance' "$LOG")"
gen=$(sed -n 's/^.*shipping the appliance (generation \([0-9a-f]*\)).*$/\1/p' "$LOG")
[[ -n $gen ]] || fail "no generation in the shipping line"
live_ns_sees b "$STATE/appliance/$gen/root" && fail "far's daemon sees the appliance's root"
[[ -f $STATE/appliance/$gen/root ]] || fail "the local appliance is not at $STATE/appliance/$gen"
vols=$(far_volumes)
echo "$vols"
for v in kernel initrd root complete; do
    grep -qx "$gen-$v" <<<"$vols" || fail "far's pool has no volume $gen-$v: $vols"
done
# What arrived is what was built (the root: sparse, holes kept).
cmp -s "$POOL/$gen-kernel" "$STATE/appliance/$gen/kernel" || fail "the shipped kernel differs"
cmp -s "$POOL/$gen-initrd" "$STATE/appliance/$gen/initrd" || fail "the shipped initrd differs"
assert_eq "size of the shipped root" "$(stat -c %s "$STATE/appliance/$gen/root")" "$(stat -c %s "$POOL/$gen-root")"
local_kb=$(du -k "$STATE/appliance/$gen/root" | cut -f1)
far_kb=$(du -k "$POOL/$gen-root" | cut -f1)
(( far_kb <= local_kb + local_kb / 10 )) ||
    fail "the shipped root takes ${far_kb} KiB on far, ${local_kb} KiB here: holes not kept"
say "shipped root: ${far_kb} KiB allocated (${local_kb} KiB here)"
appliance=$(far_appliances)
[[ $(wc -l <<<"$appliance") -eq 1 && -n $appliance ]] || fail "not one appliance domain on far: $appliance"
axml=$(lv_virsh b dumpxml "$appliance")
assert_grep "far's appliance boots the shipped kernel" "<kernel>/var/lib/libvirt/virtmount/$gen-kernel</kernel>" "$axml"
grep -Fq -- "$STATE" <<<"$axml" && fail "far's appliance XML names a path of virtmount's state dir: $axml"
grep -Fq -- "$HELPERS" <<<"$axml" && fail "far's appliance XML names a path of virtmount's helpers"
assert_eq "no appliance on near (nothing plugged there)" "" "$(near_appliances)"
# The backup job and its export are on far, beside that appliance.
job=$(live_backup_xml b farrun) || fail "no backup job on farrun: $job"
sock=$(sed -n "s/^.*<server transport='unix' socket='\([^']*\)'.*$/\1/p" <<<"$job")
[[ $sock =~ ^/var/tmp/virtmount-[0-9a-f]{8}-${UF:0:8}-nbd\.sock$ ]] || fail "far's job socket: '$sock'"
grep -A3 "<source protocol='nbd' name='vda'" <<<"$axml" | grep -Fq "socket='$sock'" ||
    fail "vda is not attached from the job's export on far: $axml"
assert_tree_same "$T/fqc" "$F/disks/vda/whole" "far's qcow2 disk"
plug "$F/disks/vdb"
say "plug far's vdb (same job): $PLUG_MS ms"
assert_eq "one job for both" "$job" "$(live_backup_xml b farrun)"
assert_tree_same "$T/fraw" "$F/disks/vdb/whole" "far's raw disk"
assert_same_file "$F/disks/vdb/image" "$I/fraw.raw" "far's vdb image, over libvirt"
assert_same_file "$F/disks/vda/image" "$I/fqc.raw" "far's vda image (qcow2), over libvirt"
running
status=$(status_section "$M" far "$FAR")
assert_grep ".status far: two drives" '^ *plugged drives: 2$' "$status"
assert_grep ".status far: its appliance" "^ *appliance $appliance\$" "$status"
unplug "$F/disks/vda"
assert_tree_same "$T/fraw" "$F/disks/vdb/whole" "far's vdb after vda's unplug"
unplug "$F/disks/vdb"
wait_for 10 "no job on farrun after the last unplug" live_job_none b farrun
wait_for 10 "no socket or scratch file of farrun's job" live_no_files "$UF"
running
vm_umount "$M"
live_assert_nothing_left b "$STATE" "$LOG"
live_assert_nothing_left a "$STATE" "$LOG"
live_assert_clean b farrun
running
vols_after=$(far_volumes)
assert_eq "far's pool after unmount: the four volumes (no overlay left)" \
    "$(printf '%s\n' "$gen-complete" "$gen-initrd" "$gen-kernel" "$gen-root")" "$vols_after"
# (a running appliance's overlay, root.TRANSIENT-<name>, aside)
pool_files() { (cd "$POOL" && stat -c '%n %s %Y' -- * | grep -v '\.TRANSIENT-' | sort); }
pool_sums=$(pool_files)

# ---- mount 2: the upload is reused; far's daemon stops in mid-plug
vm_mount "$M" "$opts,appliances=2"
from=$(grep -n '^=== ' "$LOG" | tail -n 1 | cut -d: -f1)
log2() { tail -n +"$from" "$LOG"; }
N=$M/near/nearoff
mkdir -- "$N/disks/vda" 2>"$VMT_DIR/near-plug.err" &
near_plug=$!
plug "$F/disks/vda"
say "first plug on far, mount 2 (no upload; boot there): $PLUG_MS ms"
wait "$near_plug" || fail "plug of near's disk failed: $(cat "$VMT_DIR/near-plug.err")"
grep -q 'shipping the appliance' <<<"$(log2)" && fail "the appliance was shipped again: $(log2 | grep shipping)"
assert_eq "far's pool untouched by mount 2" "$pool_sums" "$(pool_files)"
assert_tree_same "$T/fqc" "$F/disks/vda/whole" "far's qcow2 disk, mount 2"
assert_tree_same "$T/near" "$N/disks/vda/whole" "near's disk"
running

# A file of far's vda held open across what follows.
exec 7< "$F/disks/vda/whole/big.bin"
head -c 100 <&7 >/dev/null

# A second far plug goes to a second appliance on far (appliances=2): a
# boot, long enough to stop far's daemon in the middle of it.
first=$(far_appliances)
( errno_of mkdir "$F/disks/vdb" > "$VMT_DIR/mid-plug.errno" ) &
mid=$!
second_boots() { far_appliances | grep -vxF -- "$first" | grep -q .; }
wait_for 60 "far's second appliance starts booting" second_boots
say "far's second appliance: $(far_appliances | grep -vxF -- "$first")"
sleep 1
live_lv_kill b
t0=$(now_us)

# near is unaffected, while far's plug is still in the air.
assert_tree_same "$T/near" "$N/disks/vda/whole" "near's disk while far is down"
assert_file_bytes "$N/devices/vda/plugged" $'1\n'
assert_eq "near's listing" nearoff "$(sorted_ls "$M/near")"
near_status=$(status_section "$M" near "$NEAR")
grep -q 'down:' <<<"$near_status" && fail ".status says near is down: $near_status"
unreachable() { [[ $(errno_of listdir "$1") == EHOSTUNREACH ]]; }
wait_for 15 "far's listing fails with EHOSTUNREACH" unreachable "$M/far"
say "near unaffected; far unreachable after $(( ($(now_us) - t0) / 1000 )) ms"

# The open file of far's plugged vda: an error, not a hang.
rc=0
err=$(timeout $NOTICE dd bs=4096 count=2 skip=7M iflag=skip_bytes <&7 2>&1 >/dev/null) || rc=$?
exec 7<&-
[[ $rc -ne 124 ]] || fail "reading an open file of far's disk hangs with far's daemon gone"
[[ $rc -ne 0 ]] || fail "an open file of far's disk still reads with far's daemon gone"
grep -q 'Input/output error' <<<"$err" || fail "open file of far's disk with far's daemon gone: not EIO: $err"
say "open file of far's vda with far's daemon gone: $(head -n 1 <<<"$err")"

# The plug in the air: an error, in bounded time, with a log line.
wait_pid_gone "$mid" $NOTICE ||
    fail "mkdir on far does not return $NOTICE s after its daemon stopped ($(tail -n 1 "$LOG"))"
wait "$mid" || true
got=$(cat "$VMT_DIR/mid-plug.errno")
say "mkdir on far with its daemon stopped in mid-plug: $got after $(( ($(now_us) - t0) / 1000 )) ms"
[[ $got != OK ]] || fail "mkdir on far succeeded with its daemon stopped"
[[ $got =~ ^E[A-Z]+$ ]] || fail "mkdir on far: not an errno: $got"
grep -E 'vdb' <<<"$(log2)" | grep -Eqi 'cannot|fail|error|lost|closed|down' ||
    fail "no log line about the failed plug of far's vdb"
say "log: $(log2 | grep -E 'vdb' | tail -n 1)"

# far comes back: its disks are plugged or not, never listed but broken;
# nothing of ours is left there once unmounted.
live_lv_restart b
wait_for 20 "far lists its domains again" test -d "$M/far/farrun"
left=$(timeout 20 ls -A "$F/disks") || fail "listing far's disks/ after far came back: failed or hung"
say "far's disks/ after far came back: '$(echo $left)'"
for d in $left; do
    case $d in
        vda) t=fqc ;;
        vdb) t=fraw ;;
        *) fail "far's disks/ lists $d" ;;
    esac
    out=$(timeout 30 diff -r --no-dereference -x lost+found -- "$T/$t" "$F/disks/$d/whole" 2>&1) ||
        fail "far's $d is listed after far came back, but does not read right: $(head -n 5 <<<"$out")"
done
assert_tree_same "$T/near" "$N/disks/vda/whole" "near's disk after far came back"
vm_umount "$M"
live_assert_nothing_left a "$STATE" "$LOG"
live_assert_nothing_left b "$STATE" "$LOG"
wait_for 10 "no job on farrun after unmount" live_job_none b farrun
live_assert_clean b farrun
running
say "PASS"
