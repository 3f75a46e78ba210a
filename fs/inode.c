/* The inode table: the nodes the kernel currently knows, by number.
 *
 * Numbers come from the registry (lib/ino.c) keyed by what a node is, so the
 * same object has the same number at every mount.  A node lives from its
 * first lookup until the kernel forgets it (lookup counts, as libfuse's
 * passthrough_ll does); the root is never forgotten.  This file does not know
 * what any node shows: that is the node-*.c files' job.
 */
#include "fs.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"

#define NBUCKETS 4096

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct node *buckets[NBUCKETS];
static struct vm_ino_registry *registry;
static struct vm_host **hosts;
static size_t nhosts;
static struct node root = {.ino = FUSE_ROOT_ID, .parent = FUSE_ROOT_ID, .kind = NODE_ROOT};

/* Guest nodes, most recently used first, and the memory they hold: past
 * the cache limit the coldest are invalidated so the kernel forgets them
 * (it holds lookup counts; only its FORGET lets us free a node). */
static struct node lru = {.lru_prev = &lru, .lru_next = &lru};
static size_t guest_memory, trimming_memory; /* the latter: on their way out */
static size_t cache_limit = 256u << 20;
static pthread_cond_t trim_cond = PTHREAD_COND_INITIALIZER;
static pthread_t trimmer;
static bool trimmer_running, trimmer_stop;

static void *trim_thread(void *arg);

/* What malloc takes for SIZE bytes: a header, rounded up to 16. */
static size_t chunk(size_t size)
{
    return size ? (size + 8 + 15) / 16 * 16 : 0;
}

static size_t string_memory(const char *s)
{
    return s ? chunk(strlen(s) + 1) : 0;
}

/* What a node costs (the kernel's dentry and inode are not ours). */
static size_t node_memory(const struct node *n)
{
    return chunk(sizeof *n) + string_memory(n->name) + string_memory(n->path) +
           string_memory(n->fsname) + string_memory(n->disk) + string_memory(n->volume) +
           chunk(n->xattrs.len);
}

/* The trimmer starts past TRIM_HIGH % of the limit and stops at TRIM_LOW %:
 * the headroom above is for what arrives while the kernel's FORGETs come
 * back, and for what the limit does not count (buffers, threads). */
#define TRIM_HIGH 75
#define TRIM_LOW  60

/* What the limit bounds: guest nodes, and the listings kept for lookups. */
static size_t cached_memory(void)
{
    return guest_memory + lookahead_memory();
}

static bool over_high(void)
{
    return guest_memory && cached_memory() > cache_limit / 100 * TRIM_HIGH;
}

bool node_xattrs_known(const struct node *n)
{
    return n->kind == NODE_GUEST && __atomic_load_n(&n->xattrs_known, __ATOMIC_ACQUIRE);
}

/* Children lists: a directory's known children, those whose extended
 * attributes are not known yet first (fetched together), the others after
 * them (kids_last); read ahead from together (inode_small_siblings). */
static void kid_unlink(struct node *n)
{
    if (!n->up)
        return;
    if (n->kid_prev)
        n->kid_prev->kid_next = n->kid_next;
    else
        n->up->kids = n->kid_next;
    if (n->kid_next)
        n->kid_next->kid_prev = n->kid_prev;
    else
        n->up->kids_last = n->kid_prev;
    n->up = n->kid_prev = n->kid_next = NULL;
}

static void kid_link(struct node *n, struct node *up)
{
    kid_unlink(n);
    if (!up || up == n)
        return;
    n->up = up;
    if (node_xattrs_known(n)) { /* at the end */
        n->kid_prev = up->kids_last;
        if (up->kids_last)
            up->kids_last->kid_next = n;
        else
            up->kids = n;
        up->kids_last = n;
        return;
    }
    n->kid_next = up->kids;
    if (up->kids)
        up->kids->kid_prev = n;
    else
        up->kids_last = n;
    up->kids = n;
}

static void lru_unlink(struct node *n)
{
    if (!n->lru_next)
        return;
    n->lru_prev->lru_next = n->lru_next;
    n->lru_next->lru_prev = n->lru_prev;
    n->lru_prev = n->lru_next = NULL;
}

