/* The appliance's channel: a libvirt stream (virDomainOpenChannel, the same
 * code over a local, embedded or remote connection) joined to the socket of
 * a guestfs handle, driven non-blocking from libvirt's event loop.
 *
 * guestfsd sends its launch flag once, when it boots, and exits if a second
 * connection follows: so the channel is opened once per appliance boot and
 * held.  The flag is read here (it tells the boot is done), and replayed to
 * the handle's socket when the connector hands that socket over.  Then bytes
 * flow both ways with backpressure: while one side cannot take more, the
 * other is not read.  Also here: the console, read into a ring buffer whose
 * tail explains a failed boot.
 *
 * Everything runs on the event loop thread except the calls that create,
 * attach and close; those take the channel's lock.  Nothing here blocks.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "cleanup.h"

#define BUF_SIZE     (256 * 1024) /* libvirt's largest stream message */
#define CONSOLE_RING 8192

static const unsigned char launch_flag[4] = {0xf5, 0xf5, 0x5f, 0xf5};

struct vm_channel {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;
    virStreamPtr stream;
    bool stream_cb;
    int fd;       /* the handle's socket, -1 until attached */
    int fd_watch; /* -1: none */
    bool console; /* a console: data goes to the ring */
    bool flag_seen;
    size_t flag_len; /* bytes of the flag read so far */
    bool closed;
    char *close_reason;
    /* stream → fd */
    char *down;
    size_t down_len, down_off;
    /* fd → stream */
    char *up;
    size_t up_len, up_off;
    /* console ring */
    char ring[CONSOLE_RING];
    size_t ring_pos;
    bool ring_full;
    /* Told once when the channel ends (not for a console). */
    void (*on_close)(void *opaque, const char *reason);
    void *on_close_opaque;
};

/* Atomic, not under the lock: libvirt calls the free callback (unref_cb)
 * from inside virStreamEventRemoveCallback, which shut() calls locked. */
static void channel_ref(struct vm_channel *c)
{
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

static void channel_unref(struct vm_channel *c)
{
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    if (c->stream)
        virStreamFree(c->stream);
    if (c->fd >= 0)
        close(c->fd);
    free(c->down);
    free(c->up);
    free(c->close_reason);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    free(c);
}

static void unref_cb(void *opaque)
{
    channel_unref(opaque);
}

static int stream_events(struct vm_channel *c)
{
    int ev = VIR_STREAM_EVENT_ERROR | VIR_STREAM_EVENT_HANGUP;
    /* Read the stream only while there is somewhere to put what it gives. */
    if (c->console || (!c->flag_seen) || (c->fd >= 0 && c->down_len == 0))
        ev |= VIR_STREAM_EVENT_READABLE;
    if (c->up_len)
        ev |= VIR_STREAM_EVENT_WRITABLE;
    return ev;
}

static int fd_events(struct vm_channel *c)
{
    int ev = 0;
    if (c->up_len == 0)
        ev |= VIR_EVENT_HANDLE_READABLE;
    if (c->down_len)
        ev |= VIR_EVENT_HANDLE_WRITABLE;
    return ev;
}

static void update_watches(struct vm_channel *c)
{
    if (c->closed)
        return;
    if (c->stream_cb)
        virStreamEventUpdateCallback(c->stream, stream_events(c));
    if (c->fd_watch >= 0)
        virEventUpdateHandle(c->fd_watch, fd_events(c));
}

/* End the channel (lock held); the owner is told after the lock is dropped. */
static void shut(struct vm_channel *c, const char *reason)
{
    if (c->closed)
        return;
    c->closed = true;
    c->close_reason = strdup(reason);
    if (c->stream_cb) {
        virStreamEventRemoveCallback(c->stream);
        c->stream_cb = false;
        virStreamAbort(c->stream);
    }
    if (c->fd_watch >= 0) {
        virEventRemoveHandle(c->fd_watch);
        c->fd_watch = -1;
    }
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR); /* the handle sees EOF, not a hang */
    pthread_cond_broadcast(&c->cond);
}

static void tell_closed(struct vm_channel *c)
{
    if (c->on_close && !c->console)
        c->on_close(c->on_close_opaque, c->close_reason ? c->close_reason : "closed");
}

