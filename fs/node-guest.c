/* Inside a plugged filesystem: directories, files and links of the guest,
 * read through the appliance.  Attributes are the guest's own (owners, modes,
 * ns times), taken when the entry is first seen: a plugged disk cannot change
 * while plugged.  Device nodes, fifos and sockets are shown, never opened.
 */
#include "fs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int guest_getattr(const struct node *n, struct stat *st)
{
    *st = n->st;
    return 0;
}

static char *child_path(const struct node *dir, const char *name)
{
    char *path;
    if (asprintf(&path, "%s%s%s", dir->path, strcmp(dir->path, "/") == 0 ? "" : "/", name) < 0)
        return vm_error(ENOMEM, "out of memory"), NULL;
    return path;
}

/* The filesystem index of N in plug P, or -1 (ENOENT). */
static int fs_of(const struct node *n, struct vm_plug *p)
{
    return vm_plug_fs_index(p, n->fsname);
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
    static __thread struct vm_xattrs xattrs;
    free(path);
    free(xattrs.data);
    xattrs.data = NULL;
    path = child_path(dir, name);
    int r = fs < 0 || !path ? -1 : vm_guest_lstat(p, fs, path, &st);
    if (r == 0)
        r = vm_guest_xattrs(p, fs, path, &xattrs);
    vm_plug_unref(p);
    if (r < 0)
        return -1;
    *child = node_identity(dir);
    child->path = path;
    child->st = &st;
    child->xattrs = &xattrs;
    return 0;
}

static int guest_readdir(const struct node *dir, struct dir_list *list)
{
    struct vm_plug *p = node_plug(dir);
    if (!p)
        return -1;
    int fs = fs_of(dir, p);
    struct vm_guest_dir *d = fs < 0 ? NULL : vm_guest_readdir(p, fs, dir->path);
    vm_plug_unref(p);
    if (!d)
        return -1;
    int r = 0;
    for (size_t i = 0; i < d->n && r == 0; i++) {
        char *path = child_path(dir, d->v[i].name);
        if (!path) {
            r = -1;
            break;
        }
        struct node_id id = node_identity(dir);
        id.path = path;
        id.st = &d->v[i].st;
        id.xattrs = &d->v[i].xattrs;
        r = dir_list_add(list, &id, d->v[i].name);
        free(path);
    }
    vm_guest_dir_free(d);
    return r;
}

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
    return readahead_read(&f->ra, buf, size, off, n->st.st_size, fetch, f);
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

const struct node_ops node_guest_ops = {
    .getattr = guest_getattr,
    .lookup = guest_lookup,
    .readdir = guest_readdir,
    .open = guest_open,
    .read = guest_read,
    .release = guest_release,
    .readlink = guest_readlink,
};
