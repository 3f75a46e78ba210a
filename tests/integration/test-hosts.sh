#!/bin/bash
# Two hosts in one mount: "near" on a unix socket, "far" on a second daemon
# reached over loopback TCP.  When far's daemon stops, listing far fails with
# EHOSTUNREACH, .status says why, and near is unaffected; when it comes back
# virtmount reconnects by itself (and follows events again).  Then the same
# with far already down when mounting.
source "$(dirname "$0")/lib.sh"
vmt_init

RECOVER=15    # seconds allowed for reconnecting
NOTICE=10     # seconds allowed for noticing a daemon is gone

lv_start a
lv_start b --tcp
lv_define a n1
lv_define b f1
lv_define b f2
NEAR=$(lv_uri a)
FAR=$(lv_tcp_uri b)

M=$VMT_DIR/mnt
vm_mount "$M" "host=near=$NEAR,host=far=$FAR"

listed() { grep -Fxq -- "$2" <<<"$(ls -A -- "$1")"; }
present() { listed "$1" "$2" && [[ -d $1/$2 ]]; }
unreachable() { [[ $(errno_of listdir "$1") == EHOSTUNREACH ]]; }
lists() { [[ "$(sorted_ls "$1" 2>/dev/null)" == "$2" ]]; }
# status_all_up: each host's part of .status says up, not down.
status_all_up() {
    local sec
    for sec in "$(status_section "$M" near "$NEAR")" "$(status_section "$M" far "$FAR")"; do
        grep -Eq '\<up\>' <<<"$sec" || return 1
        if grep -q 'down:' <<<"$sec"; then return 1; fi
    done
}

assert_eq "root listing" "$(printf '.status\nfar\nnear')" "$(sorted_ls "$M")"
assert_eq "near" n1 "$(sorted_ls "$M/near")"
assert_eq "far" "$(printf 'f1\nf2')" "$(sorted_ls "$M/far")"
for h in near far; do
    [[ $h == near ]] && u=$NEAR || u=$FAR
    sec=$(status_section "$M" $h "$u")
    grep -Fq -- "$u" <<<"$sec" || fail ".status: no URI in $h's part: $(cat "$M/.status")"
done
status_all_up || fail ".status does not say both up: $(cat "$M/.status")"

# check_far_down NEAR-LISTING: far fails as it should, near works.
check_far_down() {
    local near_expected=$1
    wait_for $NOTICE "listing far fails with EHOSTUNREACH" unreachable "$M/far"
    say "far unreachable after ${WAITED_MS} ms"
    assert_cmd_fails 'No route to host' ls "$M/far"
    assert_true "far is still a directory" test -d "$M/far"
    assert_eq "root listing with far down" "$(printf '.status\nfar\nnear')" "$(sorted_ls "$M")"
    say "lookup of far/f1 while far is down: $(errno_of stat "$M/far/f1") (not asserted)"
    local far near reason
    far=$(status_section "$M" far "$FAR")
    near=$(status_section "$M" near "$NEAR")
    grep -Fq -- "$FAR" <<<"$far" || fail ".status: no URI in far's part: $(cat "$M/.status")"
    reason=$(grep -m 1 -o 'down: .*' <<<"$far") || fail ".status does not say far is down: $(cat "$M/.status")"
    reason=${reason#down: }
    [[ ${#reason} -ge 5 ]] || fail ".status gives no reason for far being down: $far"
    grep -Eq '\<up\>' <<<"$near" || fail ".status does not say near is up: $(cat "$M/.status")"
    if grep -q 'down:' <<<"$near"; then fail ".status says near is down: $near"; fi
    say ".status for far: down: $reason"
    # near is untouched and still follows events.
    assert_eq "near while far is down" "$near_expected" "$(sorted_ls "$M/near")"
    assert_file_bytes "$M/near/n1/state" $'shut off\n'
}

# ---- far's daemon stops
lv_stop b
check_far_down n1
lv_define a n2
wait_for 1 "domain defined on near while far is down appears" present "$M/near" n2

# ---- far's daemon comes back: reconnect, then events again
lv_start b
wait_for $RECOVER "far lists its domains again" lists "$M/far" "$(printf 'f1\nf2')"
say "far recovered after ${WAITED_MS} ms"
wait_for 2 ".status says both up" status_all_up
lv_define b f3
wait_for 1 "domain defined on far after reconnecting appears" present "$M/far" f3
vm_umount "$M"

# ---- far already down when mounting
lv_stop b
vm_mount "$M" "host=near=$NEAR,host=far=$FAR"
check_far_down "$(printf 'n1\nn2')"
lv_start b
wait_for $RECOVER "far (down at mount) lists its domains once up" \
    lists "$M/far" "$(printf 'f1\nf2\nf3')"
say "far recovered after ${WAITED_MS} ms"
wait_for 2 ".status says both up" status_all_up
vm_umount "$M"
say "hosts OK"
