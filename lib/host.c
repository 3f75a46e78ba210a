/* A host: one libvirt connection, kept up by a thread of its own, and the
 * snapshot of its domains that the tree is served from.
 *
 * The host thread is the only one that calls libvirt for a host: it connects
 * (and reconnects with a backoff when the connection drops), lists domains,
 * and re-reads a domain when libvirt's event loop reports an event for it.
 * Readers (FUSE workers) only take a reference to the current immutable
 * snapshot, so they never wait on libvirt.  Event callbacks, which run on the
 * shared event loop thread, only queue work and never call libvirt.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "cleanup.h"

#define RECONNECT_MIN_MS 500
#define RECONNECT_MAX_MS 5000

struct vm_host {
    char *name;
    char *uri;
    enum vm_host_kind kind;
    struct vm_host_listener listener;

    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;

    /* Under lock. */
    bool stop;
    bool attempted; /* the first connection attempt has finished */
    bool up;
    char *down_reason; /* why the host is down (libvirt's message) */
    time_t up_since;
    unsigned connects; /* successful connections so far */
    struct vm_domlist *domains;
    bool closed; /* libvirt reported the connection closed */
    bool refresh_all;
    char **pending; /* UUIDs with events to re-read */
    size_t npending;

    /* Owned by the host thread. */
    virConnectPtr conn;
    int lifecycle_cb;
    int device_added_cb;
    int device_removed_cb;
};

/* ---- the event loop --------------------------------------------------- */

static pthread_t event_thread;
static volatile int event_loop_running;
static int event_wake_timer = -1;

static void silent_error_handler(void *opaque, virErrorPtr err)
{
    /* libvirt prints every error to stderr by default; ours are recorded. */
}

static void *event_loop(void *arg)
{
    while (__atomic_load_n(&event_loop_running, __ATOMIC_ACQUIRE))
        if (virEventRunDefaultImpl() < 0)
            usleep(100000);
    return NULL;
}

static void wake_timer_cb(int timer, void *opaque)
{
    virEventUpdateTimeout(timer, -1);
}

int vm_event_loop_start(void)
{
    virSetErrorFunc(NULL, silent_error_handler);
    if (virInitialize() < 0)
        return vm_error_libvirt(EIO, "cannot initialize libvirt");
    if (virEventRegisterDefaultImpl() < 0)
        return vm_error_libvirt(EIO, "cannot register libvirt's event loop");
    event_wake_timer = virEventAddTimeout(-1, wake_timer_cb, NULL, NULL);
    event_loop_running = 1;
    int e = pthread_create(&event_thread, NULL, event_loop, NULL);
    if (e) {
        event_loop_running = 0;
        return vm_error(e, "cannot start the event loop thread: %s", strerror(e));
    }
    return 0;
}

void vm_event_loop_stop(void)
{
    if (!event_loop_running)
        return;
    __atomic_store_n(&event_loop_running, 0, __ATOMIC_RELEASE);
    virEventUpdateTimeout(event_wake_timer, 0); /* wakes virEventRunDefaultImpl */
    pthread_join(event_thread, NULL);
    virEventRemoveTimeout(event_wake_timer);
}

/* ---- snapshots -------------------------------------------------------- */

void vm_domlist_unref(struct vm_domlist *l)
{
    if (!l || __atomic_sub_fetch(&l->refcount, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    for (size_t i = 0; i < l->n; i++)
        vm_domain_unref(l->v[i]);
    free(l->v);
    free(l);
}

struct vm_domain *vm_domlist_find(const struct vm_domlist *l, const char *name)
{
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(l->v[mid]->name, name);
        if (c == 0)
            return l->v[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

struct vm_domain *vm_domlist_find_uuid(const struct vm_domlist *l, const char *uuid)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i]->uuid, uuid) == 0)
            return l->v[i];
    return NULL;
}

static int compare_domains(const void *a, const void *b)
{
    return strcmp((*(struct vm_domain *const *)a)->name, (*(struct vm_domain *const *)b)->name);
}

static struct vm_domlist *domlist_new(size_t capacity)
{
    struct vm_domlist *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->refcount = 1;
    l->read_at = time(NULL);
    l->v = calloc(capacity ? capacity : 1, sizeof *l->v);
    if (!l->v) {
        free(l);
        return NULL;
    }
    return l;
}

