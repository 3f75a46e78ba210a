#!/bin/bash
# The command line: -o ro and malformed -o host= specs are refused with a
# message and mount nothing; so are a missing or bad config file and a
# second mountpoint; a good -o config= file works; -o allow_other lets
# another user in (and without it the kernel keeps them out); --help and
# --version.
source "$(dirname "$0")/lib.sh"
vmt_init

lv_start a
lv_define a dom
URI=$(lv_uri a)
M=$VMT_DIR/mnt

# ---- refused
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
# ---- -o allow_other: root's mount, read by "nobody"
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
vm_mount "$M" "host=a=$URI"
assert_cmd_fails 'Permission denied' as_nobody ls "$M/a"
vm_umount "$M"
vm_mount "$M" "allow_other,host=a=$URI"
grep -F " $M fuse.virtmount " /proc/mounts | grep -q allow_other ||
    fail "allow_other is not in the mount's options: $(grep -F " $M " /proc/mounts)"
assert_eq "listing as nobody with allow_other" dom "$(as_nobody ls "$M/a")"
assert_eq "state as nobody with allow_other" "shut off" "$(as_nobody cat "$M/a/dom/state")"
vm_umount "$M"
say "options OK"
