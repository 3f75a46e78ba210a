/* One appliance: a transient libvirt domain booted from the fixed appliance
 * on a host's own connection, and the guestfs handle joined to it.
 *
 * Boot: create the domain (KVM when it works, else TCG, the answer kept per
 * host in the state dir), open its console and its guestfsd channel, wait
 * for the launch flag (bounded), then launch a stock guestfs handle whose
 * "qemu" is our connector: the connector hands us the handle's socket over
 * an abstract unix socket and the channel replays the flag to it.
 *
 * A plug asked for while the appliance boots waits for that boot.  Calls on
 * the handle are serialized by its lock.  This module knows drives only as
 * XML to attach and detach and SCSI units to hand out; plug.c knows disks.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <libvirt/virterror.h>

#include "cleanup.h"

#define KVM_BOOT_TIMEOUT_MS 30000
#define TCG_BOOT_TIMEOUT_MS 240000
#define CHANNEL_NAME        "org.libguestfs.channel.0"
#define READER_NAME         "org.virtmount.reader.%u"
/* A reader's guestfsd starts at udev's coldplug, before the main one: its
 * flag is normally there when the main one's comes. */
#define READER_FLAG_TIMEOUT_MS 5000

/* Whoever finds it BOOTING or STOPPING waits for the outcome.  The lock is
 * never held across anything slow, so .status and plugs of other
 * appliances never wait on a boot. */
enum state { STOPPED, BOOTING, RUNNING, STOPPING };

/* Where the connector of one handle hands its socket over. */
struct relay {
    struct vm_appliance *a;
    unsigned index; /* 0: the main channel; i: reader i */
    int fd;
    int watch;
};

/* A reader: a second guestfsd in the same appliance, on a channel of its own,
 * for reads of files and images (see vm_appliance_reader). */
struct reader {
    pthread_mutex_t lock; /* held through each call, like handle_lock */
    guestfs_h *g;         /* NULL: none this boot, or gone */
    bool up;              /* g is set (read without the lock, for .status) */
    struct vm_channel *channel;
};

struct vm_appliance {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct vm_host *host;
    char *name;
    enum state state;
    char *last_error; /* why the last boot failed */
    bool kvm;
    time_t started;
    double boot_seconds;
    unsigned generation; /* counts boots: a plug knows which boot it belongs to */

    virConnectPtr conn;
    virDomainPtr dom;
    struct vm_channel *channel;
    struct vm_channel *console;
    struct relay relays[1 + VM_APPLIANCE_READERS];
    struct reader readers[VM_APPLIANCE_READERS];
    struct vm_appliance_files files;

    pthread_mutex_t handle_lock;
    guestfs_h *g;

    bool dev_mounted;             /* devtmpfs at VM_APPLIANCE_DEVDIR in the sysroot, this boot */
    bool units[VM_MAX_UNITS + 1]; /* unit 0 is the root */
    unsigned nunits;

    vm_appliance_dead_fn on_dead;
    void *on_dead_opaque;
};

void vm_notice(int level, const char *fmt, ...)
{
    if (!vm_settings.notice)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    vm_settings.notice(level, msg);
}

int vm_spawn_detached(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(&t, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return e ? vm_error(e, "cannot start a thread: %s", strerror(e)) : 0;
}

static char instance_id[17];
static pthread_once_t instance_once = PTHREAD_ONCE_INIT;

static void compute_instance_id(void)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    uint64_t h = 14695981039346656037ULL;
    for (const char *p = host; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    for (const char *p = vm_settings.statedir; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    snprintf(instance_id, sizeof instance_id, "%016llx", (unsigned long long)h);
}

/* A short id of this virtmount instance (host name and state dir) that names
 * its appliances, so that a later start finds and removes what a killed
 * instance left, and never touches another instance's. */
const char *vm_instance_id(void)
{
    pthread_once(&instance_once, compute_instance_id);
    return instance_id;
}

struct vm_appliance *vm_appliance_new(struct vm_host *h, unsigned index,
                                      vm_appliance_dead_fn on_dead, void *opaque)
{
    struct vm_appliance *a = calloc(1, sizeof *a);
    if (!a)
        return vm_error(ENOMEM, "out of memory"), NULL;
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->cond, NULL);
    pthread_mutex_init(&a->handle_lock, NULL);
    a->host = h;
    for (unsigned i = 0; i <= VM_APPLIANCE_READERS; i++)
        a->relays[i] = (struct relay){.a = a, .index = i, .fd = -1, .watch = -1};
    for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++)
        pthread_mutex_init(&a->readers[i].lock, NULL);
    a->on_dead = on_dead;
    a->on_dead_opaque = opaque;
    if (asprintf(&a->name, "%s%s-%u", VM_APPLIANCE_PREFIX, vm_instance_id(), index) < 0) {
        free(a);
        return vm_error(ENOMEM, "out of memory"), NULL;
    }
    return a;
}

