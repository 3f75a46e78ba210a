#!/bin/bash
# No host configured: one host, "localhost".  Where no libvirt daemon
# answers at qemu:///system (a fresh machine, CI) it is libvirt's embedded
# driver rooted in STATEDIR/embed, which needs no daemon: virtmount creates
# it, and domains defined there (before mounting: while virtmount holds the
# embedded driver nobody else can open it) are shown.  Where a system daemon
# answers, localhost is that daemon; only the choice is checked then.
source "$(dirname "$0")/lib.sh"
vmt_init

M=$VMT_DIR/mnt
S=$VMT_DIR/state
EMBED="qemu:///embed?root=$S/embed"

vm_mount "$M" ""
assert_eq "root listing" "$(printf '.status\nlocalhost')" "$(sorted_ls "$M")"
if virsh -c qemu:///system uri >/dev/null 2>&1; then
    status=$(status_section "$M" localhost qemu:///system)
    grep -Fq 'qemu:///system' <<<"$status" ||
        fail "a daemon answers at qemu:///system but .status says: $(cat "$M/.status")"
    vm_umount "$M"
    say "a libvirt daemon answers at qemu:///system here: embedded driver not tested"
    say "localhost OK"
    exit 0
fi

status=$(status_section "$M" localhost "$EMBED")
grep -Fq -- "$EMBED" <<<"$status" || fail ".status does not give $EMBED: $(cat "$M/.status")"
grep -Fqi embed <<<"$status" || fail ".status does not say embedded: $(cat "$M/.status")"
grep -Eq '\<up\>' <<<"$status" || fail ".status does not say up: $(cat "$M/.status")"
assert_eq "domains of a fresh embedded localhost" "" "$(sorted_ls "$M/localhost")"
vm_umount "$M"

# Define a domain in the embedded driver while virtmount is not running.
I=$VMT_DIR/img
mkdir -p "$I"
mk_image "$I/emb.qcow2" qcow2 24M
domain_xml emb1 "$(disk_xml "$I/emb.qcow2" qcow2 vda virtio emb-disk)" > "$VMT_DIR/emb1.xml"
virsh -q -c "$EMBED" define "$VMT_DIR/emb1.xml" >/dev/null 2>"$VMT_DIR/virsh.err" ||
    fail "virsh define in $EMBED: $(cat "$VMT_DIR/virsh.err")"
virsh -q -c "$EMBED" dumpxml emb1 > "$VMT_DIR/emb1.dumpxml" 2>"$VMT_DIR/virsh.err" ||
    fail "virsh dumpxml in $EMBED: $(cat "$VMT_DIR/virsh.err")"

vm_mount "$M" ""
assert_eq "domains of localhost (embedded)" emb1 "$(sorted_ls "$M/localhost")"
assert_file_bytes "$M/localhost/emb1/state" $'shut off\n'
assert_same_file "$M/localhost/emb1/domain.xml" "$VMT_DIR/emb1.dumpxml" "domain.xml (embedded)"
assert_eq "devices of emb1" emb-disk "$(sorted_ls "$M/localhost/emb1/devices")"
assert_file_bytes "$M/localhost/emb1/devices/emb-disk/size" $'25165824\n'
vm_umount "$M"
say "localhost OK"
