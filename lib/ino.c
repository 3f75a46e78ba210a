/* The inode registry: stable inode numbers for the objects of the tree.
 *
 * An object is named by a key (host, domain UUID and path inside the domain,
 * later the guest's own inode number): the first time a key is seen it gets
 * the next free number, and the pair is appended to a file in the state dir,
 * so the same object keeps its number across remounts.  A hash of the key
 * could not promise that two objects never share a number; this can.
 *
 * File format: the magic "VMINO1\n", then records of a little-endian u64
 * inode number, a u32 key length and the key bytes.  A torn record at the
 * end (a crash while appending) is cut off on open.
 */
#include "internal.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"

#define MAGIC     "VMINO1\n"
#define MAGIC_LEN 7
#define MAX_KEY   (64 * 1024)

struct slot {
    uint64_t ino; /* 0: empty */
    uint32_t keylen;
    char *key;
};

struct vm_ino_registry {
    pthread_mutex_t lock;
    int fd; /* -1: in memory only */
    struct slot *slots;
    size_t nslots; /* power of two */
    size_t used;
    uint64_t next;
};

static uint64_t hash_key(const void *key, size_t len)
{
    uint64_t h = 14695981039346656037ULL;
    for (const unsigned char *p = key; len--; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static struct slot *find_slot(struct slot *slots, size_t nslots, const void *key, size_t len)
{
    size_t i = hash_key(key, len) & (nslots - 1);
    while (slots[i].ino && !(slots[i].keylen == len && memcmp(slots[i].key, key, len) == 0))
        i = (i + 1) & (nslots - 1);
    return &slots[i];
}

static int grow(struct vm_ino_registry *r)
{
    size_t n = r->nslots ? r->nslots * 2 : 1024;
    struct slot *s = calloc(n, sizeof *s);
    if (!s)
        return vm_error(ENOMEM, "out of memory");
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i].ino)
            *find_slot(s, n, r->slots[i].key, r->slots[i].keylen) = r->slots[i];
    free(r->slots);
    r->slots = s;
    r->nslots = n;
    return 0;
}

/* Insert KEY → INO into memory; the key is copied. */
static int insert(struct vm_ino_registry *r, const void *key, size_t len, uint64_t ino)
{
    if ((r->used + 1) * 2 > r->nslots && grow(r) < 0)
        return -1;
    struct slot *s = find_slot(r->slots, r->nslots, key, len);
    if (s->ino) {
        s->ino = ino; /* a later record wins; should not happen */
        return 0;
    }
    s->key = malloc(len ? len : 1);
    if (!s->key)
        return vm_error(ENOMEM, "out of memory");
    memcpy(s->key, key, len);
    s->keylen = (uint32_t)len;
    s->ino = ino;
    r->used++;
    if (ino >= r->next)
        r->next = ino + 1;
    return 0;
}

static int load(struct vm_ino_registry *r, const char *path)
{
    struct stat st;
    if (fstat(r->fd, &st) < 0)
        return vm_error(errno, "cannot stat %s: %s", path, strerror(errno));
    if (st.st_size == 0) {
        if (write(r->fd, MAGIC, MAGIC_LEN) != MAGIC_LEN)
            return vm_error(errno ? errno : EIO, "cannot write %s: %s", path, strerror(errno));
        return 0;
    }
    CLEANUP_FREE char *data = malloc((size_t)st.st_size);
    if (!data)
        return vm_error(ENOMEM, "out of memory");
    if (pread(r->fd, data, (size_t)st.st_size, 0) != st.st_size)
        return vm_error(EIO, "cannot read %s", path);
    if (st.st_size < MAGIC_LEN || memcmp(data, MAGIC, MAGIC_LEN) != 0)
        return vm_error(EINVAL, "%s is not a virtmount inode registry", path);
    size_t off = MAGIC_LEN, end = (size_t)st.st_size;
    while (off + 12 <= end) {
        uint64_t ino;
        uint32_t len;
        memcpy(&ino, data + off, 8);
        memcpy(&len, data + off + 8, 4);
        ino = le64toh(ino);
        len = le32toh(len);
        if (len > MAX_KEY || off + 12 + len > end || ino < 2)
            break;
        if (insert(r, data + off + 12, len, ino) < 0)
            return -1;
        off += 12 + len;
    }
    if (off != end && ftruncate(r->fd, (off_t)off) < 0)
        return vm_error(errno, "cannot repair %s: %s", path, strerror(errno));
    return 0;
}

struct vm_ino_registry *vm_ino_open(const char *dir)
{
    struct vm_ino_registry *r = calloc(1, sizeof *r);
    if (!r)
        return vm_error(ENOMEM, "out of memory"), NULL;
    pthread_mutex_init(&r->lock, NULL);
    r->fd = -1;
    r->next = 2;
    if (grow(r) < 0)
        goto fail;
    if (!dir)
        return r;
    CLEANUP_FREE char *path = NULL;
    if (asprintf(&path, "%s/inodes", dir) < 0) {
        vm_error(ENOMEM, "out of memory");
        goto fail;
    }
    r->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (r->fd < 0) {
        vm_error(errno, "cannot open inode registry %s: %s", path, strerror(errno));
        goto fail;
    }
    if (flock(r->fd, LOCK_EX | LOCK_NB) < 0) {
        vm_error(errno == EWOULDBLOCK ? EBUSY : errno,
                 "inode registry %s is in use by another virtmount (use another -o statedir=)",
                 path);
        goto fail;
    }
    if (load(r, path) < 0)
        goto fail;
    return r;
fail:
    vm_ino_close(r);
    return NULL;
}

void vm_ino_close(struct vm_ino_registry *r)
{
    if (!r)
        return;
    if (r->fd >= 0)
        close(r->fd);
    for (size_t i = 0; i < r->nslots; i++)
        free(r->slots[i].key);
    free(r->slots);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

uint64_t vm_ino_get(struct vm_ino_registry *r, const void *key, size_t keylen)
{
    if (keylen > MAX_KEY)
        return vm_error(ENAMETOOLONG, "inode key too long"), 0;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&r->lock);
    struct slot *s = find_slot(r->slots, r->nslots, key, keylen);
    if (s->ino)
        return s->ino;
    uint64_t ino = r->next;
    if (r->fd >= 0) {
        CLEANUP_FREE char *rec = malloc(12 + keylen);
        if (!rec)
            return vm_error(ENOMEM, "out of memory"), 0;
        uint64_t le_ino = htole64(ino);
        uint32_t le_len = htole32((uint32_t)keylen);
        memcpy(rec, &le_ino, 8);
        memcpy(rec + 8, &le_len, 4);
        memcpy(rec + 12, key, keylen);
        /* One write with O_APPEND: a record is never interleaved. */
        ssize_t n = write(r->fd, rec, 12 + keylen);
        if (n != (ssize_t)(12 + keylen)) {
            int e = n < 0 ? errno : EIO;
            if (n > 0) {
                struct stat st;
                if (fstat(r->fd, &st) == 0 && ftruncate(r->fd, st.st_size - n) < 0) {
                    /* the torn record is cut off at the next open */
                }
            }
            return vm_error(e, "cannot append to the inode registry: %s", strerror(e)), 0;
        }
    }
    r->next = ino + 1; /* recorded: never handed out again, even if insert fails */
    if (insert(r, key, keylen, ino) < 0)
        return 0;
    return ino;
}