/* ---- reading domains from libvirt ------------------------------------- */

static bool is_ours(const char *name)
{
    return strncmp(name, VM_APPLIANCE_PREFIX, strlen(VM_APPLIANCE_PREFIX)) == 0;
}

/* What virtmount shows of DOM: its XML, state and disk sizes. */
static struct vm_domain *read_domain(virDomainPtr dom)
{
    CLEANUP_FREE char *xml = virDomainGetXMLDesc(dom, 0);
    if (!xml)
        return vm_error_libvirt(EIO, "cannot read the XML of domain %s", virDomainGetName(dom)),
               NULL;
    struct vm_domain *d = vm_domxml_parse(xml);
    if (!d)
        return NULL;
    d->read_at = time(NULL);
    int state, reason;
    if (virDomainGetState(dom, &state, &reason, 0) == 0)
        d->state = state;
    for (size_t i = 0; i < d->ndisks; i++) {
        virDomainBlockInfo info;
        if (virDomainGetBlockInfo(dom, d->disks[i].target, &info, 0) == 0) {
            d->sizes[i] = (int64_t)info.capacity;
        } else {
            const char *m = virGetLastErrorMessage();
            d->size_errors[i] = strdup(m ? m : "unknown libvirt error");
        }
    }
    return d;
}

/* ---- the host thread -------------------------------------------------- */

static void notify(struct vm_host *h, const char *uuid)
{
    if (h->listener.changed)
        h->listener.changed(h->listener.opaque, h, uuid);
}

static void queue_uuid(struct vm_host *h, const char *uuid)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&h->lock);
    for (size_t i = 0; i < h->npending; i++)
        if (strcmp(h->pending[i], uuid) == 0)
            return;
    char **p = realloc(h->pending, (h->npending + 1) * sizeof *p);
    if (!p) {
        h->refresh_all = true;
    } else {
        h->pending = p;
        if ((p[h->npending] = strdup(uuid)))
            h->npending++;
        else
            h->refresh_all = true;
    }
    pthread_cond_signal(&h->cond);
}

static void lifecycle_cb(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
    char uuid[VIR_UUID_STRING_BUFLEN];
    if (virDomainGetUUIDString(dom, uuid) < 0)
        return;
    queue_uuid(opaque, uuid);
    vm_plug_domain_event(opaque, uuid, event == VIR_DOMAIN_EVENT_STARTED,
                         event == VIR_DOMAIN_EVENT_STOPPED);
}

static void device_cb(virConnectPtr conn, virDomainPtr dom, const char *alias, void *opaque)
{
    lifecycle_cb(conn, dom, 0, 0, opaque);
}

static void close_cb(virConnectPtr conn, int reason, void *opaque)
{
    struct vm_host *h = opaque;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&h->lock);
    h->closed = true;
    pthread_cond_signal(&h->cond);
}

static void set_down(struct vm_host *h, const char *reason)
{
    bool was_up;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&h->lock);
        was_up = h->up;
        h->up = false;
        free(h->down_reason);
        h->down_reason = strdup(reason);
        vm_domlist_unref(h->domains);
        h->domains = NULL;
        h->attempted = true;
        pthread_cond_broadcast(&h->cond);
    }
    if (was_up || h->connects == 0)
        notify(h, NULL);
}

static void disconnect(struct vm_host *h)
{
    if (!h->conn)
        return;
    if (h->lifecycle_cb >= 0)
        virConnectDomainEventDeregisterAny(h->conn, h->lifecycle_cb);
    if (h->device_added_cb >= 0)
        virConnectDomainEventDeregisterAny(h->conn, h->device_added_cb);
    if (h->device_removed_cb >= 0)
        virConnectDomainEventDeregisterAny(h->conn, h->device_removed_cb);
    virConnectUnregisterCloseCallback(h->conn, close_cb);
    virConnectClose(h->conn);
    h->conn = NULL;
}