/* ---- KVM or TCG, remembered per host ---------------------------------- */

static char *accel_memory_path(struct vm_host *h)
{
    char *p;
    if (asprintf(&p, "%s/accel-%s", vm_settings.statedir, vm_host_name(h)) < 0)
        return NULL;
    return p;
}

/* What worked last time on this host: 1 KVM, 0 TCG, -1 unknown. */
static int accel_remembered(struct vm_host *h)
{
    CLEANUP_FREE char *path = accel_memory_path(h);
    FILE *f = path ? fopen(path, "re") : NULL;
    if (!f)
        return -1;
    char word[16] = "";
    int r = fscanf(f, "%15s", word) == 1 ? (strcmp(word, "kvm") == 0 ? 1 : 0) : -1;
    fclose(f);
    return r;
}

static void accel_remember(struct vm_host *h, bool kvm)
{
    CLEANUP_FREE char *path = accel_memory_path(h);
    FILE *f = path ? fopen(path, "we") : NULL;
    if (f) {
        fputs(kvm ? "kvm\n" : "tcg\n", f);
        fclose(f);
    }
}

/* ---- the relay: where the connector hands over the handle's socket ---- */

static int receive_fd(int sock)
{
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

/* On the event loop: the connector calls once per boot and handle. */
static void relay_cb(int watch, int fd, int events, void *opaque)
{
    struct relay *rl = opaque;
    struct vm_appliance *a = rl->a;
    int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0)
        return;
    struct ucred cred;
    socklen_t len = sizeof cred;
    /* Only our own user's connector may join a handle to the appliance. */
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != getuid()) {
        close(conn);
        return;
    }
    int handle_fd = receive_fd(conn);
    pthread_mutex_lock(&a->lock);
    struct vm_channel *c = rl->index ? a->readers[rl->index - 1].channel : a->channel;
    if (handle_fd >= 0 && c && vm_channel_attach(c, handle_fd) < 0)
        close(handle_fd);
    /* The connector stays connected to the relay until the handle closes;
     * keep CONN open for that long by leaking it into the relay. */
    if (rl->watch >= 0) {
        virEventRemoveHandle(rl->watch);
        rl->watch = -1;
    }
    close(rl->fd);
    rl->fd = conn;
    pthread_mutex_unlock(&a->lock);
}

