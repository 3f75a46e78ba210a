/* Lookup-ahead: lookups in a guest directory answered from its listing.
 *
 * The kernel stats an entry without asking us when READDIRPLUS gave it with
 * its attributes.  When it did not -- a plain READDIR, READDIRPLUS with the
 * node cache full (see op_readdirplus), or entries the kernel has since
 * forgotten -- each stat is a LOOKUP, and each LOOKUP one round trip to the
 * appliance: find, ls -l or rsync over a directory of 100 000 entries made
 * 100 000 of them, minutes under TCG.
 *
 * So the last few listings are kept here (their names, shared with the open
 * directory that took them), with an index by name, and a window of entries
 * with their attributes:
 *  - the entries READDIR just took with their attributes (ls -l stats each
 *    entry of a batch right after reading it);
 *  - or, on a lookup outside the window, that entry and the ones after it,
 *    in one lstatnslist, in the order the lookups come in: the listing's
 *    (ls, rsync) or the guest's inode numbers (find: gnulib's fts sorts a
 *    directory of more than 10 000 entries by d_ino before it stats them).
 *    The window doubles while the lookups keep to one order, up to what one
 *    call carries.
 * A name that is not in the listing is not there: a plugged disk cannot
 * change while plugged, so ENOENT needs no round trip either, which is how
 * shells and file managers probe (.hidden, .git, desktop.ini).
 *
 * A listing is tied to the plug it was taken under (a reference): after an
 * unplug and replug -- a running guest's new point in time -- it is dropped.
 * Memory: the newest listing, like that of an open directory (its names, and
 * ~24 bytes of index and order per entry), and older ones, up to AHEAD_KEPT
 * in all, within a quarter of cache_mb; what they hold counts in cache_mb
 * with the nodes (lookahead_memory).
 */
#include "fs.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "cleanup.h"

#define AHEAD_KEPT  4
#define AHEAD_FIRST 64   /* entries in the first window of a run */
#define AHEAD_MAX   1000 /* in one lstatnslist: what libguestfs sends per call */
#define NONE        SIZE_MAX

enum order { BY_LISTING, BY_INODE };

