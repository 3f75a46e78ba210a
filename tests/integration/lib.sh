# Harness for virtmount's integration tests: sourced by every test-*.sh.
#
# It owns everything a test starts -- private libvirtd instances, their
# domains and qemu processes, virtmount mounts -- and undoes all of it from an
# EXIT trap, whatever way the test ends (success, failure, `set -e`, a signal,
# its own watchdog).  It never touches the machine's real libvirt: each
# daemon runs in its own mount namespace with private /etc/libvirt,
# /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt
# (NOTES.md, "Running libvirt here"; prototypes/lvd.sh).
#
# Run them all:   meson test -C build --suite integration      (as root)
# Run one:        VIRTMOUNT=build/fs/virtmount tests/integration/test-tree.sh
#
# Environment:
#   VIRTMOUNT     the virtmount binary (meson passes it; default build/fs/virtmount)
#   SRCDIR        the source tree (default: two levels above this file)
#   VMT_TIMEOUT   seconds before the watchdog ends the test (default 150; keep
#                 it below the meson timeout so that cleanup still runs)
#   VMT_KEEP=1    keep the temporary directory (logs, images) for inspection
#   VMT_NO_VIRTMOUNT=1 (set before sourcing) the test does not need virtmount
#
# Exit status: 0 pass, 1 fail, 77 skip (a requirement is missing, named).

set -euo pipefail
shopt -s inherit_errexit