static int relay_listen(struct relay *rl, char *name, size_t size)
{
    static unsigned counter;
    snprintf(name, size, "virtmount-%d-%u", (int)getpid(),
             __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(sa.sun_path + 1, name, len); /* abstract: no path, no length trouble */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return vm_error(errno, "cannot create the relay socket: %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&sa,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)) < 0 ||
        listen(fd, 1) < 0) {
        int e = errno;
        close(fd);
        return vm_error(e, "cannot listen on the relay socket: %s", strerror(e));
    }
    rl->fd = fd;
    rl->watch = virEventAddHandle(fd, VIR_EVENT_HANDLE_READABLE, relay_cb, rl, NULL);
    if (rl->watch < 0)
        return vm_error_libvirt(EIO, "cannot watch the relay socket");
    return 0;
}

static void relay_close(struct relay *rl)
{
    if (rl->watch >= 0)
        virEventRemoveHandle(rl->watch);
    rl->watch = -1;
    if (rl->fd >= 0)
        close(rl->fd);
    rl->fd = -1;
}

/* ---- boot and stop ----------------------------------------------------- */

struct death {
    struct vm_appliance *a;
    unsigned generation;
    char *why;
};

static void *death_thread(void *arg)
{
    struct death *d = arg;
    d->a->on_dead(d->a, d->generation, d->why);
    free(d->why);
    free(d);
    return NULL;
}

/* On the event loop: the channel ended by itself (appliance died, libvirtd
 * restarted).  What follows blocks, so it runs on a thread of its own. */
static void channel_closed(void *opaque, const char *reason)
{
    struct vm_appliance *a = opaque;
    struct death *d = calloc(1, sizeof *d);
    if (!d)
        return;
    d->a = a;
    pthread_mutex_lock(&a->lock);
    d->generation = a->generation;
    pthread_mutex_unlock(&a->lock);
    d->why = strdup(reason ? reason : "channel closed");
    if (vm_spawn_detached(death_thread, d) < 0) {
        free(d->why);
        free(d);
    }
}

/* Tear down whatever a boot set up (lock not held: this is slow). */
static void teardown(struct vm_appliance *a)
{
    pthread_mutex_lock(&a->handle_lock);
    guestfs_h *g = a->g;
    a->g = NULL;
    pthread_mutex_unlock(&a->handle_lock);
    if (g)
        guestfs_close(g); /* SIGTERMs the connector; autosync is off */
    struct vm_channel *readers[VM_APPLIANCE_READERS];
    for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++) {
        struct reader *rd = &a->readers[i];
        pthread_mutex_lock(&rd->lock);
        if (rd->g)
            guestfs_close(rd->g);
        rd->g = NULL;
        __atomic_store_n(&rd->up, false, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&rd->lock);
    }
    pthread_mutex_lock(&a->lock);
    struct vm_channel *channel = a->channel, *console = a->console;
    a->channel = a->console = NULL;
    for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++) {
        readers[i] = a->readers[i].channel;
        a->readers[i].channel = NULL;
    }
    for (unsigned i = 0; i <= VM_APPLIANCE_READERS; i++)
        relay_close(&a->relays[i]);
    virDomainPtr dom = a->dom;
    virConnectPtr conn = a->conn;
    a->dom = NULL;
    a->conn = NULL;
    memset(a->units, 0, sizeof a->units);
    a->nunits = 0;
    a->dev_mounted = false;
    pthread_mutex_unlock(&a->lock);
    vm_channel_close(channel);
    vm_channel_close(console);
    for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++)
        vm_channel_close(readers[i]);
    if (dom) {
        virDomainDestroy(dom);
        virDomainFree(dom);
    }
    if (conn)
        virConnectClose(conn);
}

/* A handle joined to the channel relay RL serves (NULL: error). */
static guestfs_h *launch_handle(struct vm_appliance *a, struct relay *rl)
{
    char relay_name[64];
    pthread_mutex_lock(&a->lock);
    int r = relay_listen(rl, relay_name, sizeof relay_name);
    pthread_mutex_unlock(&a->lock);
    CLEANUP_FREE char *connector = r == 0 ? vm_helper_path("virtmount-connector") : NULL;
    if (!connector)
        return NULL;
    guestfs_h *g =
        guestfs_create_flags(GUESTFS_CREATE_NO_ENVIRONMENT | GUESTFS_CREATE_NO_CLOSE_ON_EXIT);
    /* launch blocks until the relay (on the event loop) hands the socket over. */
    if (!g)
        return vm_error(errno, "cannot create a guestfs handle: %s", strerror(errno)), NULL;
    guestfs_set_error_handler(g, NULL, NULL);
    if (guestfs_set_backend(g, "direct") < 0 || guestfs_set_hv(g, connector) < 0 ||
        guestfs_set_path(g, a->files.dir) < 0 ||
        guestfs_config(g, "-virtmount-relay", relay_name) < 0 ||
        guestfs_add_drive_ro(g, "/dev/null") < 0 || guestfs_set_autosync(g, 0) < 0 ||
        guestfs_set_recovery_proc(g, 0) < 0 || guestfs_launch(g) < 0) {
        vm_error(EIO, "cannot join a guestfs handle to the appliance: %s",
                 guestfs_last_error(g) ? guestfs_last_error(g) : "unknown error");
        guestfs_close(g);
        return NULL;
    }
    return g;
}

/* Join reader I's handle, if its guestfsd is there: without it (an
 * appliance built before readers, or a daemon that died at its start),
 * reads share the main handle. */
