#!/bin/bash
# Errors: unknown names are ENOENT; writing, creating or truncating anything
# is EROFS; mkdir anywhere is EPERM.  The command line: -o ro and malformed
# -o host= specs are refused with a message; -o config= works, and a bad or
# missing config file is refused; --help and --version.
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

# ---- EPERM: mkdir anywhere (disks/ too: hotplug is not there yet -- when
# it comes, mkdir disks/<known serial> plugs and an unknown one is ENOENT)
for d in "${dirs[@]}"; do
    assert_errno EPERM mkdir "$d/newdir"
done
assert_errno EPERM mkdir "$D/disks/vda"
assert_errno EPERM mkdir "$D/disks/data"
assert_cmd_fails 'Operation not permitted' mkdir "$M/a/newdir"
assert_cmd_fails 'Operation not permitted' mkdir "$D/disks/x"

# ---- nothing changed
assert_file_bytes "$D/state" $'shut off\n'
lv_virsh a dumpxml dom > "$VMT_DIR/dom.xml"
assert_same_file "$D/domain.xml" "$VMT_DIR/dom.xml" "domain.xml after write attempts"
assert_file_bytes "$D/devices/vda/size" $'8388608\n'
assert_eq "dom after write attempts" "$(printf 'devices\ndisks\ndomain.xml\nstate')" "$(sorted_ls "$D")"
assert_eq "devices after write attempts" "$(printf 'data\nvda')" "$(sorted_ls "$D/devices")"
assert_eq "disks after mkdir attempts" "" "$(sorted_ls "$D/disks")"
vm_umount "$M"

# ---- the command line
R=$VMT_DIR/mnt-refused
mkdir -p "$R" "$VMT_DIR/state-refused"
# refused WHAT ARGS...: virtmount ARGS... R exits non-zero (within 10 s)
# with a message, and mounts nothing.
refused() {
    local what=$1; shift
    local err=$VMT_DIR/refused.err pid rc=0 i
    "$VIRTMOUNT" "$@" "$R" </dev/null >"$err" 2>&1 &
    pid=$!
    for ((i = 0; i < 100; i++)); do
        pid_alive "$pid" || break
        if is_mounted "$R"; then
            fusermount3 -u "$R" || true
            wait "$pid" || true
            fail "$what: virtmount $* accepted it and mounted"
        fi
        sleep 0.1
    done
    if pid_alive "$pid"; then
        kill_pid "$pid"
        fail "$what: virtmount $* still running after 10 s"
    fi
    wait "$pid" || rc=$?
    is_mounted "$R" && { fusermount3 -u "$R" || true; fail "$what: left $R mounted"; }
    [[ $rc -ne 0 ]] || fail "$what: virtmount $* exited 0"
    [[ -s $err ]] || fail "$what: virtmount $* exited $rc without a message"
    say "refused ($what): exit $rc: $(head -n 1 "$err")"
}

S="statedir=$VMT_DIR/state-refused"
refused "-o ro" -f -o "$S,host=a=$URI,ro"
refused "-o ro alone" -f -o ro -o "$S"
grep -Eqi '\<ro\>|read-only|read only' "$VMT_DIR/refused.err" ||
    fail "-o ro: the message does not mention ro: $(cat "$VMT_DIR/refused.err")"
refused "empty host spec" -f -o "$S,host="
refused "host spec without '='" -f -o "$S,host=noequals"
refused "host spec with empty name" -f -o "$S,host==$URI"
refused "host spec with empty URI" -f -o "$S,host=x="
refused "host name with '/'" -f -o "$S,host=bad/name=$URI"
refused "host name '..'" -f -o "$S,host=..=$URI"
refused "host name twice" -f -o "$S,host=x=$URI,host=x=$URI"
refused "missing config file" -f -o "$S,config=$VMT_DIR/no-such.conf"
printf 'host a %s\nthis is not a host line\n' "$URI" > "$VMT_DIR/bad.conf"
refused "config file with a bad line" -f -o "$S,config=$VMT_DIR/bad.conf"
refused "a second mountpoint" -f -o "$S,host=a=$URI" "$VMT_DIR/extra-arg-mnt"

rc=0
"$VIRTMOUNT" </dev/null >/dev/null 2>"$VMT_DIR/noargs.err" || rc=$?
[[ $rc -ne 0 ]] || fail "virtmount with no arguments exited 0"
[[ -s $VMT_DIR/noargs.err ]] || fail "virtmount with no arguments says nothing on stderr"

out=$("$VIRTMOUNT" --help 2>&1 </dev/null) || fail "virtmount --help exited non-zero: $out"
for w in host= config= statedir= allow_other; do
    grep -Fq -- "$w" <<<"$out" || fail "--help does not mention $w: $out"
done
out=$("$VIRTMOUNT" --version 2>&1 </dev/null) || fail "virtmount --version exited non-zero: $out"
grep -Eq '[0-9]+\.[0-9]+' <<<"$out" || fail "--version prints no version: $out"

# ---- a config file that is fine: comments, blank lines, two hosts
cat > "$VMT_DIR/good.conf" <<EOF
# hosts for the test

host one $URI
# another comment
host two $URI
EOF
vm_mount "$M" "config=$VMT_DIR/good.conf"
assert_eq "hosts from the config file" "$(printf '.status\none\ntwo')" "$(sorted_ls "$M")"
assert_eq "host one from the config file" dom "$(sorted_ls "$M/one")"
assert_eq "host two from the config file" dom "$(sorted_ls "$M/two")"
vm_umount "$M"
say "errors OK"