VMT_NAME=$(basename "$0" .sh)
SRCDIR=${SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
VIRTMOUNT=${VIRTMOUNT:-$SRCDIR/build/fs/virtmount}
VMT_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LC_ALL=C

# ---- messages and assertions ---------------------------------------------

VMT_T0=${EPOCHREALTIME/./}

# Microseconds since the epoch.
now_us() { echo "${EPOCHREALTIME/./}"; }

say() {
    local t=$(( ($(now_us) - VMT_T0) / 1000 ))
    printf '[%s %3d.%03ds] %s\n' "$VMT_NAME" $((t / 1000)) $((t % 1000)) "$*"
}

skip() {
    echo "SKIP ($VMT_NAME): $*" >&2
    exit 77
}

fail() {
    echo "FAIL ($VMT_NAME): $*" >&2
    exit 1
}

# assert_eq WHAT EXPECTED ACTUAL
assert_eq() {
    if [[ "$2" != "$3" ]]; then
        printf 'FAIL (%s): %s\n--- expected:\n%s\n--- actual:\n%s\n---\n' \
            "$VMT_NAME" "$1" "$2" "$3" >&2
        if command -v diff >/dev/null; then
            diff <(printf '%s\n' "$2") <(printf '%s\n' "$3") >&2 || true
        fi
        exit 1
    fi
}

# assert_true WHAT COMMAND...  (the command must succeed)
assert_true() {
    local what=$1; shift
    "$@" || fail "$what (command failed: $*)"
}

# assert_file_bytes FILE EXPECTED: FILE holds exactly EXPECTED (byte for
# byte, trailing newlines included; pass them in EXPECTED).
assert_file_bytes() {
    local file=$1 expected=$2 got
    got=$(cat -- "$file"; echo x) || fail "cannot read $file"
    got=${got%x}
    if [[ "$got" != "$expected" ]]; then
        printf 'FAIL (%s): content of %s\n--- expected (%%q): %q\n--- actual   (%%q): %q\n' \
            "$VMT_NAME" "$file" "$expected" "$got" >&2
        exit 1
    fi
}

# assert_same_file FILE REFERENCE-FILE WHAT: identical content.
assert_same_file() {
    if ! cmp -s -- "$1" "$2"; then
        echo "FAIL ($VMT_NAME): $3: $1 differs from $2" >&2
        diff -u -- "$2" "$1" | head -n 40 >&2 || true
        exit 1
    fi
}

# The errno name an operation gets, or OK: errno_of OP PATH [ARG]
# (operations: see errno.py).
errno_of() {
    python3 "$VMT_HERE/errno.py" "$@"
}

# assert_errno EXPECTED OP PATH [ARG]   e.g. assert_errno ENOENT stat "$M/x"
assert_errno() {
    local expected=$1; shift
    local got
    got=$(errno_of "$@") || fail "errno.py $* could not run"
    if [[ "$got" != "$expected" ]]; then
        fail "$1 $2${3:+ $3}: expected $expected, got $got"
    fi
}

# assert_cmd_fails MESSAGE-REGEX COMMAND...: the command exits non-zero and
# its stderr matches MESSAGE-REGEX (extended, case-insensitive).
assert_cmd_fails() {
    local re=$1; shift
    local err rc=0
    err=$("$@" 2>&1 >/dev/null) || rc=$?
    if [[ $rc -eq 0 ]]; then
        fail "expected failure, but succeeded: $*"
    fi
    if ! grep -Eqi -- "$re" <<<"$err"; then
        fail "$*: exit $rc but stderr does not match /$re/: $err"
    fi
}

# wait_for SECONDS WHAT COMMAND...: poll COMMAND (every 50 ms) until it
# succeeds; fail naming WHAT when SECONDS (may be fractional) have passed.
# Prints nothing on success; sets WAITED_MS.
WAITED_MS=0
wait_for() {
    local secs=$1 what=$2; shift 2
    local start deadline t
    start=$(now_us)
    deadline=$(( start + $(awk -v s="$secs" 'BEGIN { printf "%d", s * 1000000 }') ))
    while :; do
        if "$@" >/dev/null 2>&1; then
            t=$(now_us)
            WAITED_MS=$(( (t - start) / 1000 ))
            return 0
        fi
        t=$(now_us)
        if (( t >= deadline )); then
            # One last try, showing its output, so the failure says why.
            if "$@"; then
                WAITED_MS=$(( (t - start) / 1000 ))
                return 0
            fi
            fail "not within ${secs}s: $what"
        fi
        sleep 0.05
    done
}

# Sorted lists, for comparisons.
sorted_ls() { ls -A -- "$1" | sort; }

# ---- requirements ----------------------------------------------------------

vmt_require() {
    [[ $(id -u) -eq 0 ]] || skip "must run as root (libvirtd, mount namespaces, FUSE)"
    [[ -c /dev/fuse ]] || skip "/dev/fuse is missing"
    local p
    for p in libvirtd virsh qemu-system-x86_64 qemu-img fusermount3 mountpoint \
             unshare setpriv python3 awk cmp; do
        command -v "$p" >/dev/null || skip "$p is not installed"
    done
    if [[ -z "${VMT_NO_VIRTMOUNT:-}" && ! -x "$VIRTMOUNT" ]]; then
        skip "virtmount binary not found at VIRTMOUNT=$VIRTMOUNT"
    fi
}

# The qemu driver will not initialise without these (NOTES.md).
vmt_ensure_qemu_user() {
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    getent passwd libvirt-qemu >/dev/null ||
        useradd --system -g libvirt-qemu -d /var/lib/libvirt -M \
            -s /usr/sbin/nologin libvirt-qemu
}

# ---- processes ---------------------------------------------------------------

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
    local st
    [[ -n $1 ]] || return 1
    { read -r st < "/proc/$1/stat"; } 2>/dev/null || return 1
    st=${st##*) }
    [[ ${st%% *} != Z ]]
}

# wait_pid_gone PID SECONDS: true once PID has exited (or is a zombie).
wait_pid_gone() {
    local i n=$(( $2 * 10 ))
    for ((i = 0; i < n; i++)); do
        pid_alive "$1" || return 0
        sleep 0.1
    done
    ! pid_alive "$1"
}

# kill_pid PID: SIGTERM, wait 5 s, then SIGKILL.
kill_pid() {
    pid_alive "$1" || return 0
    kill -TERM "$1" 2>/dev/null || true
    kill -CONT "$1" 2>/dev/null || true     # a stopped process gets it too
    wait_pid_gone "$1" 5 && return 0
    say "pid $1 ignored SIGTERM, sending SIGKILL"
    kill -KILL "$1" 2>/dev/null || true
    wait_pid_gone "$1" 5
}

# pids_with_arg ARG: processes that have ARG as one exact argument.
pids_with_arg() {
    local f pid a
    local -a args
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}; pid=${pid%/cmdline}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        { mapfile -d '' -t args < "$f"; } 2>/dev/null || continue
        for a in "${args[@]}"; do
            if [[ $a == "$1" ]]; then echo "$pid"; break; fi
        done
    done
}