static void ring_add(struct vm_channel *c, const char *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        c->ring[c->ring_pos++] = data[i];
        if (c->ring_pos == CONSOLE_RING) {
            c->ring_pos = 0;
            c->ring_full = true;
        }
    }
}

/* Write pending stream data to the handle's socket. */
static void flush_down(struct vm_channel *c)
{
    while (c->down_off < c->down_len) {
        ssize_t n = write(c->fd, c->down + c->down_off, c->down_len - c->down_off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            /* The handle went away; the appliance stays for the next one. */
            c->down_off = c->down_len = 0;
            return;
        }
        c->down_off += (size_t)n;
    }
    c->down_off = c->down_len = 0;
}

static void stream_cb(virStreamPtr st, int events, void *opaque)
{
    struct vm_channel *c = opaque;
    bool closed_now = false;
    pthread_mutex_lock(&c->lock);
    if (c->closed)
        goto out;
    if (events & VIR_STREAM_EVENT_WRITABLE) {
        while (c->up_off < c->up_len) {
            int n = virStreamSend(st, c->up + c->up_off, c->up_len - c->up_off);
            if (n == -2)
                break;
            if (n < 0) {
                shut(c, virGetLastErrorMessage());
                closed_now = true;
                goto out;
            }
            c->up_off += (size_t)n;
        }
        if (c->up_off == c->up_len)
            c->up_off = c->up_len = 0;
    }
    if (events & VIR_STREAM_EVENT_READABLE) {
        if (!c->flag_seen && !c->console) {
            unsigned char b[4];
            int n = virStreamRecv(st, (char *)b, sizeof b - c->flag_len);
            if (n == 0 || n == -1) {
                shut(c, n == 0 ? "the appliance closed its channel before it was ready"
                               : virGetLastErrorMessage());
                closed_now = true;
                goto out;
            }
            if (n > 0) {
                if (memcmp(b, launch_flag + c->flag_len, (size_t)n) != 0) {
                    shut(c, "the appliance sent something else than its launch flag");
                    closed_now = true;
                    goto out;
                }
                c->flag_len += (size_t)n;
                if (c->flag_len == sizeof launch_flag) {
                    c->flag_seen = true;
                    pthread_cond_broadcast(&c->cond);
                }
            }
        } else if (c->console || (c->fd >= 0 && c->down_len == 0)) {
            char *buf = c->console ? c->ring : c->down;
            char tmp[4096];
            int n = virStreamRecv(st, c->console ? tmp : buf, c->console ? sizeof tmp : BUF_SIZE);
            if (n == 0 || n == -1) {
                shut(c, n == 0 ? "the appliance closed its channel" : virGetLastErrorMessage());
                closed_now = true;
                goto out;
            }
            if (n > 0) {
                if (c->console) {
                    ring_add(c, tmp, (size_t)n);
                } else {
                    c->down_len = (size_t)n;
                    c->down_off = 0;
                    flush_down(c);
                }
            }
        }
    }
    if (events & (VIR_STREAM_EVENT_ERROR | VIR_STREAM_EVENT_HANGUP)) {
        shut(c, "the appliance's channel ended");
        closed_now = true;
        goto out;
    }
    update_watches(c);
out:
    pthread_mutex_unlock(&c->lock);
    if (closed_now)
        tell_closed(c);
}

static void fd_cb(int watch, int fd, int events, void *opaque)
{
    struct vm_channel *c = opaque;
    pthread_mutex_lock(&c->lock);
    if (c->closed)
        goto out;
    if (events & VIR_EVENT_HANDLE_WRITABLE)
        flush_down(c);
    if ((events & (VIR_EVENT_HANDLE_READABLE | VIR_EVENT_HANDLE_HANGUP)) && c->up_len == 0) {
        ssize_t n = read(fd, c->up, BUF_SIZE);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            /* The handle closed: stop watching it, keep the appliance's side. */
            virEventRemoveHandle(c->fd_watch);
            c->fd_watch = -1;
            close(c->fd);
            c->fd = -1;
            c->down_len = c->down_off = 0;
            goto update;
        }
        if (n > 0) {
            c->up_len = (size_t)n;
            c->up_off = 0;
            int s = virStreamSend(c->stream, c->up, c->up_len);
            if (s > 0)
                c->up_off = (size_t)s;
            if (c->up_off == c->up_len)
                c->up_off = c->up_len = 0;
            else if (s == -1) {
                shut(c, virGetLastErrorMessage());
                pthread_mutex_unlock(&c->lock);
                tell_closed(c);
                return;
            }
        }
    }
