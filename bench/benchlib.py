"""Helpers shared by the benchmarks in bench/ (imported, not run).

Process and mount bookkeeping, bounded waits on FUSE, the embedded libvirt
driver's qemu.conf, and the setup every benchmark repeats: run a private
copy of virtmount, define domains under qemu:///embed, mount virtmount and
guestmount, drop the host's page cache, and clean up whatever names the
benchmark's own temporary directory.  Nothing here prints to stdout: the
report is the benchmark's; progress goes to stderr through log().
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
MiB = 1024 * 1024

# qemu.conf for libvirt's embedded driver (qemu:///embed?root=DIR reads
# DIR/etc/qemu.conf): root, no cgroups, no namespaces, no virtlogd.
QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---- processes -------------------------------------------------------------

def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(")") + 2] != "Z"


def wait_gone(pid, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def cpu_seconds(pid):
    """User + system CPU time of PID (all its threads), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return None
    fields = st[st.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vmrss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def pids_mentioning(text, qemu_only=False):
    """Processes whose command line contains TEXT (ours: it is our temp dir)."""
    out = []
    for pid in all_pids():
        if pid == os.getpid():
            continue
        args = cmdline(pid)
        if not args or not any(text in a for a in args):
            continue
        if qemu_only and not os.path.basename(args[0]).startswith("qemu-system"):
            continue
        out.append(pid)
    return out


def is_mounted(path):
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_busy_since(prev=None):
    """Machine-wide CPU use: call with no argument to start, then with what it
    returned to get the busy fraction (0..1 of all CPUs) in between."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle, total = v[3] + v[4], sum(v[:8])
    if prev is None:
        return (idle, total)
    di, dt = idle - prev[0], total - prev[1]
    return 1.0 - di / dt if dt > 0 else 0.0


def drop_caches():
    """Empty the host's page cache (images read by qemu come from it)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# ---- bounded waits on FUSE -------------------------------------------------

class Watchdog:
    """Bounds a blocking call on FUSE: when it fires, it SIGKILLs the victims
    (virtmount or guestmount), which aborts the FUSE connection and so ends
    whatever request is stuck; the call then fails and the run stops."""

    def __init__(self):
        self.victims = set()
        self.fired = None

    def __call__(self, secs, what):
        return _Deadline(self, secs, what)


class _Deadline:
    def __init__(self, dog, secs, what):
        self.dog, self.secs, self.what = dog, secs, what

    def fire(self):
        self.dog.fired = self.what
        log(f"watchdog: {self.what} took over {self.secs} s: killing {sorted(self.dog.victims)}")
        for pid in list(self.dog.victims):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def __enter__(self):
        self.timer = threading.Timer(self.secs, self.fire)
        self.timer.daemon = True
        self.timer.start()

    def __exit__(self, *exc):
        self.timer.cancel()
        if self.dog.fired:
            raise BenchError(f"timed out: {self.dog.fired}")
        return False


WATCH = Watchdog()


# ---- setup -----------------------------------------------------------------

def check_root_and_tools(tools):
    if os.geteuid() != 0:
        raise BenchError("run as root (FUSE mounts, libvirt's embedded qemu driver, drop_caches)")
    if not os.path.exists("/dev/fuse"):
        raise BenchError("/dev/fuse is missing")
    for p in tools:
        if not shutil.which(p):
            raise BenchError(f"{p} is not installed")
    # libvirt's qemu driver will not start without them (NOTES.md).
    if subprocess.run(["getent", "group", "libvirt-qemu"], capture_output=True).returncode:
        subprocess.run(["groupadd", "--system", "libvirt-qemu"], check=True)
    if subprocess.run(["getent", "passwd", "libvirt-qemu"], capture_output=True).returncode:
        subprocess.run(["useradd", "--system", "-g", "libvirt-qemu", "-d", "/var/lib/libvirt",
                        "-M", "-s", "/usr/sbin/nologin", "libvirt-qemu"], check=True)


def snapshot_binaries(virtmount, workdir):
    """Copy virtmount and its helpers (it finds them in ../appliance beside
    itself) into WORKDIR/bin, so that a rebuild of the tree while a benchmark
    runs changes nothing under it.  Returns the copy's path."""
    if not os.access(virtmount, os.X_OK):
        raise BenchError(f"no virtmount at {virtmount} (ninja -C build, or --virtmount)")
    src_fs = os.path.dirname(virtmount)
    dst_fs = os.path.join(workdir, "bin", "fs")
    os.makedirs(dst_fs)
    shutil.copy2(virtmount, dst_fs)
    helpers = os.path.join(os.path.dirname(src_fs), "appliance")
    if os.path.isdir(helpers):
        dst = os.path.join(workdir, "bin", "appliance")
        os.makedirs(dst)
        for name in ("virtmount-connector", "virtmount-build-appliance"):
            if os.path.exists(os.path.join(helpers, name)):
                shutil.copy2(os.path.join(helpers, name), dst)
    return os.path.join(dst_fs, os.path.basename(virtmount))


def embed_setup(statedir):
    """Write STATEDIR/embed/etc/qemu.conf; return the embedded driver's URI."""
    sock = os.path.join(statedir, "embed/lib/qemu/channel/target/"
                        "domain-NNN-virtmount-appliance-/org.libguestfs.channel.0")
    if len(sock) > 107:
        raise BenchError(f"{statedir} is too long a path: the appliance's channel socket "
                         f"would be {sock} ({len(sock)} > 107 bytes)")
    embed = os.path.join(statedir, "embed")
    os.makedirs(os.path.join(embed, "etc"), exist_ok=True)
    with open(os.path.join(embed, "etc", "qemu.conf"), "w") as f:
        f.write(QEMU_CONF)
    return f"qemu:///embed?root={embed}"


def domain_xml(name, image, memory_mib=64):
    qemu = shutil.which("qemu-system-x86_64")
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>{qemu}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{image}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def define_domains(uri, workdir, domains):
    """Define DOMAINS ({name: image}) in URI with one virsh (the embedded
    driver initialises, and probes qemu, once)."""
    cmds = []
    for name, image in domains.items():
        xml = os.path.join(workdir, f"{name}.xml")
        with open(xml, "w") as f:
            f.write(domain_xml(name, image))
        cmds.append(f"define {xml}")
    r = subprocess.run(["virsh", "-q", "-c", uri, " ; ".join(cmds)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode:
        raise BenchError(f"virsh define failed: {r.stderr.strip()}")


class VirtMount:
    """One virtmount in the foreground, mounted at MNT until unmount()."""

    def __init__(self, binary, mnt, opts, logpath):
        self.binary, self.mnt, self.opts, self.logpath = binary, mnt, opts, logpath
        self.proc = None

    def start(self, wait_for, timeout=60):
        """Mount; return when the path WAIT_FOR (inside the mount) exists."""
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = subprocess.Popen([self.binary, "-f", "-o", self.opts, self.mnt],
                                     stdin=subprocess.DEVNULL, stdout=open(self.logpath, "w"),
                                     stderr=subprocess.STDOUT)
        WATCH.victims.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"virtmount exited ({self.proc.returncode}); see {self.logpath}")
            if is_mounted(self.mnt):
                with WATCH(60, f"looking up {wait_for}"):
                    if os.path.exists(wait_for):
                        return
            if time.monotonic() > deadline:
                raise BenchError(f"virtmount did not show {wait_for} within {timeout} s")
            time.sleep(0.02)

    def unmount(self):
        if not self.proc:
            return
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log(f"virtmount pid {self.proc.pid} still running 60 s after unmount: killing it")
            self.proc.kill()
            self.proc.wait()
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        WATCH.victims.discard(self.proc.pid)
        self.proc = None

    def log_tail(self, lines=15):
        try:
            with open(self.logpath) as f:
                return f.readlines()[-lines:]
        except OSError:
            return []


class GuestMount:
    """guestmount --ro of one image (stock libguestfs, force_tcg here), its
    scratch files in TMPDIR so that its qemu can be found (and cleaned up)."""

    def __init__(self, image, mnt, tmpdir, device="/dev/sda"):
        self.image, self.mnt, self.tmpdir, self.device = image, mnt, tmpdir, device
        self.pid = None
        self.qemu = None

    def env(self):
        os.makedirs(self.tmpdir, exist_ok=True)
        return dict(os.environ, LIBGUESTFS_BACKEND_SETTINGS="force_tcg",
                    LIBGUESTFS_TMPDIR=self.tmpdir)

    def mount(self, timeout=300):
        os.makedirs(self.mnt, exist_ok=True)
        pidfile = self.mnt + ".pid"
        with WATCH(timeout, "guestmount"):
            subprocess.run(["guestmount", "--format=raw", "-a", self.image, "-m", self.device,
                            "--ro", "--pid-file", pidfile, self.mnt], env=self.env(),
                           check=True, stdin=subprocess.DEVNULL)
        self.pid = int(open(pidfile).read().strip())
        WATCH.victims.add(self.pid)
        qemus = pids_mentioning(self.tmpdir, qemu_only=True)
        if len(qemus) != 1:
            raise BenchError(f"expected one qemu of guestmount, found {qemus}")
        self.qemu = qemus[0]

    def unmount(self):
        if self.pid is None:
            return
        subprocess.run(["guestunmount", "--retry=5", self.mnt], capture_output=True, timeout=120)
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        # guestmount syncs and shuts its appliance down after the unmount: on
        # a loaded machine under TCG that can take a minute or more.
        t0 = time.monotonic()
        for pid, secs in ((self.pid, 180), (self.qemu, 60)):
            if pid and not wait_gone(pid, secs):
                log(f"guestmount: pid {pid} still there {time.monotonic() - t0:.0f} s after "
                    f"guestunmount: killing it")
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                if not wait_gone(pid, 10):
                    raise BenchError(f"guestmount's pid {pid} does not exit")
        WATCH.victims.discard(self.pid)
        self.pid = self.qemu = None


def cleanup_dir(workdir, keep=False):
    """End whatever process still names WORKDIR (guestmount, its qemu, an
    appliance qemu: the embedded driver's domains outlive the process that
    started them), and remove WORKDIR unless KEEP or something is still
    mounted in it.  False if anything was left over."""
    ok = True
    if not workdir:
        return ok
    for _ in range(2):
        left = pids_mentioning(workdir)
        for pid in left:
            args = cmdline(pid) or ["?"]
            log(f"cleanup: pid {pid} ({os.path.basename(args[0])}) left over: ending it")
            ok = False
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        for pid in left:
            if not wait_gone(pid, 5):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                wait_gone(pid, 5)
    with open("/proc/mounts") as f:
        busy = [line.split()[1] for line in f if line.split()[1].startswith(workdir + "/")]
    for mnt in busy:
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    with open("/proc/mounts") as f:
        busy = [line.split()[1] for line in f if line.split()[1].startswith(workdir + "/")]
    if busy:
        log(f"cleanup: still mounted, keeping {workdir}: {busy}")
        return False
    if keep:
        log(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return ok


def describe_build(virtmount):
    version = subprocess.run([virtmount, "--version"], capture_output=True,
                             text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", SRC, "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return f"{version}{' (' + commit + ')' if commit else ''}"



# ---- memory of a process over time ------------------------------------------

def status_kib(pid, field):
    """A "Field:  N kB" line of /proc/PID/status (VmRSS, VmHWM, ...), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss(pid):
    """Reset PID's VmHWM to its current VmRSS (clear_refs 5, Linux 4.0+);
    False if the kernel would not."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5\n")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples PID's VmRSS every INTERVAL seconds from a thread (it reads only
    /proc, never the FUSE mount), so that a peak between two readings by the
    benchmark is seen.  samples is a list of (time.monotonic(), KiB)."""

    def __init__(self, pid, interval=0.5):
        self.pid, self.interval = pid, interval
        self.samples = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_event.is_set():
            kib = vmrss_kib(self.pid)
            if kib is not None:
                self.samples.append((time.monotonic(), kib))
            self.stop_event.wait(self.interval)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stop_event.set()
        self.thread.join(timeout=5)

    def between(self, t0, t1):
        """The samples taken from T0 to T1."""
        return [(t, kib) for t, kib in self.samples if t0 <= t <= t1]
