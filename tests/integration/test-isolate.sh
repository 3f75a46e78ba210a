#!/bin/bash
# Which appliance a plugged disk goes to, when a host may have several.
#  - -o isolate=domain: d1's and d2's disks are plugged at once, into two
#    appliances (.status: virtmount-appliance-...-0 and -1, "drives: 1 of
#    254" each), each holding its own domain's disk only (libvirt's view
#    of the appliance domains); both read right; d1's second disk joins
#    d1's appliance, no third one starts;
#  - -o appliances=2: two disks of one domain go to two appliances; both
#    read right, read at the same time (how fast is bench/plug's business,
#    not asserted here); a third disk goes to the least loaded of the two,
#    no third appliance starts;
#  - after each unmount nothing remains.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
source "$(dirname "$0")/live.sh"
vmt_init
live_init

lv_start a
T=$VMT_DIR/trees I=$VMT_DIR/img
mkdir -p "$T" "$I"
for t in d1a d1b d2a; do
    img_tree "$T/$t" "$t"
    head -c 4M /dev/urandom > "$T/$t/big.bin"
    img_ext4 "$I/$t.raw" "$T/$t" "$t" 16M
done
lv_define a d1 "$(disk_xml "$I/d1a.raw" raw vda virtio)" "$(disk_xml "$I/d1b.raw" raw vdb virtio)"
lv_define a d2 "$(disk_xml "$I/d2a.raw" raw vda virtio)"

M=$VMT_DIR/mnt
appliance_domains() { lv_virsh a list --name | grep '^virtmount-appliance' | sort || true; }
# holds APPLIANCE IMAGE: libvirt's definition of the appliance has IMAGE.
holds() { local x; x=$(lv_virsh a dumpxml "$1") && grep -Fq "<source file='$2'" <<<"$x"; }
guest_disks() { lv_virsh a domblklist "$1" | grep -c "$I/" || true; }

# plug_both DIR1 DIR2: two plugs at once: side by side when in two
# domains; in one domain's disks/ the kernel runs them one after the other
# (a mkdir holds its parent directory's lock until it returns).
plug_both() {
    local t0 p1 p2
    t0=$(now_us)
    mkdir -- "$1" 2>"$VMT_DIR/plug1.err" & p1=$!
    mkdir -- "$2" 2>"$VMT_DIR/plug2.err" & p2=$!
    wait "$p1" || fail "plug $1 failed: $(cat "$VMT_DIR/plug1.err")"
    wait "$p2" || fail "plug $2 failed: $(cat "$VMT_DIR/plug2.err")"
    say "plugged $(basename "$(dirname "$(dirname "$1")")")/$(basename "$1") and $(basename "$(dirname "$(dirname "$2")")")/$(basename "$2") at once: $(( ($(now_us) - t0) / 1000 )) ms"
}

# read_both DIR1 TREE1 DIR2 TREE2: compare both disks with their trees,
# the two comparisons running at the same time.
read_both() {
    local p1 p2
    ( assert_tree_same "$2" "$1" "$1" ) & p1=$!
    ( assert_tree_same "$4" "$3" "$3" ) & p2=$!
    wait "$p1" || fail "$1 does not read right (read beside $3)"
    wait "$p2" || fail "$3 does not read right (read beside $1)"
}

# ---- isolate=domain
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg,isolate=domain"
LOG=${VMT_MOUNT_LOG[$M]}
assert_eq "no appliance before the first plug" "" "$(appliance_domains)"
plug_both "$M/a/d1/disks/vda" "$M/a/d2/disks/vda"
status=$(cat "$M/.status")
echo "$status"
names=$(live_appliances "$M")
assert_eq "two appliances in .status" 2 "$(wc -l <<<"$names")"
grep -q -- '-0$' <<<"$names" && grep -q -- '-1$' <<<"$names" ||
    fail "the appliances are not numbered 0 and 1: $names"
for a in $names; do
    assert_eq "drives of $a" "1 of 254" "$(live_drives_of "$M" "$a")"
