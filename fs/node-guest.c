/* Inside a plugged filesystem: directories, files and links of the guest,
 * read through the appliance.  Attributes are the guest's own (owners, modes,
 * ns times), taken when the entry is first seen: a plugged disk cannot change
 * while plugged.  Device nodes, fifos and sockets are shown, never opened.
 */
#include "fs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cleanup.h"

static int guest_getattr(const struct node *n, struct stat *st)
{
    *st = n->st;
    return 0;
}

/* NAME in guest directory DIR_PATH, malloc'd. */
static char *join_path(const char *dir_path, const char *name)
{
    char *path;
    if (asprintf(&path, "%s%s%s", dir_path, strcmp(dir_path, "/") == 0 ? "" : "/", name) < 0)
        return vm_error(ENOMEM, "out of memory"), NULL;
    return path;
}

static char *child_path(const struct node *dir, const char *name)
{
    return join_path(dir->path, name);
}

/* The directory PATH is in ("/" for the top's children), malloc'd. */
static char *parent_path(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : NULL;
    if (!dir)
        vm_error(ENOMEM, "out of memory");
    return dir;
}

/* The filesystem index of N in plug P, or -1 (ENOENT). */
static int fs_of(const struct node *n, struct vm_plug *p)
{
    return vm_plug_fs_index(p, n->fsname);
}

/* CHILD (at PATH, attributes ST) of DIR: a directory on another device than
 * DIR's is the top of a volume of its own (a btrfs subvolume), whose inode
 * numbers start afresh. */
static void set_volume(const struct node *dir, const char *path, const struct stat *st,
                       struct node_id *child)
{
    child->volume = st->st_dev != dir->st.st_dev ? path : dir->volume;
}

static int guest_lookup(const struct node *dir, const char *name, struct node_id *child)
{
    struct vm_plug *p = node_plug(dir);
    if (!p)
        return -1;
    int fs = fs_of(dir, p);
    /* Buffers the caller copies into the node before this thread looks up again. */
    static __thread char *path;
    static __thread struct stat st;
    free(path);
    path = child_path(dir, name);
    int r = fs < 0 || !path ? -1 : lookahead_stat(dir, p, fs, name, &st);
    if (r == 0)
        r = vm_guest_lstat(p, fs, path, &st);
    vm_plug_unref(p);
    if (r < 0)
        return -1;
    *child = node_identity(dir);
    child->path = path;
    child->st = &st;
    child->xattrs = NULL; /* see guest_load_xattrs */
    set_volume(dir, path, &st, child);
    return 0;
}

/* A directory's names come first (readdir, or ls0 for a large one: one
 * round trip, however many), and the attributes of a window of them at a
 * time (lstatnslist), as READDIR reaches them: a directory of any size
 * costs a bounded amount here.  The names are kept for the lookups that
 * follow (lookahead.c). */
static int guest_names(const struct node *dir, struct vm_names **out)
{
    struct vm_plug *p = node_plug(dir);
    if (!p)
        return -1;
    int fs = fs_of(dir, p);
    *out = fs < 0 ? NULL : vm_guest_names(p, fs, dir->path, dir->st.st_size);
    if (*out)
        lookahead_keep(dir, p, *out); /* takes p */
    else
        vm_plug_unref(p);
    return *out ? 0 : -1;
}

static int guest_list_range(const struct node *dir, char *const *names, size_t count,
                            struct dir_list *list)
{
    struct vm_plug *p = node_plug(dir);
    if (!p)
        return -1;
    int fs = fs_of(dir, p);
    CLEANUP_FREE struct stat *st = calloc(count ? count : 1, sizeof *st);
    int r = fs < 0 ? -1 : 0;
    if (r == 0 && !st)
        r = vm_error(ENOMEM, "out of memory");
    if (r == 0)
        r = vm_guest_lstat_list(p, fs, dir->path, names, count, st);
    if (r == 0)
        lookahead_note(dir, p, names, count, st);
    vm_plug_unref(p);
    for (size_t i = 0; i < count && r == 0; i++) {
        if (st[i].st_mode == 0) {
            r = dir_list_add_gone(list, names[i]);
            continue;
        }
        char *path = child_path(dir, names[i]);
        if (!path)
            return -1;
        struct node_id id = node_identity(dir);
        id.path = path;
        id.st = &st[i];
        id.xattrs = NULL; /* see guest_load_xattrs */
        set_volume(dir, path, &st[i], &id);
        r = dir_list_add(list, &id, names[i]);
        free(path);
    }
    return r;
}

/* What prefetch.c reads a directory's files with. */
struct guest_dir {
    struct vm_plug *plug;
    int fs;
    char *path;
};

static void *guest_dir_open(const struct node *n)
{
    struct guest_dir *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->plug = node_plug(n);
    d->fs = d->plug ? fs_of(n, d->plug) : -1;
    d->path = d->fs < 0 ? NULL : parent_path(n->path);
    if (!d->path) {
        vm_plug_unref(d->plug);
        free(d);
        return NULL;
    }
    return d;
}

/* Whether the disk is still plugged as it was: not unplugged, nor replugged
 * (a running guest's new point in time). */
static bool guest_dir_current(void *dir)
{
    return vm_plug_current(((struct guest_dir *)dir)->plug);
}

static ssize_t guest_dir_fetch(void *dir, const char *name, char *buf, size_t size)
{
    struct guest_dir *d = dir;
    CLEANUP_FREE char *path = join_path(d->path, name);
    return path ? vm_guest_pread(d->plug, d->fs, path, buf, size, 0) : -1;
}

