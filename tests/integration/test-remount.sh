#!/bin/bash
# Inode numbers are stable across unmount/remount with the same statedir,
# and distinct; a new object gets a new number.  Every way of unmounting
# (fusermount3 -u, SIGTERM, SIGINT) makes virtmount exit 0 and leaves no
# mount and no process.  A statedir in use is not shared by a second mount.
source "$(dirname "$0")/lib.sh"
vmt_init

lv_start a
I=$VMT_DIR/img
mkdir -p "$I"
mk_image "$I/d1-1.raw" raw 8M
mk_image "$I/d1-2.qcow2" qcow2 8M
lv_define a d1 \
    "$(disk_xml "$I/d1-1.raw" raw vda virtio)" \
    "$(disk_xml "$I/d1-2.qcow2" qcow2 vdb virtio data)"
lv_define a d2
URI=$(lv_uri a)
M=$VMT_DIR/mnt
OPTS="statedir=$VMT_DIR/state,host=a=$URI"
mkdir -p "$VMT_DIR/state"

# "inode path" for every node, sorted by path.
inodes() { find "$M" -printf '%i %P\n' | sort -k 2; }

vm_mount "$M" "$OPTS"
first=$(inodes)
n=$(wc -l <<<"$first")
(( n >= 20 )) || fail "too few nodes found: $first"
dups=$(awk '{ print $1 }' <<<"$first" | sort | uniq -d)
[[ -z $dups ]] || fail "inode numbers shared by different paths: $dups"$'\n'"$first"
assert_eq "inode of the root" 1 "$(stat -c %i "$M")"
vm_umount "$M" fusermount

vm_mount "$M" "$OPTS"
assert_eq "inode numbers after remount (fusermount3 -u)" "$first" "$(inodes)"
vm_umount "$M" term

# A new domain while unmounted: the old numbers stay, the new ones are new.
lv_define a d3
vm_mount "$M" "$OPTS"
third=$(inodes)
assert_eq "old inode numbers with d3 added" "$first" "$(grep -Ev ' a/d3(/|$)' <<<"$third")"
new=$(grep -E ' a/d3(/|$)' <<<"$third" | awk '{ print $1 }')
[[ -n $new ]] || fail "d3 not found after remount"
old_inos=$(awk '{ print $1 }' <<<"$first")
for i in $new; do
    if grep -Fxq -- "$i" <<<"$old_inos"; then
        fail "d3's inode $i reuses a number of another object"
    fi
done
dups=$(awk '{ print $1 }' <<<"$third" | sort | uniq -d)
[[ -z $dups ]] || fail "inode numbers shared by different paths: $dups"

# A second mount on the same statedir must not share the registry.
M2=$VMT_DIR/mnt2
mkdir -p "$M2"
rc=0
timeout -k 5 20 "$VIRTMOUNT" -f -o "$OPTS" "$M2" </dev/null >"$VMT_DIR/second.log" 2>&1 &
spid=$!
for ((i = 0; i < 100; i++)); do
    pid_alive "$spid" || break
    is_mounted "$M2" && break
    sleep 0.1
done
if is_mounted "$M2"; then
    fusermount3 -u "$M2" || true
    wait "$spid" || true
    fail "a second virtmount mounted with a statedir in use"
fi
wait "$spid" || rc=$?
(( rc != 0 && rc != 124 )) || fail "second virtmount on a busy statedir: exit $rc (want a refusal)"
[[ -s $VMT_DIR/second.log ]] || fail "second virtmount on a busy statedir: no message"
say "second mount on a busy statedir refused: exit $rc: $(head -n 1 "$VMT_DIR/second.log")"
vm_umount "$M" int

# The registry survived all this.
vm_mount "$M" "$OPTS"
assert_eq "inode numbers after SIGTERM, SIGINT and a refused mount" "$third" "$(inodes)"
vm_umount "$M" fusermount
say "remount OK"