# Children of process $1 (by parent pid).
child_pids() {
    local f st rest ppid
    for f in /proc/[0-9]*/stat; do
        { read -r st < "$f"; } 2>/dev/null || continue
        rest=${st##*) }
        read -r _ ppid _ <<<"$rest"
        if [[ $ppid == "$1" ]]; then
            st=${f#/proc/}; echo "${st%/stat}"
        fi
    done
}

# ---- the temporary directory, the watchdog, cleanup ---------------------------

VMT_DIR=
VMT_WATCHDOG=
declare -A VMT_MOUNT_PID=()    # mountpoint -> virtmount pid
declare -A VMT_MOUNT_LOG=()    # mountpoint -> its log
declare -a VMT_MOUNTS=()       # mountpoints, in mount order
declare -A LV_BASE=()          # instance -> its directory
declare -A LV_PORT=()          # instance -> TCP port ("" when unix only)
declare -A LV_HIDE=()          # instance -> paths hidden from its daemon, a line each
declare -a LV_INSTANCES=()

vmt_dump_logs() {
    local f
    for f in "${VMT_MOUNT_LOG[@]}"; do
        [[ -s $f ]] || continue
        echo "----- tail of $f" >&2
        tail -n 60 -- "$f" >&2 || true
    done
    for f in "${LV_BASE[@]}"; do
        if [[ -s $f/libvirtd.log ]]; then
            # Less what every start says in a bare container.
            echo "----- tail of $f/libvirtd.log (less the usual startup noise)" >&2
            grep -Ev 'libvirt version:|hostname:|dnsmasq|GDBus|DBus not available|udevGetDMIData|dmidecode|^$|security driver "none"|is tainted: high-privileges|At least one cgroup controller' \
                -- "$f/libvirtd.log" | tail -n 20 >&2 || true
        fi
        if [[ -s $f/stderr.log ]]; then
            echo "----- $f/stderr.log" >&2
            tail -n 20 -- "$f/stderr.log" >&2 || true
        fi
    done
}

vmt_cleanup() {
    local rc=$?
    set +e
    trap '' INT TERM HUP
    if [[ -n $VMT_WATCHDOG ]]; then
        kill -TERM "$VMT_WATCHDOG" 2>/dev/null
        wait "$VMT_WATCHDOG" 2>/dev/null
    fi
    if [[ -n $VMT_DIR && -e $VMT_DIR/timed-out ]]; then
        echo "FAIL ($VMT_NAME): timed out after ${VMT_TIMEOUT}s" >&2
        rc=1
    fi
    if [[ $rc -ne 0 && $rc -ne 77 ]]; then
        vmt_dump_logs
    fi

    local m pid i inst
    for ((i = ${#VMT_MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${VMT_MOUNTS[i]}
        pid=${VMT_MOUNT_PID[$m]:-}
        if is_mounted "$m"; then
            fusermount3 -u -- "$m" 2>/dev/null ||
                fusermount3 -u -z -- "$m" 2>/dev/null ||
                umount -l -- "$m" 2>/dev/null
        fi
        if [[ -n $pid ]]; then
            wait_pid_gone "$pid" 5 || kill_pid "$pid"
            wait "$pid" 2>/dev/null
        fi
        for pid in $(pids_with_arg "$m"); do
            echo "cleanup: killing leftover pid $pid ($(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null))" >&2
            kill_pid "$pid"
        done
    done

    for ((i = ${#LV_INSTANCES[@]} - 1; i >= 0; i--)); do
        inst=${LV_INSTANCES[i]}
        lv_running "$inst" && lv_purge_domains "$inst"
        lv_stop "$inst" >/dev/null
        lv_kill_qemus "$inst"
    done

    if [[ -n $VMT_DIR && -d $VMT_DIR ]]; then
        if grep -Fq -- " $VMT_DIR/" /proc/mounts; then
            echo "cleanup: mounts left under $VMT_DIR, not removing it:" >&2
            grep -F -- " $VMT_DIR/" /proc/mounts >&2
            rc=1
        elif [[ -n ${VMT_KEEP:-} ]]; then
            echo "kept $VMT_DIR" >&2
        else
            rm -rf -- "$VMT_DIR"
        fi
    fi
    exit "$rc"
}

vmt_on_signal() {
    echo "FAIL ($VMT_NAME): got SIG$1" >&2
    exit 1
}

# Ends the test after VMT_TIMEOUT seconds, through the EXIT trap.  A shell
# defers a trapped signal until its foreground command ends, so if that
# command hangs (say, on a stuck FUSE request) the watchdog then also
# terminates the test's child processes -- virtmount among them, which
# aborts the FUSE connection and releases whoever waits on it.
vmt_start_watchdog() {
    local main=$$ secs=$1 dir=$VMT_DIR
    (
        trap - EXIT
        sleep "$secs" &
        s=$!
        trap 'kill $s 2>/dev/null; exit 0' TERM
        wait "$s"
        touch "$dir/timed-out"
        echo "($VMT_NAME): watchdog: ${secs}s passed, ending the test" >&2
        kill -TERM "$main" 2>/dev/null
        sleep 3
        for p in $(child_pids "$main"); do
            [[ $p == "$BASHPID" ]] && continue
            kill -TERM "$p" 2>/dev/null
        done
        # A virtmount that is stuck (or stopped) ignores SIGTERM: killing it
        # closes its /dev/fuse, which fails every request waiting on it.
        sleep 3
        for p in $(child_pids "$main"); do
            [[ $p == "$BASHPID" ]] && continue
            kill -KILL "$p" 2>/dev/null
        done
    ) &
    VMT_WATCHDOG=$!
}

vmt_init() {
    vmt_require
    vmt_ensure_qemu_user
    VMT_TIMEOUT=${VMT_TIMEOUT:-150}
    trap vmt_cleanup EXIT
    trap 'vmt_on_signal INT' INT
    trap 'vmt_on_signal TERM' TERM
    trap 'vmt_on_signal HUP' HUP
    # The prefix is what .ci/run recognises as a test's (its mounts, and the
    # processes in a test libvirtd's mount namespace).
    VMT_DIR=$(mktemp -d "/var/tmp/vmt-itest.$VMT_NAME.XXXXXX")
    chmod 755 "$VMT_DIR"
    # .ci/run's mark: whatever it finds left in this directory is its own.
    if [[ -n ${VMT_CI_RUN:-} ]]; then echo "VMT_CI_RUN=$VMT_CI_RUN" > "$VMT_DIR/ci-run"; fi
    vmt_start_watchdog "$VMT_TIMEOUT"
    say "directory $VMT_DIR, timeout ${VMT_TIMEOUT}s"
}

# ---- private libvirtd instances -----------------------------------------------

free_tcp_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

lv_sock() { echo "${LV_BASE[$1]}/sock/libvirt-sock"; }
# The instance's unix-socket URI.
lv_uri() { echo "qemu+unix:///system?socket=$(lv_sock "$1")"; }
# Its loopback TCP URI (only for instances started with --tcp).
lv_tcp_uri() {
    [[ -n ${LV_PORT[$1]:-} ]] || fail "instance $1 has no TCP listener"
    echo "qemu+tcp://127.0.0.1:${LV_PORT[$1]}/system"
}
lv_pid() { cat "${LV_BASE[$1]}/libvirtd.pid" 2>/dev/null; }
lv_running() {
    local pid
    pid=$(lv_pid "$1") || return 1
    [[ -n $pid ]] && pid_alive "$pid"
}

# lv_virsh INSTANCE ARGS...: virsh on that instance's unix socket.
lv_virsh() {
    local inst=$1; shift
    virsh -q -c "$(lv_uri "$inst")" "$@"
}

lv_write_config() {
    local inst=$1 b=${LV_BASE[$1]}
    mkdir -p "$b"/{etc,run,lib,cache,log,sock}
    cat > "$b/etc/libvirtd.conf" <<EOF
unix_sock_dir = "$b/sock"
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:$b/libvirtd.log"
EOF
    if [[ -n ${LV_PORT[$inst]} ]]; then
        cat >> "$b/etc/libvirtd.conf" <<EOF
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "${LV_PORT[$inst]}"
auth_tcp = "none"
EOF
    fi
    # A bare container: no libvirt-qemu user for qemu, no security driver,
    # no cgroups or per-qemu /dev namespace, no virtlogd.
    cat > "$b/etc/qemu.conf" <<EOF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
EOF
}

# lv_start INSTANCE [--tcp] [--hide PATH]...: start (or restart, same
# directories, port and hidden paths) the private libvirtd named INSTANCE;
# waits until it answers.  --hide mounts an empty directory over PATH in the
# daemon's mount namespace (virtmount's state dir, /boot: a "remote" host
# must get the appliance through libvirt).
lv_start() {
    local inst=$1; shift
    local tcp='' hide=()
    while (( $# )); do
        case $1 in
            --tcp) tcp=--tcp; shift ;;
            --hide) hide+=("$2"); shift 2 ;;
            *) fail "lv_start: unknown argument $1" ;;
        esac
    done
    [[ -n $VMT_DIR ]] || fail "lv_start before vmt_init"
    if [[ -z ${LV_BASE[$inst]:-} ]]; then
        LV_BASE[$inst]=$VMT_DIR/lv-$inst
        LV_PORT[$inst]=
        if [[ $tcp == --tcp ]]; then LV_PORT[$inst]=$(free_tcp_port); fi
        LV_HIDE[$inst]=$(printf '%s\n' "${hide[@]}")
        LV_INSTANCES+=("$inst")
    fi
    if lv_running "$inst"; then fail "libvirtd $inst is already running"; fi
    local b=${LV_BASE[$inst]} listen= h
    lv_write_config "$inst"
    [[ -n ${LV_PORT[$inst]} ]] && listen=--listen
    rm -f "$b/libvirtd.pid"
    mkdir -p "$b/empty" /etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
    while read -r h; do [[ -n $h ]] && mkdir -p -- "$h"; done <<<"${LV_HIDE[$inst]}"
    # unshare -m makes a private mount namespace (propagation private): the
    # binds are seen by this libvirtd and its qemus only.  The namespace
    # starts as a copy of ours, virtmount mounts included: detach those
    # copies, or they would keep each FUSE connection alive after its
    # `fusermount3 -u`, and virtmount would never exit.
    unshare -m bash -c '
        set -e
        awk '\''$3 == "fuse.virtmount" { print $2 }'\'' /proc/self/mounts |
            while read -r m; do umount -l "$(printf "%b" "$m")" || true; done
        mount --bind "$1/etc" /etc/libvirt
        mount --bind "$1/run" /run/libvirt
        mount --bind "$1/lib" /var/lib/libvirt
        mount --bind "$1/cache" /var/cache/libvirt
        mount --bind "$1/log" /var/log/libvirt
        # libvirt locks chardev paths in /run/lock, named after the path: two
        # instances both name their first appliance domain-1-..., so each
        # gets a lock dir of its own.
        mkdir -p "$1/lock" /run/lock
        mount --bind "$1/lock" /run/lock
        # the hidden paths, covered last
        while read -r h; do
            [[ -n $h ]] && mount --bind "$1/empty" "$h"
        done <<<"$3"
        exec libvirtd --daemon $2 --config /etc/libvirt/libvirtd.conf \
            --pid-file "$1/libvirtd.pid"' \
        lv-start "$b" "$listen" "${LV_HIDE[$inst]}" </dev/null >>"$b/stderr.log" 2>&1 ||
        fail "libvirtd $inst did not start: $(tail -n 5 "$b/stderr.log" "$b/libvirtd.log" 2>/dev/null)"
    local i
    for ((i = 0; i < 300; i++)); do
        if virsh -c "$(lv_uri "$inst")" uri >/dev/null 2>&1; then
            if [[ -z ${LV_PORT[$inst]} ]] ||
               virsh -c "$(lv_tcp_uri "$inst")" uri >/dev/null 2>&1; then
                say "libvirtd $inst up: pid $(lv_pid "$inst"), $(lv_uri "$inst")${LV_PORT[$inst]:+, $(lv_tcp_uri "$inst")}${LV_HIDE[$inst]:+, hiding $(echo ${LV_HIDE[$inst]})}"
                return 0
            fi
        fi
        if [[ -s $b/libvirtd.pid ]] && ! lv_running "$inst"; then break; fi
        sleep 0.1
    done
    fail "libvirtd $inst does not answer: $(tail -n 5 "$b/stderr.log" "$b/libvirtd.log" 2>/dev/null)"
}

# lv_stop INSTANCE: destroy its running domains (so no qemu outlives it),
# then SIGTERM the daemon and wait for it.  Definitions stay on disk.
lv_stop() {
    local inst=$1 pid d
    [[ -n ${LV_BASE[$inst]:-} ]] || return 0
    pid=$(lv_pid "$inst") || return 0
    if pid_alive "$pid"; then
        for d in $(lv_virsh "$inst" list --name 2>/dev/null); do
            lv_virsh "$inst" destroy "$d" >/dev/null 2>&1 || true
        done
        if ! kill_pid "$pid"; then
            echo "libvirtd $inst (pid $pid) does not exit" >&2
            return 1
        fi
    fi
    rm -f "${LV_BASE[$inst]}/libvirtd.pid"
    say "libvirtd $inst stopped"
}

# lv_restart INSTANCE: stop then start with the same directories and port.
lv_restart() {
    lv_stop "$1"
    lv_start "$1"
}

# Destroy and undefine every domain of INSTANCE.
lv_purge_domains() {
    local inst=$1 d
    for d in $(lv_virsh "$inst" list --name 2>/dev/null); do
        lv_virsh "$inst" destroy "$d" >/dev/null 2>&1
    done
    for d in $(lv_virsh "$inst" list --all --name 2>/dev/null); do
        lv_virsh "$inst" undefine "$d" >/dev/null 2>&1
    done
}

# After the daemon is gone: kill any qemu it left running (its pid files
# live in the instance's private /run/libvirt/qemu).
lv_kill_qemus() {
    local f pid
    for f in "${LV_BASE[$1]}"/run/qemu/*.pid; do
        [[ -e $f ]] || continue
        pid=$(cat "$f" 2>/dev/null) || continue
        if [[ -n $pid ]] && pid_alive "$pid" &&
           grep -q qemu "/proc/$pid/comm" 2>/dev/null; then
            echo "cleanup: killing leftover qemu pid $pid" >&2
            kill_pid "$pid"
        fi
    done
}

# ---- images and domains --------------------------------------------------------

# mk_image PATH FORMAT SIZE  (qemu-img sizes: 64M, 1G)
mk_image() {
    qemu-img create -q -f "$2" "$1" "$3" || fail "qemu-img create $*"
}

# disk_xml PATH FORMAT TARGET BUS [SERIAL] [ro]: a file disk.
disk_xml() {
    local path=$1 fmt=$2 target=$3 bus=$4 serial=${5:-} ro=${6:-}
    echo "<disk type='file' device='disk'>"
    echo "  <driver name='qemu' type='$fmt'/>"
    echo "  <source file='$path'/>"
    echo "  <target dev='$target' bus='$bus'/>"
    [[ -n $serial ]] && echo "  <serial>$serial</serial>"
    [[ $ro == ro ]] && echo "  <readonly/>"
    echo "</disk>"
}

# cdrom_xml TARGET [PATH]: an IDE CD-ROM, with media when PATH is given.
cdrom_xml() {
    echo "<disk type='file' device='cdrom'>"
    echo "  <driver name='qemu' type='raw'/>"
    [[ -n ${2:-} ]] && echo "  <source file='$2'/>"
    echo "  <target dev='$1' bus='ide'/>"
    echo "  <readonly/>"
    echo "</disk>"
}

# floppy_xml TARGET [PATH]: a floppy drive, with media when PATH is given.
floppy_xml() {
    echo "<disk type='file' device='floppy'>"
    echo "  <driver name='qemu' type='raw'/>"
    [[ -n ${2:-} ]] && echo "  <source file='$2'/>"
    echo "  <target dev='$1' bus='fdc'/>"
    echo "</disk>"
}

# domain_xml NAME [DEVICE-XML...]: a small TCG domain (64 MiB, SeaBIOS).
# With no bootable disk it idles in the firmware once started ("No bootable
# device"), which is all a test needs of a running guest.
domain_xml() {
    local name=$1; shift
    cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
EOF
    local d
    for d in "$@"; do printf '%s\n' "$d"; done
    cat <<EOF
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# lv_define INSTANCE NAME [DEVICE-XML...]: define a domain on INSTANCE.
lv_define() {
    local inst=$1 name=$2; shift 2
    local f=$VMT_DIR/$inst-$name.xml
    domain_xml "$name" "$@" > "$f"
    lv_virsh "$inst" define "$f" >/dev/null || fail "virsh define $name on $inst failed ($f)"
}

# lv_redefine INSTANCE NAME [DEVICE-XML...]: define NAME again (same UUID)
# with these devices.
lv_redefine() {
    local inst=$1 name=$2; shift 2
    local f=$VMT_DIR/$inst-$name.xml uuid
    uuid=$(lv_virsh "$inst" domuuid "$name" | sed '/^$/d') || fail "no domain $name on $inst"
    domain_xml "$name" "$@" | sed "s|^  <name>.*</name>\$|&\n  <uuid>$uuid</uuid>|" > "$f"
    lv_virsh "$inst" define "$f" >/dev/null || fail "virsh define (again) $name on $inst failed ($f)"
}

# The capacity virsh reports for a domain's disk: domblk_capacity INST DOM TARGET
domblk_capacity() {
    lv_virsh "$1" domblkinfo "$2" "$3" | awk '$1 == "Capacity:" { print $2 }'
}

# ---- virtmount -------------------------------------------------------------------

is_mounted() {
    awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts
}

# The filesystem type /proc/mounts gives for mountpoint $1.
mount_type() {
    awk -v m="$1" '$2 == m { t = $3 } END { print t }' /proc/mounts
}

# vm_mount MOUNTPOINT OPTIONS [EXTRA-ARGS...]: start `virtmount -f` in the
# background and wait (bounded) until MOUNTPOINT is mounted.  OPTIONS is the
# -o string; statedir=$VMT_DIR/state is added unless it names a statedir.
vm_mount() {
    local m=$1 opts=$2; shift 2
    if [[ $opts != *statedir=* ]]; then
        opts="statedir=$VMT_DIR/state${opts:+,$opts}"
        mkdir -p "$VMT_DIR/state"
    fi
    mkdir -p -- "$m"
    is_mounted "$m" && fail "$m is already mounted"
    local log
    log=$VMT_DIR/virtmount-$(basename "$m").log
    echo "=== $(date '+%T') $VIRTMOUNT -f -o $opts $* $m" >> "$log"
    # A background job of a script starts with SIGINT and SIGQUIT ignored,
    # and libfuse leaves an ignored signal alone: give them back their
    # default, as an interactive shell would, so ^C (SIGINT) can be tested.
    env --default-signal=INT,QUIT "$VIRTMOUNT" -f -o "$opts" "$@" "$m" </dev/null >>"$log" 2>&1 &
    local pid=$!
    VMT_MOUNT_PID[$m]=$pid
    VMT_MOUNT_LOG[$m]=$log
    local known=0 x
    for x in "${VMT_MOUNTS[@]}"; do [[ $x == "$m" ]] && known=1; done
    (( known )) || VMT_MOUNTS+=("$m")
    local i
    for ((i = 0; i < 300; i++)); do
        if is_mounted "$m" && mountpoint -q -- "$m"; then
            say "mounted $m (virtmount pid $pid, -o $opts)"
            return 0
        fi
        if ! pid_alive "$pid"; then
            local rc=0
            wait "$pid" || rc=$?
            fail "virtmount exited with status $rc before mounting $m (its log is below)"
        fi
        sleep 0.1
    done
    fail "$m not mounted within 30 s"
}

# vm_umount MOUNTPOINT [fusermount|term|int]: unmount (default: fusermount3
# -u; or SIGTERM/SIGINT to virtmount), wait (bounded) for virtmount to exit,
# and check it exited 0 and left nothing: no mount, no process.
vm_umount() {
    local m=$1 how=${2:-fusermount}
    local pid=${VMT_MOUNT_PID[$m]:-}
    [[ -n $pid ]] || fail "vm_umount: $m was not mounted by vm_mount"
    case $how in
        fusermount)
            local err
            err=$(fusermount3 -u -- "$m" 2>&1) || fail "fusermount3 -u $m failed: $err" ;;
        term) kill -TERM "$pid" ;;
        int) kill -INT "$pid" ;;
        *) fail "vm_umount: unknown method $how" ;;
    esac
    wait_pid_gone "$pid" 15 || fail "virtmount (pid $pid) still running 15 s after unmount ($how)"
    local rc=0
    wait "$pid" || rc=$?
    VMT_MOUNT_PID[$m]=
    [[ $rc -eq 0 ]] || fail "virtmount exited with status $rc after unmount ($how) (its log is below)"
    local i
    for ((i = 0; i < 50; i++)); do is_mounted "$m" || break; sleep 0.1; done
    is_mounted "$m" && fail "$m is still mounted after virtmount exited ($how)"
    local left
    left=$(pids_with_arg "$m")
    [[ -z $left ]] || fail "processes left for $m after unmount ($how): $left"
    say "unmounted $m ($how), virtmount exited 0, nothing left"
}

vm_pid() { echo "${VMT_MOUNT_PID[$1]:-}"; }

# status_section MOUNTPOINT HOST URI: HOST's part of MOUNTPOINT/.status --
# its section when sections start with "host NAME", else the lines that
# give its URI.
status_section() {
    awk -v h="$2" -v u="$3" '
        /^host / { sections = 1; sec = ($2 == h) }
        sec { print }
        !sections && index($0, u) { print }' "$1/.status"
}