static void launch_reader(struct vm_appliance *a, unsigned i)
{
    struct reader *rd = &a->readers[i];
    if (!rd->channel)
        return;
    guestfs_h *g = NULL;
    if (vm_channel_wait_flag(rd->channel, READER_FLAG_TIMEOUT_MS) < 0 ||
        !(g = launch_handle(a, &a->relays[1 + i])))
        vm_notice(VM_NOTICE_WARNING,
                  "appliance %s: reader %u is not there (%s): reads share the main channel",
                  a->name, i + 1, vm_error_message());
    pthread_mutex_lock(&rd->lock);
    rd->g = g;
    __atomic_store_n(&rd->up, g != NULL, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&rd->lock);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One boot attempt, KVM or TCG (state BUSY, lock not held). */
static int boot_once(struct vm_appliance *a, bool kvm, int timeout_ms)
{
    virConnectPtr conn = vm_host_connection(a->host);
    if (!conn)
        return -1;
    pthread_mutex_lock(&a->lock);
    a->conn = conn;
    pthread_mutex_unlock(&a->lock);
    /* Our name on this host is ours alone: what bears it was left by a killed run. */
    virDomainPtr stale = virDomainLookupByName(a->conn, a->name);
    if (stale) {
        virDomainDestroy(stale);
        virDomainFree(stale);
    }
    /* A remote host gets the files through libvirt: no local path is used there. */
    struct vm_appliance_files shipped = {0};
    const struct vm_appliance_files *files = &a->files;
    if (vm_host_is_local(a->host)) {
        vm_appliance_files_forget_overlay(&a->files, a->name);
    } else {
        if (vm_appliance_files_ship(a->conn, &a->files, a->name, &shipped) < 0) {
            teardown(a);
            return -1;
        }
        files = &shipped;
    }
    /* The embedded driver would put the channel's socket under its root,
     * which may be too deep for a unix socket's 108 bytes. */
    bool embedded = strncmp(vm_host_uri(a->host), "qemu:///embed", 13) == 0;
    char channel_path[108] = "", reader_paths[VM_APPLIANCE_READERS][108];
    if (embedded) {
        mkdir("/run/virtmount", 0700);
        snprintf(channel_path, sizeof channel_path, "/run/virtmount/%s.sock", a->name);
        for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++)
            snprintf(reader_paths[i], sizeof reader_paths[i], "/run/virtmount/%s.r%u.sock", a->name,
                     i + 1);
    }
    struct vm_appliance_spec spec = {
        .channel_path = embedded ? channel_path : NULL,
        .name = a->name,
        .kvm = kvm,
        .memory_mib = vm_settings.appliance_memory,
        .vcpus = 1 + VM_APPLIANCE_READERS,
        .readers = VM_APPLIANCE_READERS,
        .kernel = files->kernel,
        .initrd = files->initrd,
        .root = files->root,
        .root_uuid = files->root_uuid,
    };
    for (unsigned i = 0; embedded && i < VM_APPLIANCE_READERS; i++)
        spec.reader_paths[i] = reader_paths[i];
    CLEANUP_FREE char *xml = vm_xml_appliance(&spec);
    vm_appliance_files_clear(&shipped);
    if (!xml) {
        teardown(a);
        return -1;
    }
    /* AUTODESTROY: libvirt removes the appliance if virtmount dies.  The
     * embedded driver has none (and dies with us): vm_appliances_cleanup
     * removes what it left at the next start. */
    virDomainPtr dom = virDomainCreateXML(conn, xml, embedded ? 0 : VIR_DOMAIN_START_AUTODESTROY);
    if (!dom) {
        vm_error_libvirt(EIO, "cannot start the appliance (%s)", kvm ? "KVM" : "TCG");
        teardown(a);
        return -1;
    }
    struct vm_channel *console = vm_channel_open(conn, dom, NULL, true, NULL, NULL);
    struct vm_channel *channel = vm_channel_open(conn, dom, CHANNEL_NAME, false, channel_closed, a);
    /* A reader's guestfsd that ends takes the appliance with it
     * (virtmount-reader in the appliance): no close callback of its own. */
    struct vm_channel *readers[VM_APPLIANCE_READERS];
    for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++) {
        char name[64];
        snprintf(name, sizeof name, READER_NAME, i + 1);
        readers[i] = channel ? vm_channel_open(conn, dom, name, false, NULL, NULL) : NULL;
    }
    pthread_mutex_lock(&a->lock);
    a->dom = dom;
    a->console = console;
    a->channel = channel;
    for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++)
        a->readers[i].channel = readers[i];
    pthread_mutex_unlock(&a->lock);
    if (!channel) {
        teardown(a);
        return -1;
    }
    double t0 = now_seconds();
    /* In slices, so that a host whose connection closes meanwhile (its
     * daemon stopped) ends the wait at once rather than at the timeout. */
    int r = -1;
    for (int waited = 0; waited < timeout_ms; waited += 1000) {
        r = vm_channel_wait_flag(channel, timeout_ms - waited < 1000 ? timeout_ms - waited : 1000);
        if (r == 0 || vm_error_errno() != ETIMEDOUT)
            break;
        if (virConnectIsAlive(conn) != 1) {
            r = vm_error(EHOSTUNREACH, "the connection to %s closed during the boot",
                         vm_host_uri(a->host));
            break;
        }
        if (waited + 1000 >= timeout_ms)
            vm_error(ETIMEDOUT, "the appliance sent no launch flag within %d s", timeout_ms / 1000);
    }
    if (r < 0) {
        CLEANUP_FREE char *tail = a->console ? vm_channel_console_tail(a->console, 600) : NULL;
        vm_error(vm_error_errno(), "appliance (%s) did not boot: %s%s%s", kvm ? "KVM" : "TCG",
                 vm_error_message(), tail && *tail ? "; console ends: " : "", tail ? tail : "");
        teardown(a);
        return -1;
    }
    guestfs_h *g = launch_handle(a, &a->relays[0]);
    if (!g) {
        teardown(a);
        return -1;
    }
    pthread_mutex_lock(&a->handle_lock);
    a->g = g;
    pthread_mutex_unlock(&a->handle_lock);
    for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++)
        launch_reader(a, i);
    a->kvm = kvm;
    a->boot_seconds = now_seconds() - t0;
    a->started = time(NULL);
    return 0;
}