/* N is no longer on its way out (looked up again, or freed). */
static void untrim(struct node *n)
{
    trimming_memory -= n->trimming;
    n->trimming = 0;
}

static void lru_touch(struct node *n)
{
    if (n->kind != NODE_GUEST)
        return;
    untrim(n);
    lru_unlink(n);
    n->lru_next = lru.lru_next;
    n->lru_prev = &lru;
    lru.lru_next->lru_prev = n;
    lru.lru_next = n;
}

static const char *const kind_keys[NODE_KIND_COUNT] = {
    [NODE_ROOT] = "",           [NODE_STATUS] = "status",   [NODE_HOST] = "host",
    [NODE_DOMAIN] = "domain",   [NODE_DOMAIN_FILE] = "df",  [NODE_DEVICES] = "devices",
    [NODE_DEVICE] = "device",   [NODE_DEVICE_FILE] = "vf",  [NODE_DISKS] = "disks",
    [NODE_PLUGGED] = "plugged", [NODE_PLUGGED_FILE] = "pf", [NODE_GUEST] = "guest",
};

/* The registry key of ID: host name, domain UUID and path inside the domain;
 * for a guest file, its filesystem and the guest's own inode number, so hard
 * links are one node and a file keeps its number across replugs. */
static int key_of(const struct node_id *id, char **key)
{
    const char *host = id->host ? vm_host_name(id->host) : "";
    int n;
    if (id->kind == NODE_GUEST)
        n = asprintf(key, "%s\x1f%s\x1f%s\x1f%s\x1f%s%s%s\x1f%llu", kind_keys[id->kind], host,
                     id->uuid, id->disk, id->fsname, id->volume ? "\x1f" : "",
                     id->volume ? id->volume : "", (unsigned long long)id->st->st_ino);
    else
        n = asprintf(key, "%s\x1f%s\x1f%s\x1f%s\x1f%d", kind_keys[id->kind], host, id->uuid,
                     id->disk ? id->disk : "", id->file);
    return n < 0 ? vm_error(ENOMEM, "out of memory") : n;
}

/* A guest file's number: its filesystem's registry number in the high bits,
 * the guest's own inode number in the low 40.  No registry entry per file
 * (a walk of a million files costs nothing here), no collision between
 * filesystems, and registry numbers (the tree's, below 2^40) never meet
 * these.  An inode number the guest gives beyond 2^40 falls back to a
 * registry entry of its own. */
#define GUEST_INO_BITS 40

static fuse_ino_t guest_number(const struct node_id *id)
{
    uint64_t guest = (uint64_t)id->st->st_ino;
    if (guest >> GUEST_INO_BITS)
        return 0;
    CLEANUP_FREE char *key = NULL;
    /* A volume inside the filesystem (a btrfs subvolume) numbers its inodes
     * afresh: it is a filesystem of its own here, known by its path. */
    int len =
        asprintf(&key, "fs\x1f%s\x1f%s\x1f%s\x1f%s%s%s", vm_host_name(id->host), id->uuid, id->disk,
                 id->fsname, id->volume ? "\x1f" : "", id->volume ? id->volume : "");
    if (len < 0)
        return 0;
    uint64_t fs = vm_ino_get(registry, key, (size_t)len);
    if (!fs || fs >> (64 - GUEST_INO_BITS))
        return 0;
    return (fuse_ino_t)(fs << GUEST_INO_BITS | guest);
}

fuse_ino_t inode_number(const struct node_id *id)
{
    if (id->kind == NODE_ROOT)
        return FUSE_ROOT_ID;
    if (id->kind == NODE_GUEST) {
        fuse_ino_t ino = guest_number(id);
        if (ino)
            return ino;
    }
    CLEANUP_FREE char *key = NULL;
    int len = key_of(id, &key);
    if (len < 0)
        return 0;
    return vm_ino_get(registry, key, (size_t)len);
}

struct node_id node_identity(const struct node *n)
{
    struct node_id id = {.kind = n->kind,
                         .host = n->host,
                         .disk = n->disk,
                         .file = n->file,
                         .fsname = n->fsname,
                         .path = n->path,
                         .volume = n->volume,
                         .st = n->kind == NODE_GUEST ? &n->st : NULL,
                         .xattrs = node_xattrs_known(n) ? &n->xattrs : NULL};
    memcpy(id.uuid, n->uuid, sizeof id.uuid);
    return id;
}

