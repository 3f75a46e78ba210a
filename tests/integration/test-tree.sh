#!/bin/bash
# The read-only tree of one host, checked against what virsh says: the
# domain list, domain.xml, state, devices/ (serial naming, CD-ROM and floppy
# without media left out, each small file), disks/, modes (directories 0555
# but disks/ 0755, files 0444), link counts, sizes, and the mount's type in
# /proc/mounts.
source "$(dirname "$0")/lib.sh"
vmt_init

lv_start a
I=$VMT_DIR/img
mkdir -p "$I"
mk_image "$I/alpha-root.raw" raw 64M
mk_image "$I/alpha-data.qcow2" qcow2 128M
mk_image "$I/alpha-ro.raw" raw 8M
mk_image "$I/cd.iso" raw 1M
mk_image "$I/bravo-1.qcow2" qcow2 32M
mk_image "$I/bravo-2.raw" raw 16M
mk_image "$I/bravo-3.raw" raw 4M
mk_image "$I/idle.raw" raw 4M

# alpha: no serial, a legal serial, a read-only disk, a CD-ROM with media,
# a CD-ROM and a floppy without.
lv_define a alpha \
    "$(disk_xml "$I/alpha-root.raw" raw vda virtio)" \
    "$(disk_xml "$I/alpha-data.qcow2" qcow2 vdb virtio data-disk)" \
    "$(disk_xml "$I/alpha-ro.raw" raw vdc virtio ro-disk ro)" \
    "$(cdrom_xml hdc "$I/cd.iso")" \
    "$(cdrom_xml hdd)" \
    "$(floppy_xml fda)"
# bravo: a serial used twice (not unique: both named by target), and a
# serial that is not a legal file name.
lv_define a bravo \
    "$(disk_xml "$I/bravo-1.qcow2" qcow2 vda virtio dup)" \
    "$(disk_xml "$I/bravo-2.raw" raw vdb virtio dup)" \
    "$(disk_xml "$I/bravo-3.raw" raw vdc virtio ..)"
# charlie: no disks at all.
lv_define a charlie
# idle: running (idles in SeaBIOS: its disk is blank).
lv_define a idle "$(disk_xml "$I/idle.raw" raw vda virtio boot-disk)"
lv_virsh a start idle >/dev/null

M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a)"

# ---- the mount itself
assert_eq "type in /proc/mounts" "fuse.virtmount" "$(mount_type "$M")"
assert_eq "root listing" "$(printf '.status\na')" "$(sorted_ls "$M")"

# ---- .status: host a, its URI, up
status=$(status_section "$M" a "$(lv_uri a)")
grep -Fq -- "$(lv_uri a)" <<<"$status" || fail ".status does not give a's URI: $(cat "$M/.status")"
grep -Eq '\<up\>' <<<"$status" || fail ".status does not say a is up: $(cat "$M/.status")"
if grep -q 'down:' <<<"$status"; then fail ".status says a is down: $status"; fi

# ---- the domain list
expected=$(lv_virsh a list --all --name | sed '/^$/d' | sort)
assert_eq "domains of a" "$expected" "$(sorted_ls "$M/a")"
assert_eq "domains of a (4)" "alpha bravo charlie idle" "${expected//$'\n'/ }"

# ---- each domain: entries, domain.xml, state, disks/
for d in alpha bravo charlie idle; do
    D=$M/a/$d
    assert_eq "entries of $d" "$(printf 'devices\ndisks\ndomain.xml\nstate')" "$(sorted_ls "$D")"
    lv_virsh a dumpxml "$d" > "$VMT_DIR/$d.dumpxml"
    assert_same_file "$D/domain.xml" "$VMT_DIR/$d.dumpxml" "domain.xml of $d vs virsh dumpxml"
    assert_file_bytes "$D/state" "$(lv_virsh a domstate "$d" | sed '/^$/d')"$'\n'
    assert_eq "disks/ of $d is empty" "" "$(sorted_ls "$D/disks")"
done
assert_file_bytes "$M/a/idle/state" $'running\n'
assert_file_bytes "$M/a/alpha/state" $'shut off\n'

