/* What every node kind shares: the table of kinds, directory listings,
 * resolving a node against its host's snapshot, and common attributes.
 */
#include "fs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct node_ops *const kinds[NODE_KIND_COUNT] = {
    [NODE_ROOT] = &node_root_ops,
    [NODE_STATUS] = &node_status_ops,
    [NODE_HOST] = &node_host_ops,
    [NODE_DOMAIN] = &node_domain_ops,
    [NODE_DOMAIN_FILE] = &node_domain_file_ops,
    [NODE_DEVICES] = &node_devices_ops,
    [NODE_DEVICE] = &node_device_ops,
    [NODE_DEVICE_FILE] = &node_device_file_ops,
    [NODE_DISKS] = &node_disks_ops,
    [NODE_PLUGGED] = &node_plugged_ops,
    [NODE_PLUGGED_FILE] = &node_plugged_file_ops,
    [NODE_GUEST] = &node_guest_ops,
};

const struct node_ops *node_ops_of(enum node_kind kind)
{
    return kinds[kind];
}

static int dir_list_grow(struct dir_list *l)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct dir_entry *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return vm_error(ENOMEM, "out of memory");
        l->v = v;
        l->cap = cap;
    }
    return 0;
}

int dir_list_add_gone(struct dir_list *l, const char *name)
{
    if (dir_list_grow(l) < 0)
        return -1;
    struct dir_entry *e = &l->v[l->n];
    memset(e, 0, sizeof *e);
    e->gone = true;
    e->name = strdup(name);
    if (!e->name)
        return vm_error(ENOMEM, "out of memory");
    l->n++;
    return 0;
}

int dir_list_add(struct dir_list *l, const struct node_id *id, const char *name)
{
    fuse_ino_t ino = inode_number(id);
    if (!ino || dir_list_grow(l) < 0)
        return -1;
    struct dir_entry *e = &l->v[l->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    e->disk = id->disk ? strdup(id->disk) : NULL;
    e->fsname = id->fsname ? strdup(id->fsname) : NULL;
    e->path = id->path ? strdup(id->path) : NULL;
    e->volume = id->volume ? strdup(id->volume) : NULL;
    if (!e->name || (id->disk && !e->disk) || (id->fsname && !e->fsname) ||
        (id->path && !e->path) || (id->volume && !e->volume)) {
        free(e->name);
        free(e->disk);
        free(e->fsname);
        free(e->path);
        free(e->volume);
        return vm_error(ENOMEM, "out of memory");
    }
    e->ino = ino;
    e->id = *id;
    e->id.disk = e->disk;
    e->id.fsname = e->fsname;
    e->id.path = e->path;
    e->id.volume = e->volume;
    e->id.st = NULL;
    e->id.xattrs = NULL;
    e->has_xattrs = id->xattrs != NULL;
    if (id->xattrs && id->xattrs->len) {
        e->xattrs.data = malloc(id->xattrs->len);
        if (e->xattrs.data) {
            memcpy(e->xattrs.data, id->xattrs->data, id->xattrs->len);
            e->xattrs.len = id->xattrs->len;
        }
    }
    if (id->st) {
        e->has_st = true;
        e->st = *id->st;
        e->id.st = &e->st; /* fixed up again by dir_list_entry_id: the array may move */
        e->type = id->st->st_mode & S_IFMT;
    } else {
        e->type = node_ops_of(id->kind)->is_dir ? S_IFDIR : S_IFREG;
    }
    l->n++;
    return 0;
}

struct node_id dir_list_entry_id(struct dir_entry *e)
{
    struct node_id id = e->id;
    id.st = e->has_st ? &e->st : NULL;
    id.xattrs = e->has_xattrs ? &e->xattrs : NULL;
    return id;
}

void dir_list_free(struct dir_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].name);
        free(l->v[i].disk);
        free(l->v[i].fsname);
        free(l->v[i].path);
        free(l->v[i].volume);
        free(l->v[i].xattrs.data);
    }
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