int inode_table_init(struct vm_ino_registry *r, struct vm_host **h, size_t n)
{
    registry = r;
    hosts = h;
    nhosts = n;
    root.nlookup = 1;
    buckets[FUSE_ROOT_ID % NBUCKETS] = &root;
    if (!trimmer_running && pthread_create(&trimmer, NULL, trim_thread, NULL) == 0)
        trimmer_running = true;
    return 0;
}

static void node_free(struct node *n)
{
    free(n->name);
    free(n->disk);
    free(n->fsname);
    free(n->path);
    free(n->volume);
    free(n->xattrs.data);
    free(n);
}

void inode_table_free(void)
{
    if (trimmer_running) {
        pthread_mutex_lock(&table_lock);
        trimmer_stop = true;
        pthread_cond_broadcast(&trim_cond);
        pthread_mutex_unlock(&table_lock);
        pthread_join(trimmer, NULL);
        trimmer_running = false;
    }
    for (size_t i = 0; i < NBUCKETS; i++) {
        struct node *n = buckets[i];
        while (n) {
            struct node *next = n->hash_next;
            if (n != &root)
                node_free(n);
            n = next;
        }
        buckets[i] = NULL;
    }
}

/* The kernel's FORGETs come back asynchronously: let them, then give what
 * the freed nodes held back to the system.  Called with table_lock held. */
static void give_back(void)
{
    pthread_mutex_unlock(&table_lock);
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    malloc_trim(0);
    pthread_mutex_lock(&table_lock);
}

/* Asks the kernel to forget the coldest guest nodes while over the limit.
 *
 * Rounds follow each other without a pause while lookups keep adding nodes
 * (find stat'ing a directory larger than the cache adds thousands a
 * second, and each invalidation waits for that directory's lock): a node
 * already asked for is marked, and not asked for again until its FORGET had
 * time to come back. */
static void *trim_thread(void *arg)
{
    bool let_go = false; /* nodes were let go since the last malloc_trim */
    pthread_mutex_lock(&table_lock);
    while (!trimmer_stop) {
        if (!over_high()) {
            if (let_go)
                give_back();
            else
                pthread_cond_wait(&trim_cond, &table_lock);
            let_go = false;
            continue;
        }
        /* Down to TRIM_LOW % of the limit, in rounds of at most 4096 entries. */
        size_t low = cache_limit / 100 * TRIM_LOW, kept = cached_memory() - trimming_memory;
        size_t target = kept > low ? kept - low : 0, freed = 0, n = 0;
        struct invalidation *v = calloc(4096, sizeof *v);
        for (struct node *c = lru.lru_prev; v && c != &lru && freed < target && n < 4096;
             c = c->lru_prev) {
            if (c->trimming)
                continue;
            v[n++] =
                (struct invalidation){.ino = c->ino, .parent = c->parent, .name = strdup(c->name)};
            c->trimming = node_memory(c);
            trimming_memory += c->trimming;
            freed += c->trimming;
        }
        if (n == 0) {
            /* All asked for already: wait for the FORGETs; whatever the
             * kernel kept (in use elsewhere) is asked for again. */
            give_back();
            for (struct node *c = lru.lru_next; c != &lru; c = c->lru_next)
                untrim(c);
            free(v);
            continue;
        }
        pthread_mutex_unlock(&table_lock);
        fs_forget_entries(v, n);
        free(v);
        let_go = true;
        pthread_mutex_lock(&table_lock);
    }
    pthread_mutex_unlock(&table_lock);
    return NULL;
}

void inode_set_cache_limit(size_t bytes)
{
    cache_limit = bytes;
}

size_t inode_cache_limit(void)
{
    return cache_limit;
}

/* At the limit: the trimmer keeps a walk of ordinary directories under
 * it, but not one directory larger than the cache, whose entries the
 * kernel forgets only between two of its READDIRs (they hold the
 * directory's lock, which invalidating an entry takes). */
bool inode_cache_full(void)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    return cached_memory() >= cache_limit;
}

struct vm_host **inode_hosts(size_t *n)
{
    *n = nhosts;
    return hosts;
}