static int connect_host(struct vm_host *h)
{
    h->conn = virConnectOpen(h->uri);
    if (!h->conn)
        return vm_error_libvirt(EHOSTUNREACH, "cannot connect to %s", h->uri);
    h->lifecycle_cb = h->device_added_cb = h->device_removed_cb = -1;
    /* Notice a dead remote daemon within a minute, not at the next call.
     * Not sooner: a busy daemon stops reading a client that has 5 calls in
     * flight (max_client_requests), keepalives included. */
    virConnectSetKeepAlive(h->conn, 10, 6);
    virConnectRegisterCloseCallback(h->conn, close_cb, h, NULL);
    h->lifecycle_cb =
        virConnectDomainEventRegisterAny(h->conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         VIR_DOMAIN_EVENT_CALLBACK(lifecycle_cb), h, NULL);
    h->device_added_cb =
        virConnectDomainEventRegisterAny(h->conn, NULL, VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                                         VIR_DOMAIN_EVENT_CALLBACK(device_cb), h, NULL);
    h->device_removed_cb =
        virConnectDomainEventRegisterAny(h->conn, NULL, VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                                         VIR_DOMAIN_EVENT_CALLBACK(device_cb), h, NULL);
    if (h->lifecycle_cb < 0) {
        vm_error_libvirt(EIO, "cannot follow domain events on %s", h->uri);
        disconnect(h);
        return -1;
    }
    /* What a killed virtmount left behind (the embedded driver keeps it running). */
    int removed = vm_appliances_cleanup(h->conn);
    if (removed > 0)
        vm_notice(VM_NOTICE_WARNING, "host %s: removed %d appliance(s) left by an earlier run",
                  h->name, removed);
    int ended = vm_backup_jobs_cleanup(h->conn);
    if (ended > 0)
        vm_notice(VM_NOTICE_WARNING, "host %s: ended %d backup job(s) left by an earlier run",
                  h->name, ended);
    return 0;
}

/* Replace the snapshot with LIST (taking it) and tell the listener. */
static void publish(struct vm_host *h, struct vm_domlist *list, const char *uuid)
{
    bool came_up;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&h->lock);
        vm_domlist_unref(h->domains);
        h->domains = list;
        came_up = !h->up;
        if (came_up) {
            h->up = true;
            h->up_since = time(NULL);
            free(h->down_reason);
            h->down_reason = NULL;
        }
        h->attempted = true;
        pthread_cond_broadcast(&h->cond);
    }
    notify(h, came_up ? NULL : uuid);
}

static int refresh_all(struct vm_host *h)
{
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(h->conn, &doms, 0);
    if (n < 0)
        return vm_error_libvirt(EIO, "cannot list the domains of %s", h->uri);
    struct vm_domlist *list = domlist_new((size_t)n);
    for (int i = 0; i < n; i++) {
        if (list && !is_ours(virDomainGetName(doms[i]))) {
            /* A domain undefined between the listing and now is simply skipped. */
            struct vm_domain *d = read_domain(doms[i]);
            if (d)
                list->v[list->n++] = d;
        }
        virDomainFree(doms[i]);
    }
    free(doms);
    if (!list)
        return vm_error(ENOMEM, "out of memory");
    qsort(list->v, list->n, sizeof *list->v, compare_domains);
    publish(h, list, NULL);
    return 0;
}

static int refresh_one(struct vm_host *h, const char *uuid)
{
    struct vm_domain *fresh = NULL;
    CLEANUP_VIR_DOMAIN virDomainPtr dom = virDomainLookupByUUIDString(h->conn, uuid);
    if (dom) {
        if (is_ours(virDomainGetName(dom)))
            return 0;
        fresh = read_domain(dom);
        if (!fresh && virGetLastErrorCode() != VIR_ERR_NO_DOMAIN)
            return -1;
    } else if (virGetLastErrorCode() != VIR_ERR_NO_DOMAIN) {
        return vm_error_libvirt(EIO, "cannot look up domain %s on %s", uuid, h->uri);
    }

    struct vm_domlist *old;
    {
        ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&h->lock);
        old = h->domains;
        if (old)
            __atomic_add_fetch(&old->refcount, 1, __ATOMIC_RELAXED);
    }
    size_t n = old ? old->n : 0;
    struct vm_domlist *list = domlist_new(n + 1);
    if (!list) {
        vm_domlist_unref(old);
        vm_domain_unref(fresh);
        return vm_error(ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(old->v[i]->uuid, uuid) != 0)
            list->v[list->n++] = vm_domain_ref(old->v[i]);
    if (fresh)
        list->v[list->n++] = fresh;
    vm_domlist_unref(old);
    qsort(list->v, list->n, sizeof *list->v, compare_domains);
    publish(h, list, uuid);
    return 0;
}

