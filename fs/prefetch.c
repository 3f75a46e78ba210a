/* Read-ahead across files: a directory's small files read before they are
 * opened, into the kernel's page cache.
 *
 * rsync, tar, cp -r and backup scripts read a directory's files one after
 * another, each whole and once.  Each is a pread in the appliance, ~1 ms of
 * guestfsd's open, read and close under TCG, and the reader waits for each
 * in turn while the appliance's reader channel idles.  So once a second file
 * of one directory is opened (a scan, not a look at one file), the regular
 * files of at most FILE_MAX bytes that the kernel knows in that directory
 * (rsync and tar stat a directory's entries before they read them) are read
 * ahead by THREADS threads, in name order -- rsync's -- from the file just
 * opened, wrapping round.  The threads take the appliance's free handles
 * (vm_appliance_reader): its reader and main channels work at once, each on
 * a vCPU of its own, beside the reads the kernel asks for.  Each file is
 * stored in the kernel's page cache (notify_store), so the open that follows
 * (keep_cache: a plugged disk cannot change) reads it without a request.
 *
 * While opens keep finding their files read ahead (a reader going through
 * directory after directory), the first file opened in a directory starts
 * its scan.
 *
 * An open of a file being fetched waits for it: no file is read twice.  One
 * not fetched yet is taken off the list: the kernel's read will fetch it.  At
 * most AHEAD_FILES files and AHEAD_BYTES bytes per scan are fetched and not
 * opened yet; the scan waits for opens beyond that.  SCANS directories are
 * followed; the one opened least recently gives way.  Memory: a scan's list
 * of names, and the data of files in flight only.
 */
#include "fs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"

#define SCANS        4
#define FILE_MAX     (1024 * 1024)
#define AHEAD_FILES  256
#define AHEAD_BYTES  (16 * 1024 * 1024)
#define THREADS      (1 + VM_APPLIANCE_READERS) /* one per handle of an appliance */
#define STREAMING_MS 1000
#define OPEN_WAIT_S  5 /* an open waits for its file's fetch at most */
#define STOP_WAIT_S  5 /* prefetch_stop waits for the workers at most */

enum { QUEUED, FETCHING, FETCHED, TAKEN };

struct scan {
    fuse_ino_t dir;
    unsigned gen;    /* counts the slot's scans: a waiter knows if its is gone */
    uint64_t used;   /* when a file of it was last opened */
    fuse_ino_t last; /* the file opened last */
    bool started;    /* a second file was opened: the list was taken */
    const struct prefetch_io *io;
    void *ctx;                /* io's, for the directory */
    struct prefetch_entry *e; /* by name */
    size_t n;
    size_t next, left;         /* where fetching goes on (wrapping), how many not looked at */
    size_t ahead, ahead_bytes; /* fetching or fetched, not opened yet */
    int busy;                  /* threads fetching for it */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cond = PTHREAD_COND_INITIALIZER; /* a scan has work, or stop */
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER; /* a fetch ended */
static struct scan scans[SCANS];
static uint64_t tick;
static struct timespec last_hit; /* when an open last found its file read ahead */
static bool stopping;
static prefetch_store_fn store;
static size_t running; /* worker threads not yet ended */
static struct prefetch_stats stats;

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct prefetch_entry *)a)->name,
                  ((const struct prefetch_entry *)b)->name);
}