static struct node *find_locked(fuse_ino_t ino)
{
    for (struct node *n = buckets[ino % NBUCKETS]; n; n = n->hash_next)
        if (n->ino == ino)
            return n;
    return NULL;
}

struct node *inode_find(fuse_ino_t ino)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    struct node *n = find_locked(ino);
    if (n)
        lru_touch(n);
    return n;
}

struct node *inode_get(const struct node_id *id, fuse_ino_t parent, const char *name,
                       bool count_lookup)
{
    fuse_ino_t ino = inode_number(id);
    if (!ino)
        return NULL;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    struct node *n = find_locked(ino);
    if (n) {
        /* A domain renamed since: remember the name the kernel now uses. */
        if (name && strcmp(n->name ? n->name : "", name) != 0) {
            char *copy = strdup(name);
            if (copy) {
                /* Keep the cache's accounting right: the name is part of its size. */
                if (n->kind == NODE_GUEST)
                    guest_memory -= node_memory(n);
                free(n->name);
                n->name = copy;
                if (n->kind == NODE_GUEST)
                    guest_memory += node_memory(n);
                n->parent = parent;
                kid_link(n, find_locked(parent));
            }
        }
    } else {
        n = calloc(1, sizeof *n);
        if (!n)
            return vm_error(ENOMEM, "out of memory"), NULL;
        n->ino = ino;
        n->parent = parent;
        n->kind = id->kind;
        n->host = id->host;
        n->file = id->file;
        n->name = strdup(name ? name : "");
        memcpy(n->uuid, id->uuid, sizeof n->uuid);
        if (id->disk)
            n->disk = strdup(id->disk);
        if (id->fsname)
            n->fsname = strdup(id->fsname);
        if (id->path)
            n->path = strdup(id->path);
        if (id->volume)
            n->volume = strdup(id->volume);
        if (id->st)
            n->st = *id->st;
        if (id->xattrs && id->xattrs->len && (n->xattrs.data = malloc(id->xattrs->len))) {
            memcpy(n->xattrs.data, id->xattrs->data, id->xattrs->len);
            n->xattrs.len = id->xattrs->len;
        }
        n->xattrs_known = id->xattrs && (!id->xattrs->len || n->xattrs.data);
        if (!n->name || (id->disk && !n->disk) || (id->fsname && !n->fsname) ||
            (id->path && !n->path) || (id->volume && !n->volume)) {
            node_free(n);
            return vm_error(ENOMEM, "out of memory"), NULL;
        }
        n->hash_next = buckets[ino % NBUCKETS];
        buckets[ino % NBUCKETS] = n;
        kid_link(n, find_locked(parent));
        if (n->kind == NODE_GUEST) {
            guest_memory += node_memory(n);
            if (over_high())
                pthread_cond_signal(&trim_cond);
        }
    }
    lru_touch(n);
    if (count_lookup)
        n->nlookup++;
    return n;
}

void inode_forget(fuse_ino_t ino, uint64_t nlookup)
{
    if (ino == FUSE_ROOT_ID)
        return;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    struct node **pp = &buckets[ino % NBUCKETS];
    while (*pp && (*pp)->ino != ino)
        pp = &(*pp)->hash_next;
    struct node *n = *pp;
    if (!n)
        return;
    n->nlookup = n->nlookup > nlookup ? n->nlookup - nlookup : 0;
    if (n->nlookup == 0) {
        *pp = n->hash_next;
        if (n->kind == NODE_GUEST)
            guest_memory -= node_memory(n);
        untrim(n);
        lru_unlink(n);
        kid_unlink(n);
        while (n->kids)
            kid_unlink(n->kids);
        node_free(n);
    }
}

/* The last part of guest path P when P is directly in directory DIR (LEN
 * bytes of it), else NULL. */
static const char *name_in(const char *p, const char *dir, size_t len)
{
    if (!p || strncmp(p, dir, len) != 0)
        return NULL;
    const char *rest = p + len;
    if (len > 1 && *rest++ != '/')
        return NULL;
    return *rest && !strchr(rest, '/') ? rest : NULL;
}