static int boot(struct vm_appliance *a)
{
    if (vm_appliance_files_get(&a->files) < 0)
        return -1;
    enum vm_accel accel = vm_settings.accel;
    int remembered = accel_remembered(a->host);
    if (accel == VM_ACCEL_TCG || (accel == VM_ACCEL_AUTO && remembered == 0))
        return boot_once(a, false, TCG_BOOT_TIMEOUT_MS);
    if (boot_once(a, true, KVM_BOOT_TIMEOUT_MS) == 0) {
        if (accel == VM_ACCEL_AUTO && remembered != 1) {
            accel_remember(a->host, true);
            vm_notice(VM_NOTICE_INFO, "host %s: appliances use KVM", vm_host_name(a->host));
        }
        return 0;
    }
    if (accel == VM_ACCEL_KVM)
        return -1;
    vm_notice(VM_NOTICE_WARNING, "host %s: KVM does not work (%s): using TCG from now on",
              vm_host_name(a->host), vm_error_message());
    if (boot_once(a, false, TCG_BOOT_TIMEOUT_MS) < 0)
        return -1;
    accel_remember(a->host, false);
    return 0;
}

int vm_appliance_start(struct vm_appliance *a)
{
    pthread_mutex_lock(&a->lock);
    while (a->state != STOPPED) {
        if (a->state == RUNNING) {
            pthread_mutex_unlock(&a->lock);
            return 0;
        }
        /* A boot in flight: join it (it is bounded, so this wait is too). */
        bool joining = a->state == BOOTING;
        pthread_cond_wait(&a->cond, &a->lock);
        if (joining && a->state == STOPPED) { /* the boot we joined failed */
            int r = vm_error(EIO, "%s", a->last_error ? a->last_error : "appliance boot failed");
            pthread_mutex_unlock(&a->lock);
            return r;
        }
    }
    a->state = BOOTING;
    a->generation++;
    pthread_mutex_unlock(&a->lock);

    int r = boot(a);
    if (r < 0 && vm_error_errno() != EHOSTUNREACH) /* a boot that failed is an I/O error */
        vm_error(EIO, "%s", vm_error_message());

    pthread_mutex_lock(&a->lock);
    free(a->last_error);
    a->last_error = r < 0 ? strdup(vm_error_message()) : NULL;
    a->state = r < 0 ? STOPPED : RUNNING;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    if (r == 0)
        vm_notice(VM_NOTICE_INFO, "host %s: appliance %s up in %.1f s (%s)", vm_host_name(a->host),
                  a->name, a->boot_seconds, a->kvm ? "KVM" : "TCG");
    return r;
}