static struct prefetch_entry *entry_named(struct scan *s, const char *name)
{
    struct prefetch_entry key = {.name = (char *)name};
    return s->e ? bsearch(&key, s->e, s->n, sizeof *s->e, by_name) : NULL;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Empty slot S (lock held, S not busy); what it held is freed by the caller
 * after unlocking, through *CTX, *IO, *E and *N. */
static void reset(struct scan *s, void **ctx, const struct prefetch_io **io,
                  struct prefetch_entry **e, size_t *n)
{
    *ctx = s->ctx;
    *io = s->io;
    *e = s->e;
    *n = s->n;
    unsigned gen = s->gen + 1;
    *s = (struct scan){.gen = gen};
}

static void free_taken(void *ctx, const struct prefetch_io *io, struct prefetch_entry *e, size_t n)
{
    if (ctx && io)
        io->dir_close(ctx);
    for (size_t i = 0; i < n; i++)
        free(e[i].name);
    free(e);
}

/* The next entry a thread may fetch, marked FETCHING, and its scan (lock held). */
static struct prefetch_entry *pick(struct scan **out)
{
    for (size_t i = 0; i < SCANS; i++) {
        struct scan *s = &scans[i];
        while (s->e && s->left && s->ahead < AHEAD_FILES && s->ahead_bytes < AHEAD_BYTES) {
            struct prefetch_entry *e = &s->e[s->next];
            s->next = (s->next + 1) % s->n;
            s->left--;
            if (e->state != QUEUED)
                continue;
            e->state = FETCHING;
            s->ahead++;
            s->ahead_bytes += (size_t)e->size;
            s->busy++;
            *out = s;
            return e;
        }
    }
    return NULL;
}

static void *worker(void *arg)
{
    pthread_mutex_lock(&lock);
    for (;;) {
        struct scan *s;
        struct prefetch_entry *e;
        while (!stopping && !(e = pick(&s)))
            pthread_cond_wait(&work_cond, &lock);
        if (stopping)
            break;
        size_t size = (size_t)e->size;
        fuse_ino_t ino = e->ino;
        CLEANUP_FREE char *name = strdup(e->name);
        const struct prefetch_io *io = s->io;
        void *ctx = s->ctx;
        pthread_mutex_unlock(&lock);
        /* The scan stays while busy: its context and entries too.  Held
         * from the read to the store: an unplug waits, then invalidates. */
        char *buf = name ? malloc(size ? size : 1) : NULL;
        ssize_t got = -1;
        if (buf && io->hold(ctx)) {
            got = io->fetch(ctx, name, buf, size);
            if (got == (ssize_t)size && store)
                store(ino, buf, size);
            io->release(ctx);
        }
        free(buf);
        pthread_mutex_lock(&lock);
        if (got == (ssize_t)size) {
            e->state = FETCHED;
            stats.files++;
            stats.bytes += size;
        } else {
            /* Left to the kernel's read, which says what is wrong; a plug
             * gone or an appliance down fails the rest too: stop. */
            e->state = TAKEN;
            s->ahead--;
            s->ahead_bytes -= size;
            s->left = 0;
        }
        s->busy--;
        pthread_cond_broadcast(&done_cond);
    }
    running--;
    pthread_cond_broadcast(&done_cond);
    pthread_mutex_unlock(&lock);
    return arg;
}

static struct timespec in_seconds(int secs)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += secs;
    return ts;
}

void prefetch_init(prefetch_store_fn store_fn)
{
    pthread_mutex_lock(&lock);
    store = store_fn;
    stopping = false;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (size_t i = 0; i < THREADS; i++) {
        pthread_t th;
        if (pthread_create(&th, &attr, worker, NULL) == 0)
            running++;
    }
    pthread_attr_destroy(&attr);
    pthread_mutex_unlock(&lock);
}

void prefetch_stop(void)
{
    /* A worker may be held in notify_store by a page a READ has locked that
     * no thread will answer now: it is left behind (the process ends). */
    pthread_mutex_lock(&lock);
    stopping = true;
    pthread_cond_broadcast(&work_cond);
    struct timespec until = in_seconds(STOP_WAIT_S);
    while (running && pthread_cond_timedwait(&done_cond, &lock, &until) == 0)
        ;
    bool left = running > 0;
    pthread_mutex_unlock(&lock);
    if (left)
        return;
    last_hit = (struct timespec){0};
    for (size_t i = 0; i < SCANS; i++) {
        void *ctx;
        const struct prefetch_io *io;
        struct prefetch_entry *e;
        size_t n;
        pthread_mutex_lock(&lock);
        reset(&scans[i], &ctx, &io, &e, &n);
        pthread_mutex_unlock(&lock);
        free_taken(ctx, io, e, n);
    }
}