static void wait_ms(struct vm_host *h, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&h->cond, &h->lock, &ts);
}

static void *host_thread(void *arg)
{
    struct vm_host *h = arg;
    int backoff = RECONNECT_MIN_MS;
    pthread_mutex_lock(&h->lock);
    while (!h->stop) {
        if (!h->conn) {
            pthread_mutex_unlock(&h->lock);
            int r = connect_host(h);
            if (r == 0) {
                h->connects++;
                r = refresh_all(h);
                if (r < 0)
                    disconnect(h);
            }
            if (r < 0)
                set_down(h, vm_error_message());
            pthread_mutex_lock(&h->lock);
            if (r < 0) {
                if (!h->stop)
                    wait_ms(h, backoff);
                backoff = backoff * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : backoff * 2;
                continue;
            }
            backoff = RECONNECT_MIN_MS;
            h->closed = false;
            h->refresh_all = false;
            continue;
        }
        if (h->closed) {
            h->closed = false;
            pthread_mutex_unlock(&h->lock);
            disconnect(h);
            /* The appliances' channels went with the connection. */
            vm_plug_host_down(h);
            char reason[600];
            const char *m = virGetLastErrorMessage();
            snprintf(reason, sizeof reason, "connection to %s closed%s%s", h->uri,
                     m && strcmp(m, "no error") ? ": " : "", m && strcmp(m, "no error") ? m : "");
            set_down(h, reason);
            pthread_mutex_lock(&h->lock);
            continue;
        }
        if (h->refresh_all || h->npending) {
            bool all = h->refresh_all;
            char **pending = h->pending;
            size_t npending = h->npending;
            h->refresh_all = false;
            h->pending = NULL;
            h->npending = 0;
            pthread_mutex_unlock(&h->lock);
            int r = 0;
            if (all)
                r = refresh_all(h);
            for (size_t i = 0; i < npending; i++) {
                if (!all && r == 0)
                    r = refresh_one(h, pending[i]);
                free(pending[i]);
            }
            free(pending);
            pthread_mutex_lock(&h->lock);
            if (r < 0 && !virConnectIsAlive(h->conn))
                h->closed = true;
            else if (r < 0)
                h->refresh_all = true, wait_ms(h, backoff);
            continue;
        }
        pthread_cond_wait(&h->cond, &h->lock);
    }
    pthread_mutex_unlock(&h->lock);
    disconnect(h);
    return NULL;
}

/* ---- public ----------------------------------------------------------- */

const char vm_embed_qemu_conf[] = "# Written by virtmount for its embedded libvirt driver.\n"
                                  "user = \"root\"\n"
                                  "group = \"root\"\n"
                                  "dynamic_ownership = 0\n"
                                  "remember_owner = 0\n"
                                  "security_driver = \"none\"\n"
                                  "cgroup_controllers = [ ]\n"
                                  "namespaces = [ ]\n"
                                  "stdio_handler = \"file\"\n";

static int make_dir(const char *path)
{
    if (mkdir(path, 0700) < 0 && errno != EEXIST)
        return vm_error(errno, "cannot create %s: %s", path, strerror(errno));
    return 0;
}

char *vm_host_choose_local_uri(const char *statedir, enum vm_host_kind *kind)
{
    virConnectPtr c = virConnectOpen("qemu:///system");
    if (c) {
        virConnectClose(c);
        *kind = VM_HOST_SYSTEM;
        return strdup("qemu:///system");
    }
    CLEANUP_FREE char *root = NULL, *etc = NULL, *conf = NULL;
    if (asprintf(&root, "%s/embed", statedir) < 0 || asprintf(&etc, "%s/etc", root) < 0 ||
        asprintf(&conf, "%s/qemu.conf", etc) < 0)
        return vm_error(ENOMEM, "out of memory"), NULL;
    if (make_dir(statedir) < 0 || make_dir(root) < 0 || make_dir(etc) < 0)
        return NULL;
    if (access(conf, F_OK) < 0) {
        FILE *f = fopen(conf, "we");
        if (!f || fputs(vm_embed_qemu_conf, f) < 0 || fclose(f) != 0)
            return vm_error(errno, "cannot write %s: %s", conf, strerror(errno)), NULL;
    }
    char *uri;
    if (asprintf(&uri, "qemu:///embed?root=%s", root) < 0)
        return vm_error(ENOMEM, "out of memory"), NULL;
    *kind = VM_HOST_EMBEDDED;
    return uri;
}