void vm_appliance_stop(struct vm_appliance *a, unsigned generation)
{
    pthread_mutex_lock(&a->lock);
    while (a->state == BOOTING || a->state == STOPPING)
        pthread_cond_wait(&a->cond, &a->lock);
    if (a->state != RUNNING || (generation && generation != a->generation)) {
        pthread_mutex_unlock(&a->lock);
        return;
    }
    a->state = STOPPING;
    pthread_mutex_unlock(&a->lock);
    teardown(a);
    pthread_mutex_lock(&a->lock);
    a->state = STOPPED;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
}

void vm_appliance_free(struct vm_appliance *a)
{
    if (!a)
        return;
    vm_appliance_stop(a, 0);
    vm_appliance_files_clear(&a->files);
    free(a->last_error);
    free(a->name);
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->handle_lock);
    for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++)
        pthread_mutex_destroy(&a->readers[i].lock);
    free(a);
}

/* ---- drives ------------------------------------------------------------ */

int vm_appliance_reserve_unit(struct vm_appliance *a, unsigned *unit, unsigned *generation)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&a->lock);
    if (a->state != RUNNING)
        return vm_error(EIO, "the appliance is not running");
    if (a->nunits >= vm_settings.max_drives)
        return vm_error(ENOSPC, "appliance %s has no free slot (max_drives=%u)", a->name,
                        vm_settings.max_drives);
    for (unsigned u = 1; u <= VM_MAX_UNITS; u++)
        if (!a->units[u]) {
            a->units[u] = true;
            a->nunits++;
            *unit = u;
            *generation = a->generation;
            return 0;
        }
    return vm_error(ENOSPC, "appliance %s has no free slot", a->name);
}

void vm_appliance_release_unit(struct vm_appliance *a, unsigned unit, unsigned generation)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&a->lock);
    if (generation == a->generation && unit <= VM_MAX_UNITS && a->units[unit]) {
        a->units[unit] = false;
        a->nunits--;
    }
}

unsigned vm_appliance_drive_count(struct vm_appliance *a)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&a->lock);
    return a->state == RUNNING ? a->nunits : 0;
}

static int device_op(struct vm_appliance *a, const char *xml, bool attach)
{
    virDomainPtr dom;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&a->lock);
        if (a->state != RUNNING || !a->dom)
            return vm_error(EIO, "the appliance is not running");
        dom = a->dom;
        virDomainRef(dom);
    }
    int r = attach ? virDomainAttachDeviceFlags(dom, xml, VIR_DOMAIN_AFFECT_LIVE)
                   : virDomainDetachDeviceFlags(dom, xml, VIR_DOMAIN_AFFECT_LIVE);
    if (r < 0)
        vm_error_libvirt(EIO, "libvirt refused to %s the drive", attach ? "attach" : "detach");
    virDomainFree(dom);
    return r;
}

int vm_appliance_attach(struct vm_appliance *a, const char *xml)
{
    return device_op(a, xml, true);
}

int vm_appliance_detach(struct vm_appliance *a, const char *xml)
{
    return device_op(a, xml, false);
}

guestfs_h *vm_appliance_handle(struct vm_appliance *a)
{
    pthread_mutex_lock(&a->handle_lock);
    if (!a->g) {
        pthread_mutex_unlock(&a->handle_lock);
        return vm_error(EIO, "the appliance is not running"), NULL;
    }
    return a->g;
}

void vm_appliance_handle_release(struct vm_appliance *a)
{
    pthread_mutex_unlock(&a->handle_lock);
}