/* Counted as an open of the plug (vm_plug_open_current): an unplug waits
 * for the fetch and its store, and invalidates after. */
static bool guest_dir_hold(void *dir)
{
    return vm_plug_open_current(((struct guest_dir *)dir)->plug);
}

static void guest_dir_release(void *dir)
{
    vm_plug_close(((struct guest_dir *)dir)->plug);
}

static void guest_dir_close(void *dir)
{
    struct guest_dir *d = dir;
    vm_plug_unref(d->plug);
    free(d->path);
    free(d);
}

static const struct prefetch_io guest_prefetch_io = {
    .siblings = inode_small_siblings,
    .dir_open = guest_dir_open,
    .fetch = guest_dir_fetch,
    .current = guest_dir_current,
    .hold = guest_dir_hold,
    .release = guest_dir_release,
    .dir_close = guest_dir_close,
};

struct guest_file {
    struct vm_plug *plug;
    int fs;
    const char *path;
    struct readahead ra;
};

static int guest_open(const struct node *n, void **handle)
{
    if (!S_ISREG(n->st.st_mode))
        return vm_error(ENXIO, "%s is not a regular file", n->path);
    struct guest_file *f = calloc(1, sizeof *f);
    if (!f)
        return vm_error(ENOMEM, "out of memory");
    f->plug = node_plug(n);
    f->fs = f->plug ? fs_of(n, f->plug) : -1;
    if (f->fs < 0) {
        vm_plug_unref(f->plug);
        free(f);
        return -1;
    }
    f->path = n->path;
    readahead_init(&f->ra);
    *handle = f;
    prefetch_open(n, &guest_prefetch_io);
    return 0;
}

static ssize_t fetch(void *ctx, char *buf, size_t size, off_t off)
{
    struct guest_file *f = ctx;
    return vm_guest_pread(f->plug, f->fs, f->path, buf, size, off);
}

static ssize_t guest_read(const struct node *n, void *handle, char *buf, size_t size, off_t off)
{
    struct guest_file *f = handle;
    if (off == 0)
        inode_unstore_siblings(n);
    ssize_t got = readahead_read(&f->ra, buf, size, off, n->st.st_size, fetch, f);
    /* Read whole: in the page cache now, like a file read ahead. */
    if (off == 0 && got == n->st.st_size)
        inode_set_stored(n->ino);
    return got;
}

static void guest_release(const struct node *n, void *handle)
{
    struct guest_file *f = handle;
    readahead_free(&f->ra);
    vm_plug_unref(f->plug);
    free(f);
}

static char *guest_readlink(const struct node *n)
{
    struct vm_plug *p = node_plug(n);
    if (!p)
        return NULL;
    int fs = fs_of(n, p);
    /* Shown as stored in the guest: an absolute target is never resolved here. */
    char *target = fs < 0 ? NULL : vm_guest_readlink(p, fs, n->path);
    vm_plug_unref(p);
    return target;
}

/* Extended attributes are fetched when first asked for, not with the
 * listing (find, rsync -a and tar never ask), and then for every child of
 * the same directory the kernel knows: `ls -l` and `getfattr -R` ask for
 * each in turn.  The kernel does not cache them; this table does. */
#define XATTR_BATCH 1000

static int guest_load_xattrs(const struct node *n)
{
    struct vm_plug *p = node_plug(n);
    if (!p)
        return -1;
    int fs = fs_of(n, p), r = fs < 0 ? -1 : 0;
    if (r == 0 && strcmp(n->path, "/") == 0) {
        struct vm_xattrs x;
        r = vm_guest_xattrs(p, fs, "/", &x);
        if (r == 0)
            inode_set_xattrs(n->ino, &x);
    } else if (r == 0) {
        CLEANUP_FREE fuse_ino_t *inos = calloc(XATTR_BATCH, sizeof *inos);
        CLEANUP_FREE char **names = calloc(XATTR_BATCH, sizeof *names);
        CLEANUP_FREE struct vm_xattrs *x = calloc(XATTR_BATCH, sizeof *x);
        CLEANUP_FREE bool *ok = calloc(XATTR_BATCH, sizeof *ok);
        size_t count =
            inos && names && x && ok ? inode_xattrs_wanted(n, inos, names, XATTR_BATCH) : 0;
        CLEANUP_FREE char *dir = parent_path(n->path);
        if (count == 0 && !node_xattrs_known(n))
            r = vm_error(ENOMEM, "out of memory");
        else if (count)
            r = dir ? vm_guest_xattrs_list(p, fs, dir, names, count, x, ok) : -1;
        /* One whose could not be read stays unknown: asked again next time. */
        if (r == 0 && count && !ok[0])
            r = vm_error(EIO, "cannot read the extended attributes of %s", n->path);
        for (size_t i = 0; i < count; i++) {
            if (ok[i])
                inode_set_xattrs(inos[i], &x[i]);
            free(x[i].data);
            free(names[i]);
        }
    }
    vm_plug_unref(p);
    return r;
}

const struct node_ops node_guest_ops = {
    .getattr = guest_getattr,
    .lookup = guest_lookup,
    .names = guest_names,
    .list_range = guest_list_range,
    .open = guest_open,
    .read = guest_read,
    .release = guest_release,
    .readlink = guest_readlink,
    .load_xattrs = guest_load_xattrs,
};