struct listing {
    int refs; /* the kept[] slot and lookups in flight; under lock */
    fuse_ino_t dir;
    struct vm_plug *plug;   /* a reference: the view the names are of */
    struct vm_names *names; /* a reference */
    uint32_t *index;        /* by name, open addressing: 1 + entry, 0 empty */
    size_t mask;            /* index has mask + 1 slots */
    uint64_t *ino;          /* each entry's guest inode number once READDIR saw it, else 0 */
    uint32_t *by_ino;       /* entries with a known number, in its order (built when needed) */
    size_t nby_ino;
    bool by_ino_stale; /* numbers were learnt since */
    /* The window: entries win[0 .. nwin) (ascending), their attributes st[]. */
    uint32_t *win;
    struct stat *st;
    size_t nwin;
    enum order order; /* the window's */
    size_t size;      /* how many the window asked for */
    size_t last;      /* the entry of the last lookup, or NONE */
    size_t bytes;     /* what it holds, about (see keep_within) */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct listing *kept[AHEAD_KEPT]; /* most recently used first */
static size_t kept_bytes;                /* theirs; read without the lock */

static uint64_t hash_name(const char *s)
{
    uint64_t h = 14695981039346656037ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void set_window(struct listing *l, uint32_t *win, struct stat *st, size_t n)
{
    free(l->win);
    free(l->st);
    l->win = win;
    l->st = st;
    l->nwin = n;
}

static void listing_unref(struct listing *l)
{
    if (!l || --l->refs > 0)
        return;
    vm_plug_unref(l->plug);
    vm_names_free(l->names);
    free(l->index);
    free(l->ino);
    free(l->by_ino);
    set_window(l, NULL, NULL, 0);
    free(l);
}

/* The entry NAME of L, or NONE. */
static size_t entry_of(const struct listing *l, const char *name)
{
    for (size_t s = hash_name(name) & l->mask;; s = (s + 1) & l->mask) {
        uint32_t e = l->index[s];
        if (e == 0)
            return NONE;
        if (strcmp(l->names->v[e - 1], name) == 0)
            return e - 1;
    }
}

static struct listing *listing_new(const struct node *dir, struct vm_plug *p,
                                   struct vm_names *names)
{
    if (names->n >= UINT32_MAX / 2)
        return NULL; /* billions of entries: not indexed, lookups go one by one */
    struct listing *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->refs = 1;
    l->dir = dir->ino;
    l->last = NONE;
    size_t slots = 16;
    while (slots < 2 * names->n)
        slots *= 2;
    l->mask = slots - 1;
    l->index = calloc(slots, sizeof *l->index);
    if (!l->index) {
        free(l);
        return NULL;
    }
    for (size_t i = 0; i < names->n; i++) {
        size_t s = hash_name(names->v[i]) & l->mask;
        while (l->index[s])
            s = (s + 1) & l->mask;
        l->index[s] = (uint32_t)(i + 1);
    }
    l->plug = p;
    l->names = vm_names_hold(names);
    size_t blob = names->n ? (size_t)(names->v[names->n - 1] - names->blob) + 256 : 0;
    l->bytes = blob + slots * sizeof *l->index +
               names->n * (sizeof *names->v + sizeof *l->ino + sizeof *l->by_ino) +
               AHEAD_MAX * (sizeof *l->win + sizeof *l->st);
    return l;
}

/* Drop kept[i]; under lock. */
static void drop_kept(size_t i)
{
    __atomic_sub_fetch(&kept_bytes, kept[i]->bytes, __ATOMIC_RELAXED);
    listing_unref(kept[i]);
    memmove(&kept[i], &kept[i + 1], (AHEAD_KEPT - 1 - i) * sizeof *kept);
    kept[AHEAD_KEPT - 1] = NULL;
}

/* The kept listing of DIR under plug P, made the most recent; under lock. */
static struct listing *find_kept(fuse_ino_t dir, const struct vm_plug *p)
{
    for (size_t i = 0; i < AHEAD_KEPT && kept[i]; i++) {
        if (kept[i]->dir != dir)
            continue;
        if (kept[i]->plug != p) { /* replugged since: another view */
            drop_kept(i);
            return NULL;
        }
        struct listing *l = kept[i];
        memmove(&kept[1], &kept[0], i * sizeof *kept);
        kept[0] = l;
        return l;
    }
    return NULL;
}

void lookahead_keep(const struct node *dir, struct vm_plug *p, struct vm_names *names)
{
    /* Built outside the lock: indexing 100 000 names takes a few ms. */
    struct listing *l = listing_new(dir, p, names);
    if (!l) {
        vm_plug_unref(p);
        return; /* out of memory: lookups just go one by one */
    }
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < AHEAD_KEPT && kept[i]; i++)
        if (kept[i]->dir == dir->ino) {
            drop_kept(i);
            break;
        }
    if (kept[AHEAD_KEPT - 1])
        drop_kept(AHEAD_KEPT - 1);
    memmove(&kept[1], &kept[0], (AHEAD_KEPT - 1) * sizeof *kept);
    kept[0] = l;
    __atomic_add_fetch(&kept_bytes, l->bytes, __ATOMIC_RELAXED);
    /* The newest is kept whatever its size (the lookups that follow a
     * listing are in it); older ones within a quarter of the cache. */
    size_t total = l->bytes;
    for (size_t i = 1; i < AHEAD_KEPT && kept[i]; i++) {
        total += kept[i]->bytes;
        if (total > inode_cache_limit() / 4) {
            while (kept[i])
                drop_kept(i);
            break;
        }
    }
    pthread_mutex_unlock(&lock);
}

void lookahead_note(const struct node *dir, const struct vm_plug *p, char *const *names,
                    size_t count, const struct stat *st)
{
    uint32_t *win = calloc(count ? count : 1, sizeof *win);
    struct stat *copy = malloc((count ? count : 1) * sizeof *copy);
    pthread_mutex_lock(&lock);
    struct listing *l = find_kept(dir->ino, p);
    /* The same listing, not one taken since by another opendir. */
    uintptr_t at = (uintptr_t)names, v = l ? (uintptr_t)l->names->v : 0;
    if (l && !(at >= v && at + count * sizeof *names <= v + l->names->n * sizeof *names))
        l = NULL;
    if (l && !l->ino)
        l->ino = calloc(l->names->n ? l->names->n : 1, sizeof *l->ino);
    if (l && l->ino && win && copy) {
        size_t first = (size_t)(names - l->names->v);
        for (size_t i = 0; i < count; i++) {
            win[i] = (uint32_t)(first + i);
            l->ino[first + i] = st[i].st_mode ? (uint64_t)st[i].st_ino : 0;
        }
        memcpy(copy, st, count * sizeof *copy);
        set_window(l, win, copy, count);
        l->order = BY_LISTING;
        l->size = count;
        l->by_ino_stale = true;
        win = NULL;
        copy = NULL;
    }
    pthread_mutex_unlock(&lock);
    free(win);
    free(copy);
}

static const uint64_t *sort_ino;

static int by_ino_cmp(const void *a, const void *b)
{
    uint64_t x = sort_ino[*(const uint32_t *)a], y = sort_ino[*(const uint32_t *)b];
    return x < y ? -1 : x > y;
}

/* The position of entry E in L's inode order, or NONE; under lock. */
static size_t ino_rank(struct listing *l, size_t e)
{
    if (!l->ino || !l->ino[e])
        return NONE;
    if (l->by_ino_stale || !l->by_ino) {
        uint32_t *v = realloc(l->by_ino, (l->names->n ? l->names->n : 1) * sizeof *v);
        if (!v)
            return NONE;
        l->by_ino = v;
        l->nby_ino = 0;
        for (size_t i = 0; i < l->names->n; i++)
            if (l->ino[i])
                v[l->nby_ino++] = (uint32_t)i;
        sort_ino = l->ino; /* under lock: qsort has no context argument */
        qsort(v, l->nby_ino, sizeof *v, by_ino_cmp);
        l->by_ino_stale = false;
    }
    size_t lo = 0, hi = l->nby_ino;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->ino[l->by_ino[mid]] < l->ino[e])
            lo = mid + 1;
        else
            hi = mid;
    }
    for (; lo < l->nby_ino && l->ino[l->by_ino[lo]] == l->ino[e]; lo++)
        if (l->by_ino[lo] == e)
            return lo;
    return NONE;
}