update:
    update_watches(c);
out:
    pthread_mutex_unlock(&c->lock);
}

static struct vm_channel *channel_new(bool console)
{
    struct vm_channel *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    c->refs = 1;
    c->fd = -1;
    c->fd_watch = -1;
    c->console = console;
    if (!console && (!(c->down = malloc(BUF_SIZE)) || !(c->up = malloc(BUF_SIZE)))) {
        channel_unref(c);
        return NULL;
    }
    return c;
}

struct vm_channel *vm_channel_open(virConnectPtr conn, virDomainPtr dom, const char *name,
                                   bool console, void (*on_close)(void *opaque, const char *reason),
                                   void *opaque)
{
    struct vm_channel *c = channel_new(console);
    if (!c)
        return vm_error(ENOMEM, "out of memory"), NULL;
    c->on_close = on_close;
    c->on_close_opaque = opaque;
    c->stream = virStreamNew(conn, VIR_STREAM_NONBLOCK);
    if (!c->stream) {
        vm_error_libvirt(EIO, "cannot create a stream");
        channel_unref(c);
        return NULL;
    }
    int r = console ? virDomainOpenConsole(dom, NULL, c->stream, VIR_DOMAIN_CONSOLE_FORCE)
                    : virDomainOpenChannel(dom, name, c->stream, 0);
    if (r < 0) {
        vm_error_libvirt(EIO, "cannot open the appliance's %s", console ? "console" : "channel");
        channel_unref(c);
        return NULL;
    }
    pthread_mutex_lock(&c->lock);
    channel_ref(c); /* the stream callback's */
    if (virStreamEventAddCallback(c->stream, stream_events(c), stream_cb, c, unref_cb) < 0) {
        __atomic_sub_fetch(&c->refs, 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&c->lock);
        vm_error_libvirt(EIO, "cannot watch the appliance's channel");
        channel_unref(c);
        return NULL;
    }
    c->stream_cb = true;
    pthread_mutex_unlock(&c->lock);
    return c;
}

int vm_channel_wait_flag(struct vm_channel *c, int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    while (!c->flag_seen && !c->closed)
        if (pthread_cond_timedwait(&c->cond, &c->lock, &deadline) == ETIMEDOUT)
            return vm_error(ETIMEDOUT, "the appliance sent no launch flag within %d s",
                            timeout_ms / 1000);
    if (!c->flag_seen)
        return vm_error(EIO, "%s", c->close_reason ? c->close_reason : "channel closed");
    return 0;
}

int vm_channel_attach(struct vm_channel *c, int fd)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    if (c->closed || !c->flag_seen)
        return vm_error(EIO, "the appliance's channel is not ready");
    if (c->fd >= 0)
        return vm_error(EBUSY, "a handle is already attached to the appliance");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->fd = fd;
    /* The handle waits for the flag the appliance sent at boot. */
    memcpy(c->down, launch_flag, sizeof launch_flag);
    c->down_len = sizeof launch_flag;
    c->down_off = 0;
    flush_down(c);
    channel_ref(c);
    c->fd_watch = virEventAddHandle(fd, fd_events(c), fd_cb, c, unref_cb);
    if (c->fd_watch < 0) {
        __atomic_sub_fetch(&c->refs, 1, __ATOMIC_RELAXED);
        c->fd = -1;
        return vm_error_libvirt(EIO, "cannot watch the handle's socket");
    }
    update_watches(c);
    return 0;
}

char *vm_channel_console_tail(struct vm_channel *c, size_t max)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&c->lock);
    size_t have = c->ring_full ? CONSOLE_RING : c->ring_pos;
    size_t n = have < max ? have : max;
    char *s = malloc(n + 1);
    if (!s)
        return NULL;
    size_t start = (c->ring_pos + CONSOLE_RING - n) % CONSOLE_RING;
    for (size_t i = 0; i < n; i++)
        s[i] = c->ring[(start + i) % CONSOLE_RING];
    s[n] = '\0';
    return s;
}

void vm_channel_close(struct vm_channel *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->on_close = NULL; /* the owner is going: tell nobody */
    shut(c, "closed by virtmount");
    pthread_mutex_unlock(&c->lock);
    channel_unref(c);
}