/* Take the list of N's directory and start fetching (lock held). */
static void start(struct scan *s, const struct node *n, const struct prefetch_io *io)
{
    s->started = true;
    s->io = io;
    s->n = io->siblings(n, FILE_MAX, &s->e);
    if (s->n)
        s->ctx = io->dir_open(n);
    if (!s->ctx) {
        for (size_t i = 0; i < s->n; i++)
            free(s->e[i].name);
        free(s->e);
        s->e = NULL;
        s->n = 0;
        return;
    }
    for (size_t i = 0; i < s->n; i++)
        s->e[i].state = QUEUED;
    qsort(s->e, s->n, sizeof *s->e, by_name);
    for (size_t i = 0; i < s->n; i++)
        if (s->e[i].ino == s->last)
            s->e[i].state = TAKEN; /* read before the scan began */
    struct prefetch_entry *cur = entry_named(s, base_name(n->path));
    if (cur)
        cur->state = TAKEN;
    s->next = cur ? (size_t)(cur - s->e + 1) % s->n : 0;
    s->left = s->n;
    pthread_cond_broadcast(&work_cond);
}

/* A reader is going through directory after directory (rsync, tar, cp -r):
 * an open found its file read ahead within STREAMING_MS.  Then the first
 * file opened in a directory starts its scan (lock held). */
static bool streaming(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (now.tv_sec - last_hit.tv_sec) * 1000 + (now.tv_nsec - last_hit.tv_nsec) / 1000000;
    return (last_hit.tv_sec || last_hit.tv_nsec) && ms < STREAMING_MS;
}

void prefetch_open(const struct node *n, const struct prefetch_io *io)
{
    void *old_ctx = NULL;
    const struct prefetch_io *old_io = NULL;
    struct prefetch_entry *old_e = NULL;
    size_t old_n = 0;
    pthread_mutex_lock(&lock);
    struct scan *s = NULL, *lru = NULL;
    for (size_t i = 0; i < SCANS && !s; i++) {
        if (scans[i].dir == n->parent && scans[i].dir)
            s = &scans[i];
        else if (!scans[i].busy && (!lru || scans[i].used < lru->used))
            lru = &scans[i];
    }
    if (!s && !lru)
        goto out; /* all fetching for other directories */
    /* A scan of a view since unplugged is over (a replug is another). */
    if (s && s->started && s->ctx && !s->busy && !s->io->current(s->ctx))
        lru = s, s = NULL;
    if (!s) {
        s = lru;
        reset(s, &old_ctx, &old_io, &old_e, &old_n);
        s->dir = n->parent;
    }
    s->used = ++tick;
    if (s->started) {
        struct prefetch_entry *e = entry_named(s, base_name(n->path));
        if (!e || e->ino != n->ino)
            goto out;
        unsigned gen = s->gen;
        /* The generation first: a scan ended meanwhile has freed E.  Not
         * for ever: a store may wait for a page a READ holds (a file opened
         * before the scan), and the READ for a thread; then it is read
         * twice. */
        struct timespec until = in_seconds(OPEN_WAIT_S);
        while (s->gen == gen && e->state == FETCHING &&
               pthread_cond_timedwait(&done_cond, &lock, &until) == 0)
            ;
        if (s->gen != gen || e->state == FETCHING)
            goto out;
        if (e->state == FETCHED) {
            stats.opened++;
            clock_gettime(CLOCK_MONOTONIC, &last_hit);
            s->ahead--;
            s->ahead_bytes -= (size_t)e->size;
            pthread_cond_broadcast(&work_cond); /* room ahead again */
        }
        e->state = TAKEN;
    } else if ((s->last && s->last != n->ino) || streaming()) {
        start(s, n, io);
    }
    s->last = n->ino;
out:
    pthread_mutex_unlock(&lock);
    free_taken(old_ctx, old_io, old_e, old_n);
}

void prefetch_get_stats(struct prefetch_stats *out)
{
    pthread_mutex_lock(&lock);
    *out = stats;
    pthread_mutex_unlock(&lock);
}