size_t inode_xattrs_wanted(const struct node *n, fuse_ino_t *inos, char **names, size_t max)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    const char *slash = strrchr(n->path, '/');
    if (max == 0 || node_xattrs_known(n) || !slash || !(names[0] = strdup(slash + 1)))
        return 0;
    size_t count = 0, len = slash == n->path ? 1 : (size_t)(slash - n->path);
    inos[count++] = n->ino;
    /* By path, not by name: a hard link's node has the path it was first
     * seen at, and may be the child of another directory now.  Nodes
     * whose xattrs are not known come first on these lists (kid_link). */
    for (struct node *k = n->up ? n->up->kids : NULL; k && count < max; k = k->kid_next) {
        if (node_xattrs_known(k))
            break; /* the rest are known too */
        const char *name = k == n || k->kind != NODE_GUEST ? NULL : name_in(k->path, n->path, len);
        if (!name)
            continue;
        if (!(names[count] = strdup(name)))
            break;
        inos[count++] = k->ino;
    }
    return count;
}

size_t inode_small_siblings(const struct node *n, off_t max_size, struct prefetch_entry **out)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    *out = NULL;
    const char *slash = strrchr(n->path, '/');
    struct node *up = slash ? n->up : NULL;
    if (!up)
        return 0;
    size_t len = slash == n->path ? 1 : (size_t)(slash - n->path), count = 0, cap = 0;
    for (struct node *k = up->kids; k; k = k->kid_next) {
        const char *name = k->kind != NODE_GUEST || !S_ISREG(k->st.st_mode) ||
                                   k->st.st_size > max_size || k->st.st_size == 0 || k->stored
                               ? NULL
                               : name_in(k->path, n->path, len);
        if (!name)
            continue;
        if (count == cap) {
            size_t ncap = cap ? 2 * cap : 64;
            struct prefetch_entry *v = realloc(*out, ncap * sizeof *v);
            if (!v)
                break;
            *out = v;
            cap = ncap;
        }
        struct prefetch_entry *e = &(*out)[count];
        *e = (struct prefetch_entry){.ino = k->ino, .size = k->st.st_size, .name = strdup(name)};
        if (!e->name)
            break;
        count++;
    }
    return count;
}

void inode_set_stored(fuse_ino_t ino)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    struct node *n = find_locked(ino);
    if (n && n->kind == NODE_GUEST)
        n->stored = true;
}

bool inode_unstore_siblings(const struct node *n)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    if (!n->stored)
        return false;
    for (struct node *k = n->up ? n->up->kids : NULL; k; k = k->kid_next)
        k->stored = false;
    ((struct node *)n)->stored = false;
    return true;
}

void inode_set_xattrs(fuse_ino_t ino, struct vm_xattrs *x)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    struct node *n = find_locked(ino);
    if (!n || n->kind != NODE_GUEST || node_xattrs_known(n)) {
        free(x->data);
        *x = (struct vm_xattrs){0};
        return;
    }
    guest_memory -= node_memory(n);
    n->xattrs = *x;
    *x = (struct vm_xattrs){0};
    guest_memory += node_memory(n);
    __atomic_store_n(&n->xattrs_known, true, __ATOMIC_RELEASE);
    kid_link(n, n->up); /* to the end of its directory's list */
    if (over_high())
        pthread_cond_signal(&trim_cond);
}

size_t inode_collect(struct vm_host *h, const char *uuid, struct invalidation **out,
                     bool (*still_there)(const struct node *n))
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    size_t count = 0, cap = 0;
    struct invalidation *v = NULL;
    for (size_t i = 0; i < NBUCKETS; i++)
        for (struct node *n = buckets[i]; n; n = n->hash_next) {
            if (n->host != h || (uuid && strcmp(n->uuid, uuid) != 0))
                continue;
            if (count == cap) {
                size_t ncap = cap ? cap * 2 : 32;
                struct invalidation *nv = realloc(v, ncap * sizeof *nv);
                if (!nv)
                    goto done;
                v = nv;
                cap = ncap;
            }
            bool keep = still_there(n);
            v[count++] = (struct invalidation){
                .ino = n->ino,
                .parent = keep ? 0 : n->parent,
                .name = keep ? NULL : strdup(n->name),
            };
        }
done:
    *out = v;
    return count;
}