int node_resolve(const struct node *n, struct resolved *r)
{
    memset(r, 0, sizeof *r);
    if (!n->host)
        return 0;
    r->list = vm_host_domains(n->host);
    if (!r->list)
        return -1;
    if (!n->uuid[0])
        return 0;
    r->domain = vm_domlist_find_uuid(r->list, n->uuid);
    if (!r->domain) {
        resolved_release(r);
        return vm_error(ENOENT, "domain %s is gone", n->uuid);
    }
    if (!n->disk)
        return 0;
    r->disk = vm_domain_find_disk(r->domain, n->disk, &r->disk_index);
    if (!r->disk) {
        resolved_release(r);
        return vm_error(ENOENT, "disk %s is gone", n->disk);
    }
    return 0;
}

void resolved_release(struct resolved *r)
{
    vm_domlist_unref(r->list);
    memset(r, 0, sizeof *r);
}

bool node_is_dir(const struct node *n)
{
    if (n->kind == NODE_GUEST)
        return S_ISDIR(n->st.st_mode);
    return node_ops_of(n->kind)->is_dir;
}

struct vm_plug *node_plug(const struct node *n)
{
    return vm_plug_find(n->host, n->uuid, n->disk);
}

struct node_id node_child(const struct node *parent, enum node_kind kind, const char *disk,
                          int file)
{
    struct node_id id = node_identity(parent);
    id.kind = kind;
    id.file = file;
    if (disk)
        id.disk = disk;
    return id;
}

static void fill_common(struct stat *st, time_t mtime)
{
    st->st_uid = getuid();
    st->st_gid = getgid();
    st->st_mtim.tv_sec = st->st_ctim.tv_sec = mtime;
    st->st_atim.tv_sec = mtime;
    st->st_blksize = 4096;
}

void node_fill_dir(struct stat *st, mode_t perm, size_t nsubdirs, time_t mtime)
{
    st->st_mode = S_IFDIR | perm;
    st->st_nlink = 2 + nsubdirs;
    fill_common(st, mtime);
}

void node_fill_file(struct stat *st, time_t mtime)
{
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    fill_common(st, mtime);
}

void readahead_init(struct readahead *ra)
{
    memset(ra, 0, sizeof *ra);
    pthread_mutex_init(&ra->lock, NULL);
}

void readahead_free(struct readahead *ra)
{
    free(ra->buf);
    pthread_mutex_destroy(&ra->lock);
}

ssize_t readahead_read(struct readahead *ra, char *out, size_t size, off_t off, off_t file_size,
                       ssize_t (*fetch)(void *ctx, char *buf, size_t size, off_t off), void *ctx)
{
    if (off >= file_size)
        return 0;
    if ((off_t)size > file_size - off)
        size = (size_t)(file_size - off);
    pthread_mutex_lock(&ra->lock);
    if (ra->buf && off >= ra->off && off + (off_t)size <= ra->off + (off_t)ra->len) {
        memcpy(out, ra->buf + (off - ra->off), size);
        ra->next = off + (off_t)size;
        pthread_mutex_unlock(&ra->lock);
        return (ssize_t)size;
    }
    /* Sequential (or large) reads fetch a whole window: one round trip
     * instead of several.  Small random reads fetch what they ask. */
    bool sequential = off == ra->next || size >= 256 * 1024;
    size_t want = sequential && size < VM_MAX_PREAD ? VM_MAX_PREAD : size;
    if ((off_t)want > file_size - off)
        want = (size_t)(file_size - off);
    if (want == size) {
        pthread_mutex_unlock(&ra->lock);
        ssize_t got = fetch(ctx, out, size, off);
        pthread_mutex_lock(&ra->lock);
        if (got > 0)
            ra->next = off + got;
        pthread_mutex_unlock(&ra->lock);
        return got;
    }
    if (!ra->buf && !(ra->buf = malloc(VM_MAX_PREAD))) {
        pthread_mutex_unlock(&ra->lock);
        return fetch(ctx, out, size, off);
    }
    ssize_t got = fetch(ctx, ra->buf, want, off);
    if (got < 0) {
        ra->len = 0;
        pthread_mutex_unlock(&ra->lock);
        return -1;
    }
    ra->off = off;
    ra->len = (size_t)got;
    size_t n = (size_t)got < size ? (size_t)got : size;
    memcpy(out, ra->buf, n);
    ra->next = off + (off_t)n;
    pthread_mutex_unlock(&ra->lock);
    return (ssize_t)n;
}