struct vm_host *vm_host_new(const char *name, const char *uri, enum vm_host_kind kind,
                            const struct vm_host_listener *listener)
{
    struct vm_host *h = calloc(1, sizeof *h);
    if (!h)
        return vm_error(ENOMEM, "out of memory"), NULL;
    h->name = strdup(name);
    h->uri = strdup(uri);
    h->kind = kind;
    if (listener)
        h->listener = *listener;
    h->down_reason = strdup("connecting");
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    if (!h->name || !h->uri || !h->down_reason) {
        vm_host_free(h);
        return vm_error(ENOMEM, "out of memory"), NULL;
    }
    int e = pthread_create(&h->thread, NULL, host_thread, h);
    if (e) {
        h->thread = 0;
        vm_host_free(h);
        return vm_error(e, "cannot start a thread for host %s: %s", name, strerror(e)), NULL;
    }
    return h;
}

void vm_host_wait_ready(struct vm_host *h, int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&h->lock);
    while (!h->attempted)
        if (pthread_cond_timedwait(&h->cond, &h->lock, &deadline) == ETIMEDOUT)
            break;
}

void vm_host_free(struct vm_host *h)
{
    if (!h)
        return;
    if (h->thread) {
        pthread_mutex_lock(&h->lock);
        h->stop = true;
        pthread_cond_broadcast(&h->cond);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->thread, NULL);
    }
    vm_domlist_unref(h->domains);
    for (size_t i = 0; i < h->npending; i++)
        free(h->pending[i]);
    free(h->pending);
    free(h->down_reason);
    free(h->name);
    free(h->uri);
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->cond);
    free(h);
}

const char *vm_host_name(const struct vm_host *h)
{
    return h->name;
}

const char *vm_host_uri(const struct vm_host *h)
{
    return h->uri;
}

enum vm_host_kind vm_host_kind(const struct vm_host *h)
{
    return h->kind;
}

virConnectPtr vm_host_connection(struct vm_host *h)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&h->lock);
    if (!h->up || !h->conn)
        return vm_error(EHOSTUNREACH, "host %s is down: %s", h->name,
                        h->down_reason ? h->down_reason : "not connected"),
               NULL;
    virConnectRef(h->conn);
    return h->conn;
}

bool vm_host_is_local(struct vm_host *h)
{
    /* qemu:///system, qemu:///embed?..., qemu+unix:///system?socket=...: no server part. */
    const char *u = strstr(h->uri, "://");
    return u && u[3] == '/';
}

void vm_host_refresh_later(struct vm_host *h, const char *uuid)
{
    queue_uuid(h, uuid);
}

bool vm_host_is_up(struct vm_host *h, char **reason)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&h->lock);
    if (!h->up && reason)
        *reason = strdup(h->down_reason ? h->down_reason : "not connected");
    return h->up;
}

struct vm_domlist *vm_host_domains(struct vm_host *h)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&h->lock);
    if (!h->up || !h->domains)
        return vm_error(EHOSTUNREACH, "host %s is down: %s", h->name,
                        h->down_reason ? h->down_reason : "not connected"),
               NULL;
    __atomic_add_fetch(&h->domains->refcount, 1, __ATOMIC_RELAXED);
    return h->domains;
}

void vm_host_status(struct vm_host *h, FILE *out)
{
    static const char *const kinds[] = {"configured", "system", "embedded"};
    char since[64] = "";
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&h->lock);
    if (h->up) {
        struct tm tm;
        localtime_r(&h->up_since, &tm);
        strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S", &tm);
    }
    if (h->up)
        fprintf(out,
                "host %s\n  uri: %s\n  connection: %s\n  state: up since %s\n"
                "  domains: %zu\n",
                h->name, h->uri, kinds[h->kind], since, h->domains ? h->domains->n : 0);
    else
        fprintf(out, "host %s\n  uri: %s\n  connection: %s\n  state: down: %s\n", h->name, h->uri,
                kinds[h->kind], h->down_reason ? h->down_reason : "not connected");
}
