#!/bin/bash
# Many drives in one appliance, each reached by its serial and never by
# sdX: 32 small whole-disk ext4 images, 8 per domain in 4 domains, each
# with its own content, and -o max_drives=30.
#  - plug A, B, C; unplug B; plug D and E; plug B again: every directory
#    shows its own disk's files (the kernel's sdX names are reused in
#    another order by then: a path that used them would show wrong files);
#  - fill the appliance to 30 drives, the domains' plugs running in
#    parallel; every directory shows its own files;
#  - a 31st plug is ENOSPC, fast, and leaves nothing half-plugged; after
#    one unplug it fits (the freed slot is reused);
#  - all unplugged; SIGTERM to virtmount leaves nothing running.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
vmt_init

lv_start a
T=$VMT_DIR/trees I=$VMT_DIR/img
mkdir -p "$T" "$I"
targets=(vda vdb vdc vdd vde vdf vdg vdh)
doms=(m1 m2 m3 m4)
for d in "${doms[@]}"; do
    xml=()
    for t in "${targets[@]}"; do
        img_tree "$T/$d-$t" "$d-$t"
        img_ext4 "$I/$d-$t.raw" "$T/$d-$t" "$d-$t" 4M
        xml+=("$(disk_xml "$I/$d-$t.raw" raw "$t" virtio)")
    done
    lv_define a "$d" "${xml[@]}"
done
say "32 images made"

M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg,max_drives=30"

# check DOMAIN TARGET: disks/TARGET of DOMAIN is plugged and shows exactly
# the tree it was made from.
check() {
    local P=$M/a/$1/disks/$2
    assert_listing "$P" image info whole
    assert_tree_same "$T/$1-$2" "$P/whole" "$1/$2"
    assert_file_bytes "$P/whole/hello.txt" "hello from $1-$2"$'\n'
    assert_file_bytes "$M/a/$1/devices/$2/plugged" $'1\n'
}
drives_in_status() {
    status_field drives "$(cat "$M/.status")"
}

# ---- A, B, C; B out; D, E in; B back
plug "$M/a/m1/disks/vda"; say "plug m1/vda (boot): $PLUG_MS ms"
plug "$M/a/m1/disks/vdb"; say "plug m1/vdb: $PLUG_MS ms"
plug "$M/a/m2/disks/vda"; say "plug m2/vda: $PLUG_MS ms"
check m1 vda; check m1 vdb; check m2 vda
unplug "$M/a/m1/disks/vdb"; say "unplug m1/vdb: $PLUG_MS ms"
assert_file_bytes "$M/a/m1/devices/vdb/plugged" $'0\n'
assert_listing "$M/a/m1/disks" vda
plug "$M/a/m3/disks/vda"; say "plug m3/vda: $PLUG_MS ms"
plug "$M/a/m1/disks/vdc"; say "plug m1/vdc: $PLUG_MS ms"
check m1 vda; check m2 vda; check m3 vda; check m1 vdc
plug "$M/a/m1/disks/vdb"; say "plug m1/vdb again: $PLUG_MS ms"
check m1 vda; check m1 vdb; check m1 vdc; check m2 vda; check m3 vda
assert_listing "$M/a/m1/disks" vda vdb vdc
assert_eq ".status drives after the shuffle" "5 of 30" "$(drives_in_status)"

# ---- fill to 30: m1, m2, m3 all eight, m4 six; one plugger per domain
declare -A want=([m1]=8 [m2]=8 [m3]=8 [m4]=6)
t0=$(now_us)
pids=()
for d in "${doms[@]}"; do
    (
        for t in "${targets[@]:0:${want[$d]}}"; do
            [[ -d $M/a/$d/disks/$t ]] && continue
            mkdir -- "$M/a/$d/disks/$t" || { echo "mkdir $d/$t failed" >&2; exit 1; }
        done
    ) &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a parallel plugger failed (see above)"; done
say "25 more plugs, 4 domains in parallel: $(( ($(now_us) - t0) / 1000 )) ms"
assert_eq ".status drives when full" "30 of 30" "$(drives_in_status)"
assert_grep ".status: 30 plugged" '^ *plugged drives: 30$' "$(cat "$M/.status")"
for d in "${doms[@]}"; do
    for t in "${targets[@]:0:${want[$d]}}"; do check "$d" "$t"; done
done
say "30 drives checked"
# Each drive had its own appliance serial.
serials=$(sed -n 's/^ *[0-9a-f-]*\/[^ ]* as \(.*\)$/\1/p' "$M/.status" | sort)
assert_eq "30 distinct appliance serials" 30 "$(sort -u <<<"$serials" | wc -l)"
assert_eq "one appliance" 1 "$(lv_virsh a list --all --name | grep -c '^virtmount-appliance')"

# ---- the 31st: ENOSPC, quickly, nothing left of it
timed_errno ENOSPC 10 mkdir "$M/a/m4/disks/vdg"
say "31st plug: ENOSPC in $PLUG_MS ms"
assert_file_bytes "$M/a/m4/devices/vdg/plugged" $'0\n'
assert_listing "$M/a/m4/disks" vda vdb vdc vdd vde vdf
assert_eq ".status drives after ENOSPC" "30 of 30" "$(drives_in_status)"
grep -Eqi 'vdg.*(free slot|max_drives|no space)' "${VMT_MOUNT_LOG[$M]}" ||
    fail "no log line about the refused plug"
# One out, then it fits.
unplug "$M/a/m2/disks/vde"
plug "$M/a/m4/disks/vdg"; say "plug into the freed slot: $PLUG_MS ms"
check m4 vdg
check m2 vdf
assert_eq ".status drives" "30 of 30" "$(drives_in_status)"

# ---- all out
t0=$(now_us)
for d in "${doms[@]}"; do
    for x in "$M/a/$d/disks"/*; do unplug "$x"; done
done
say "30 unplugs: $(( ($(now_us) - t0) / 1000 )) ms"
for d in "${doms[@]}"; do
    assert_listing "$M/a/$d/disks"
    for t in "${targets[@]}"; do
        assert_file_bytes "$M/a/$d/devices/$t/plugged" $'0\n'
    done
done
assert_eq ".status drives when empty" "0 of 30" "$(drives_in_status)"

vm_umount "$M" term
assert_nothing_left a "$VMT_DIR/state"
say "PASS"