# ---- devices/: names
assert_eq "devices of alpha (serial, else target; no empty CD-ROM/floppy)" \
    "$(printf 'data-disk\nhdc\nro-disk\nvda')" "$(sorted_ls "$M/a/alpha/devices")"
assert_eq "devices of bravo (duplicate and illegal serials give targets)" \
    "$(printf 'vda\nvdb\nvdc')" "$(sorted_ls "$M/a/bravo/devices")"
assert_eq "devices of charlie" "" "$(sorted_ls "$M/a/charlie/devices")"
assert_eq "devices of idle (running)" "boot-disk" "$(sorted_ls "$M/a/idle/devices")"

# ---- devices/: each file, against the definition and virsh
# check_device DOMAIN NAME TARGET BUS SOURCE FORMAT READONLY
check_device() {
    local dom=$1 name=$2 target=$3 bus=$4 source=$5 format=$6 ro=$7
    local X=$M/a/$dom/devices/$name
    assert_eq "files of $dom/devices/$name" \
        "$(printf 'bus\nformat\nplugged\nreadonly\nsize\nsource\ntarget')" "$(sorted_ls "$X")"
    # What virsh says about that target (source column of domblklist).
    local vsource
    vsource=$(lv_virsh a domblklist --details "$dom" | awk -v t="$target" '$3 == t { print $4 }')
    assert_eq "virsh source of $dom $target" "$source" "$vsource"
    assert_file_bytes "$X/target" "$target"$'\n'
    assert_file_bytes "$X/bus" "$bus"$'\n'
    assert_file_bytes "$X/source" "$source"$'\n'
    assert_file_bytes "$X/format" "$format"$'\n'
    assert_file_bytes "$X/size" "$(domblk_capacity a "$dom" "$target")"$'\n'
    assert_file_bytes "$X/readonly" "$ro"$'\n'
    assert_file_bytes "$X/plugged" $'0\n'
}
check_device alpha vda vda virtio "$I/alpha-root.raw" raw 0
check_device alpha data-disk vdb virtio "$I/alpha-data.qcow2" qcow2 0
check_device alpha ro-disk vdc virtio "$I/alpha-ro.raw" raw 1
check_device alpha hdc hdc ide "$I/cd.iso" raw 1
check_device bravo vda vda virtio "$I/bravo-1.qcow2" qcow2 0
check_device bravo vdb vdb virtio "$I/bravo-2.raw" raw 0
check_device bravo vdc vdc virtio "$I/bravo-3.raw" raw 0
check_device idle boot-disk vda virtio "$I/idle.raw" raw 0
# The capacities are the images' virtual sizes.
assert_file_bytes "$M/a/alpha/devices/data-disk/size" $'134217728\n'
assert_file_bytes "$M/a/alpha/devices/hdc/size" $'1048576\n'

# ---- every node: modes, link counts, sizes == content length
n=0
while IFS=' ' read -r type mode nlink size path; do
    n=$((n + 1))
    case $type in
        d)
            # disks/ is writable: mkdir there plugs a disk (DESIGN.md).
            if [[ $path == */disks ]]; then
                assert_eq "mode of directory $path" 755 "$mode"
            else
                assert_eq "mode of directory $path" 555 "$mode"
            fi
            (( nlink >= 2 )) || fail "st_nlink of directory $path is $nlink (< 2)"
            ;;
        f)
            assert_eq "mode of file $path" 444 "$mode"
            (( nlink >= 1 )) || fail "st_nlink of file $path is $nlink"
            len=$(wc -c < "$path")
            assert_eq "st_size of $path vs its content length" "$len" "$size"
            ;;
        *) fail "unexpected file type '$type' of $path" ;;
    esac
done < <(find "$M" -printf '%y %m %n %s %p\n')
# root, .status, a, 4 domains x (dir, devices, disks, domain.xml, state),
# 8 devices x (dir + 7 files)
assert_eq "number of nodes found by find" $((3 + 4 * 5 + 8 * 8)) "$n"

vm_umount "$M"
say "tree OK"
