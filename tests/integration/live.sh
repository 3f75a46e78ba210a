# shellcheck shell=bash
# Helpers for the tests of running guests, remote hosts and isolation
# (test-live-*.sh, test-remote*.sh, test-isolate*.sh).  Sourced after lib.sh
# and images.sh, whose fail/say/lv_*/plug/assert_* it uses.
#
#   live_init                  after vmt_init: our own EXIT trap, which ends
#                              what these helpers start, then runs lib.sh's
#   live_lv_restart INST       lv_start again (lib.sh), same directories,
#                              port and hidden paths
#   live_lv_kill INST          SIGTERM to the daemon alone: its domains'
#                              qemus keep running, as when a remote daemon
#                              stops under a client
#   live_nbd_serve IMG SOCK    qemu-nbd on a unix socket, several clients
#   live_events INST DOM       record DOM's lifecycle events (virsh event)
#   live_job_* / live_files_of / live_assert_clean
#                              a domain's backup job, and what virtmount
#                              leaves in /var/tmp for it
#   live_qemu_write INST DOM DEVID OFFSET LEN BYTE
#                              the running guest's qemu writes to its disk
#                              (as the guest would), via HMP qemu-io

declare -a LIVE_PIDS=()        # processes these helpers started

live_cleanup() {
    local rc=$? p
    set +e
    for p in "${LIVE_PIDS[@]}"; do
        pid_alive "$p" && kill_pid "$p" >/dev/null 2>&1
    done
    # What a failed test leaves of our domains' backup jobs in /var/tmp
    # (when virtmount had to be killed, or a daemon went with its job).
    local b f u
    for b in "${LV_BASE[@]}"; do
        for f in "$b"/etc/qemu/*.xml; do
            [[ -e $f ]] || continue
            u=$(sed -n 's|^ *<uuid>\([0-9a-f-]*\)</uuid>.*$|\1|p' "$f" | head -n 1)
            [[ ${#u} -eq 36 ]] && rm -f /var/tmp/virtmount-*-"${u:0:8}"-*
        done
    done
    # vmt_cleanup takes the status to exit with from $?.
    ( exit "$rc" )
    vmt_cleanup
}

live_init() {
    trap live_cleanup EXIT
}

# ---- a daemon that cannot see our files: lv_start --hide (lib.sh) --------------------

# live_lv_restart INSTANCE: start it again, same directories, port and
# hidden paths (after lv_stop or live_lv_kill).
live_lv_restart() {
    local inst=$1
    lv_running "$inst" && lv_stop "$inst"
    lv_start "$inst"
}

# live_ns_sees INSTANCE PATH: PATH exists in the daemon's mount namespace.
live_ns_sees() {
    nsenter -t "$(lv_pid "$1")" -m -- test -e "$2"
}

# live_ns_ls INSTANCE DIR: DIR's listing as the daemon sees it.
live_ns_ls() {
    nsenter -t "$(lv_pid "$1")" -m -- ls -A -- "$2"
}

# live_lv_kill INSTANCE: the daemon goes, its qemus stay (no destroy first).
live_lv_kill() {
    local pid
    pid=$(lv_pid "$1") || fail "no libvirtd $1"
    kill_pid "$pid" || fail "libvirtd $1 (pid $pid) does not exit"
    rm -f "${LV_BASE[$1]}/libvirtd.pid"
    say "libvirtd $1 killed (its qemus left running)"
}

# ---- guests ------------------------------------------------------------------------

# live_start INSTANCE DOMAIN: start it; it idles in SeaBIOS.
live_start() {
    lv_virsh "$1" start "$2" >/dev/null || fail "virsh start $2 on $1 failed"
    wait_for 10 "$2 runs" live_state_is "$1" "$2" running
}

live_state_is() { [[ $(lv_virsh "$1" domstate "$2" | sed '/^$/d') == "$3" ]]; }

live_uuid() { lv_virsh "$1" domuuid "$2" | sed '/^$/d'; }

# live_events INSTANCE DOMAIN: record DOMAIN's lifecycle events (one line
# each) into $VMT_DIR/events-INSTANCE-DOMAIN until the test ends.
live_events() {
    local f=$VMT_DIR/events-$1-$2
    : > "$f"
    virsh -c "$(lv_uri "$1")" event --domain "$2" --event lifecycle --loop --timestamp \
        </dev/null >>"$f" 2>&1 &
    LIVE_PIDS+=($!)
    sleep 0.3
}

# live_events_of INSTANCE DOMAIN: what was recorded so far.
live_events_of() { cat "$VMT_DIR/events-$1-$2"; }

# live_qemu_write INSTANCE DOMAIN QDEV-ID OFFSET LENGTH BYTE: the guest's
# own qemu writes LENGTH bytes of BYTE at OFFSET of the disk whose device
# is QDEV-ID (virtio-disk1 for vdb), through the device's own block
# backend, so through the same graph (and backup filter) as the guest's
# writes.  (HMP's qemu-io prints nothing here: check the image.)
live_qemu_write() {
    local out
    out=$(lv_virsh "$1" qemu-monitor-command "$2" --hmp \
        "qemu-io -d /machine/peripheral/$3/virtio-backend \"write -P $6 $4 $5\"" 2>&1) ||
        fail "qemu-io write on $2/$3: $out"
    [[ -z $out ]] || fail "qemu-io write on $2/$3: $out"
}

# ---- NBD ---------------------------------------------------------------------------

# live_nbd_serve IMAGE SOCKET: serve IMAGE (raw) over NBD on a unix socket,
# for several clients at once, surviving their disconnects.
live_nbd_serve() {
    command -v qemu-nbd >/dev/null || skip "qemu-nbd is not installed (qemu-utils)"
    rm -f -- "$2"
    qemu-nbd -f raw -k "$2" -e 8 -t -- "$1" </dev/null >>"$VMT_DIR/qemu-nbd.log" 2>&1 &
    LIVE_PIDS+=($!)
    wait_for 10 "qemu-nbd listens on $2" test -S "$2"
}

# nbd_unix_disk_xml TARGET SOCKET: a network disk on an NBD unix socket.
nbd_unix_disk_xml() {
    echo "<disk type='network' device='disk'>"
    echo "  <driver name='qemu' type='raw'/>"
    echo "  <source protocol='nbd'><host transport='unix' socket='$2'/></source>"
    echo "  <target dev='$1' bus='virtio'/>"
    echo "</disk>"
}

# ---- backup jobs and what they leave ---------------------------------------------------

# live_job_type INSTANCE DOMAIN: "Job type" of virsh domjobinfo (None when
# there is none).
live_job_type() {
    lv_virsh "$1" domjobinfo "$2" 2>&1 | awk -F': *' '$1 == "Job type" { sub(/ +$/, "", $2); print $2 }'
}

live_job_none() { [[ $(live_job_type "$1" "$2") == None ]]; }

# live_backup_xml INSTANCE DOMAIN: virsh backup-dumpxml (fails when no job).
live_backup_xml() { lv_virsh "$1" backup-dumpxml "$2" 2>&1; }

# live_files_of UUID: virtmount's sockets and scratch files for that
# domain in /var/tmp (names /var/tmp/virtmount-<id8>-<uuid8>-...).
live_files_of() {
    local f
    for f in /var/tmp/virtmount-*-"${1:0:8}"-*; do
        [[ -e $f || -L $f ]] && echo "$f"
    done
    return 0
}

# live_assert_clean INSTANCE DOMAIN...: no backup job on any of them (that
# runs), and no socket or scratch file of virtmount's for any of them.
live_assert_clean() {
    local inst=$1 d u left
    shift
    for d in "$@"; do
        if live_state_is "$inst" "$d" running; then
            live_job_none "$inst" "$d" ||
                fail "a job is left on $d: $(lv_virsh "$inst" domjobinfo "$d" 2>&1)
$(live_backup_xml "$inst" "$d")"
        fi
        u=$(live_uuid "$inst" "$d")
        left=$(live_files_of "$u")
        [[ -z $left ]] || fail "files left in /var/tmp for $d: $left"
    done
}

# live_count PATTERN FILE: how many lines of FILE match (fixed string).
live_count() { grep -cF -- "$1" "$2" || true; }

# live_appliance_xml INSTANCE NAME: the appliance domain's live XML.
live_appliance_xml() { lv_virsh "$1" dumpxml "$2"; }

# live_appliances MOUNTPOINT: the names .status gives, in order.
live_appliances() {
    sed -n 's/^ *appliance \(virtmount-appliance-[A-Za-z0-9_-]*\)$/\1/p' "$1/.status"
}

# live_drives_of MOUNTPOINT APPLIANCE: the "drives:" line of that
# appliance in .status ("1 of 254").
live_drives_of() {
    awk -v a="$2" '
        /^ *appliance / { cur = $2 }
        cur == a && /^ *drives: / { sub(/^ *drives: /, ""); print; exit }' "$1/.status"
}

# live_no_files UUID: virtmount has no socket or scratch file for it.
live_no_files() { [[ -z $(live_files_of "$1") ]]; }

# live_assert_nothing_left INSTANCE STATEDIR [LOG]: images.sh's
# assert_nothing_left for a daemon whose own guests may still run: no
# appliance domain, no process using STATEDIR (qemu, connector), no qemu
# of an appliance (by its pid file, or as the daemon's child) alive; with
# virtmount's LOG, no qemu anywhere of an appliance it logged (one that a
# stopped daemon left, for one).
live_assert_nothing_left() {
    local inst=$1 state=$2 log=${3:-} doms pids p f name
    doms=$(lv_virsh "$inst" list --all --name | grep '^virtmount-appliance' || true)
    [[ -z $doms ]] || fail "appliance domains left on $inst after unmount: $doms"
    pids=$(pids_with_substring "$state/")
    if [[ -n $pids ]]; then
        for p in $pids; do
            echo "left: $p $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-200)" >&2
        done
        fail "processes left using $state after unmount: $(echo $pids)"
    fi
    for f in "${LV_BASE[$inst]}"/run/qemu/virtmount-appliance-*.pid; do
        [[ -e $f ]] || continue
        p=$(cat "$f" 2>/dev/null) || continue
        if pid_alive "$p" && grep -q qemu "/proc/$p/comm" 2>/dev/null; then
            fail "appliance qemu pid $p ($f) left after unmount"
        fi
    done
    for p in $(child_pids "$(lv_pid "$inst")"); do
        if pid_alive "$p" && tr '\0' '\n' < "/proc/$p/cmdline" 2>/dev/null |
                grep -q '^guest=virtmount-appliance-'; then
            fail "appliance qemu pid $p (child of libvirtd $inst) left after unmount"
        fi
    done
    if [[ -n $log ]]; then
        for name in $(grep -o 'virtmount-appliance-[A-Za-z0-9_-]*' "$log" | sort -u); do
            pids=$(pids_with_arg "guest=$name,debug-threads=on")
            [[ -z $pids ]] || fail "appliance $name still runs after unmount (qemu pid $(echo $pids))"
        done
    fi
    return 0
}