/* Entry E's place in L's window, or NONE; under lock. */
static size_t in_window(const struct listing *l, size_t e)
{
    size_t lo = 0, hi = l->nwin;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->win[mid] < e)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < l->nwin && l->win[lo] == e ? lo : NONE;
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The entries of the window to take for a lookup of E, which L's window
 * does not hold, into *WIN (malloc'd, ascending): *N of them; under lock. */
static int next_window(struct listing *l, size_t e, uint32_t **win, size_t *n)
{
    size_t last = l->last, r = ino_rank(l, e), lr = last == NONE ? NONE : ino_rank(l, last);
    enum order order;
    if (last != NONE && e == last + 1)
        order = BY_LISTING;
    else if (r != NONE && lr != NONE && r == lr + 1)
        order = BY_INODE;
    else /* a first lookup, or out of any order: a short run in the likelier one */
        order = r != NONE && l->nby_ino > 10000 ? BY_INODE : BY_LISTING;
    size_t size = AHEAD_FIRST;
    if (last != NONE && order == l->order && in_window(l, last) != NONE)
        size = l->size * 2 < AHEAD_MAX ? l->size * 2 : AHEAD_MAX; /* the run goes on */
    uint32_t *v = malloc(size * sizeof *v);
    if (!v)
        return vm_error(ENOMEM, "out of memory");
    size_t count = 0;
    if (order == BY_LISTING)
        for (size_t i = e; i < l->names->n && count < size; i++)
            v[count++] = (uint32_t)i;
    else
        for (size_t i = r; i < l->nby_ino && count < size; i++)
            v[count++] = l->by_ino[i];
    qsort(v, count, sizeof *v, u32_cmp);
    l->order = order;
    l->size = size;
    *win = v;
    *n = count;
    return 0;
}

int lookahead_stat(const struct node *dir, struct vm_plug *p, int fs, const char *name,
                   struct stat *st)
{
    pthread_mutex_lock(&lock);
    struct listing *l = find_kept(dir->ino, p);
    size_t e = l ? entry_of(l, name) : NONE;
    if (!l || e == NONE) {
        pthread_mutex_unlock(&lock);
        if (!l)
            return 0;
        return vm_error(ENOENT, "%s%s%s: no such entry", dir->path,
                        strcmp(dir->path, "/") == 0 ? "" : "/", name);
    }
    size_t w = in_window(l, e);
    if (w != NONE) {
        *st = l->st[w];
        l->last = e;
        pthread_mutex_unlock(&lock);
        return st->st_mode ? 1 : 0; /* could not be read: ask alone, for its error */
    }
    uint32_t *win = NULL;
    size_t count = 0;
    if (next_window(l, e, &win, &count) < 0) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    l->last = e;
    l->refs++;
    pthread_mutex_unlock(&lock);

    /* The round trip without the lock: lookups elsewhere go on meanwhile. */
    struct stat *attrs = calloc(count, sizeof *attrs);
    char **names = calloc(count, sizeof *names);
    for (size_t i = 0; attrs && names && i < count; i++)
        names[i] = l->names->v[win[i]];
    int r = attrs && names ? vm_guest_lstat_list(p, fs, dir->path, names, count, attrs) : -1;
    free(names);
    pthread_mutex_lock(&lock);
    if (r == 0) {
        for (size_t i = 0; i < count; i++)
            if (win[i] == e)
                *st = attrs[i];
        set_window(l, win, attrs, count);
    } else {
        free(win);
        free(attrs);
    }
    listing_unref(l);
    pthread_mutex_unlock(&lock);
    return r == 0 && st->st_mode ? 1 : 0;
}

size_t lookahead_memory(void)
{
    return __atomic_load_n(&kept_bytes, __ATOMIC_RELAXED);
}

void lookahead_clear(void)
{
    pthread_mutex_lock(&lock);
    while (kept[0])
        drop_kept(0);
    pthread_mutex_unlock(&lock);
}