done
assert_eq "libvirt runs the two" "$(sort <<<"$names")" "$(appliance_domains)"
a1='' a2=''
for a in $names; do
    holds "$a" "$I/d1a.raw" && a1=$a
    holds "$a" "$I/d2a.raw" && a2=$a
done
[[ -n $a1 && -n $a2 && $a1 != "$a2" ]] || fail "d1's and d2's disks are not in two appliances (d1: '$a1', d2: '$a2')"
assert_eq "disks in d1's appliance" 1 "$(guest_disks "$a1")"
assert_eq "disks in d2's appliance" 1 "$(guest_disks "$a2")"
say "d1 in $a1, d2 in $a2"
read_both "$M/a/d1/disks/vda/whole" "$T/d1a" "$M/a/d2/disks/vda/whole" "$T/d2a"
# d1's second disk: d1's appliance, no third one.
plug "$M/a/d1/disks/vdb"
say "plug d1/vdb (d1's appliance running): $PLUG_MS ms"
holds "$a1" "$I/d1b.raw" || fail "d1/vdb is not in d1's appliance $a1"
holds "$a2" "$I/d1b.raw" && fail "d1/vdb went into d2's appliance"
assert_eq "drives of d1's appliance" "2 of 254" "$(live_drives_of "$M" "$a1")"
assert_eq "drives of d2's appliance" "1 of 254" "$(live_drives_of "$M" "$a2")"
assert_eq "still two appliances" "$(sort <<<"$names")" "$(appliance_domains)"
assert_tree_same "$T/d1b" "$M/a/d1/disks/vdb/whole" "d1/vdb"
vm_umount "$M"
live_assert_nothing_left a "$VMT_DIR/state" "$LOG"

# ---- appliances=2: two disks of one domain, two appliances
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg,appliances=2"
plug_both "$M/a/d1/disks/vda" "$M/a/d1/disks/vdb"
status=$(cat "$M/.status")
echo "$status"
names=$(live_appliances "$M")
assert_eq "two appliances in .status" 2 "$(wc -l <<<"$names")"
for a in $names; do
    assert_eq "drives of $a" "1 of 254" "$(live_drives_of "$M" "$a")"
done
assert_eq "libvirt runs the two" "$(sort <<<"$names")" "$(appliance_domains)"
a1='' a2=''
for a in $names; do
    holds "$a" "$I/d1a.raw" && a1=$a
    holds "$a" "$I/d1b.raw" && a2=$a
done
[[ -n $a1 && -n $a2 && $a1 != "$a2" ]] || fail "d1's two disks are not in two appliances (vda: '$a1', vdb: '$a2')"
read_both "$M/a/d1/disks/vda/whole" "$T/d1a" "$M/a/d1/disks/vdb/whole" "$T/d1b"
t0=$(now_us)
( cmp -s -- "$M/a/d1/disks/vda/image" "$I/d1a.raw" ) & p1=$!
( cmp -s -- "$M/a/d1/disks/vdb/image" "$I/d1b.raw" ) & p2=$!
wait "$p1" || fail "d1/vda's image, read beside d1/vdb's, differs"
wait "$p2" || fail "d1/vdb's image, read beside d1/vda's, differs"
say "both 16 MiB images read at once, right: $(( ($(now_us) - t0) / 1000 )) ms (not asserted)"
# A third disk: into the least loaded (both hold one: either), no third appliance.
plug "$M/a/d2/disks/vda"
say "plug d2/vda (third disk, appliances=2): $PLUG_MS ms"
assert_eq "still two appliances" "$(sort <<<"$names")" "$(appliance_domains)"
assert_eq "drives of the two" "1 of 254,2 of 254" \
    "$(for a in $names; do live_drives_of "$M" "$a"; done | sort | paste -sd,)"
assert_tree_same "$T/d2a" "$M/a/d2/disks/vda/whole" "d2/vda, sharing an appliance"
LOG=${VMT_MOUNT_LOG[$M]}
vm_umount "$M"
live_assert_nothing_left a "$VMT_DIR/state" "$LOG"
say "PASS"