guestfs_h *vm_appliance_reader(struct vm_appliance *a, int *slot)
{
    for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++) {
        struct reader *rd = &a->readers[i];
        if (pthread_mutex_trylock(&rd->lock) == 0) {
            if (rd->g)
                return *slot = (int)i, rd->g;
            pthread_mutex_unlock(&rd->lock);
        }
    }
    if (pthread_mutex_trylock(&a->handle_lock) == 0) {
        if (a->g)
            return *slot = -1, a->g;
        pthread_mutex_unlock(&a->handle_lock);
        return vm_error(EIO, "the appliance is not running"), NULL;
    }
    /* All busy: wait for the first reader, keeping the main handle for the
     * tree's other calls. */
    for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++) {
        struct reader *rd = &a->readers[i];
        pthread_mutex_lock(&rd->lock);
        if (rd->g)
            return *slot = (int)i, rd->g;
        pthread_mutex_unlock(&rd->lock);
    }
    *slot = -1;
    return vm_appliance_handle(a);
}

void vm_appliance_reader_release(struct vm_appliance *a, int slot)
{
    if (slot < 0)
        return vm_appliance_handle_release(a);
    pthread_mutex_unlock(&a->readers[slot].lock);
}

int vm_appliance_mount_dev(struct vm_appliance *a, guestfs_h *g, const char *device)
{
    if (__atomic_load_n(&a->dev_mounted, __ATOMIC_ACQUIRE))
        return 0;
    /* devtmpfs has one instance: mounted again in the sysroot, it holds udev's
     * /dev/disk/guestfs links too.  A path there is a Pathname to guestfsd,
     * which spares each call the ~0.1 s a Device parameter costs (it opens
     * and closes the device to check it).  devtmpfs ignores DEVICE, but
     * guestfsd wants a real one. */
    if (guestfs_mkmountpoint(g, VM_APPLIANCE_DEVDIR) < 0 ||
        guestfs_mount_vfs(g, "", "devtmpfs", device, VM_APPLIANCE_DEVDIR) < 0)
        return vm_error(EIO, "cannot mount devtmpfs in the appliance: %s",
                        guestfs_last_error(g) ? guestfs_last_error(g) : "unknown error");
    __atomic_store_n(&a->dev_mounted, true, __ATOMIC_RELEASE);
    return 0;
}

unsigned vm_appliance_generation(struct vm_appliance *a)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&a->lock);
    return a->state == RUNNING ? a->generation : 0;
}

bool vm_appliance_dev_mounted(struct vm_appliance *a)
{
    return __atomic_load_n(&a->dev_mounted, __ATOMIC_ACQUIRE);
}

int vm_appliance_status(struct vm_appliance *a, FILE *out)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&a->lock);
    static const char *const states[] = {"stopped", "booting", "running", "stopping"};
    fprintf(out, "  appliance %s\n    state: %s\n", a->name, states[a->state]);
    if (a->state == RUNNING) {
        struct tm tm;
        char since[64];
        localtime_r(&a->started, &tm);
        strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S", &tm);
        fprintf(out,
                "    accel: %s\n    up since: %s (%lds, booted in %.1fs)\n    drives: %u of "
                "%u\n    memory: %u MiB\n",
                a->kvm ? "kvm" : "tcg", since, (long)(time(NULL) - a->started), a->boot_seconds,
                a->nunits, vm_settings.max_drives, vm_settings.appliance_memory);
        unsigned up = 0;
        for (unsigned i = 0; i < VM_APPLIANCE_READERS; i++)
            up += __atomic_load_n(&a->readers[i].up, __ATOMIC_RELAXED);
        fprintf(out, "    readers: %u of %u\n", up, VM_APPLIANCE_READERS);
    } else if (a->last_error) {
        fprintf(out, "    last boot failed: %s\n", a->last_error);
    }
    return 0;
}

int vm_appliances_cleanup(virConnectPtr conn)
{
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(conn, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    if (n < 0)
        return vm_error_libvirt(EIO, "cannot list domains");
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s%s-", VM_APPLIANCE_PREFIX, vm_instance_id());
    int removed = 0;
    for (int i = 0; i < n; i++) {
        if (strncmp(virDomainGetName(doms[i]), prefix, strlen(prefix)) == 0 &&
            virDomainDestroy(doms[i]) == 0)
            removed++;
        virDomainFree(doms[i]);
    }
    free(doms);
    return removed;
}
