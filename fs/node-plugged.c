/* disks/<name>/: a plugged disk.  `image` is the whole disk at block level,
 * `info` says what is on it, and each filesystem has its directory (part1,
 * whole, lv-<vg>-<lv>), served by node-guest.c.
 */
#include "fs.h"

#include <errno.h>
#include <string.h>

enum { F_IMAGE, F_INFO, NFILES };
static const char *const file_names[NFILES] = {"image", "info"};

static int plugged_getattr(const struct node *n, struct stat *st)
{
    struct vm_plug *p = node_plug(n);
    if (!p)
        return -1;
    node_fill_dir(st, 0555, vm_plug_fs_count(p), fs_mount_time());
    vm_plug_unref(p);
    return 0;
}

static int fs_root_id(const struct node *dir, struct vm_plug *p, const char *fsname,
                      struct node_id *child, struct stat *st, struct vm_xattrs *xattrs)
{
    int fs = vm_plug_fs_index(p, fsname);
    if (fs < 0 || vm_guest_lstat(p, fs, "/", st) < 0 || vm_guest_xattrs(p, fs, "/", xattrs) < 0)
        return -1;
    *child = node_child(dir, NODE_GUEST, NULL, 0);
    child->fsname = fsname;
    child->path = "/";
    child->st = st;
    child->xattrs = xattrs;
    return 0;
}

static int plugged_lookup(const struct node *dir, const char *name, struct node_id *child)
{
    for (int i = 0; i < NFILES; i++)
        if (strcmp(name, file_names[i]) == 0) {
            *child = node_child(dir, NODE_PLUGGED_FILE, NULL, i);
            return 0;
        }
    struct vm_plug *p = node_plug(dir);
    if (!p)
        return -1;
    /* The caller copies these before this thread looks up again. */
    static __thread struct stat st;
    static __thread struct vm_xattrs xattrs;
    free(xattrs.data);
    xattrs.data = NULL;
    int r = fs_root_id(dir, p, name, child, &st, &xattrs);
    vm_plug_unref(p);
    return r;
}

static int plugged_readdir(const struct node *dir, struct dir_list *list)
{
    for (int i = 0; i < NFILES; i++) {
        struct node_id id = node_child(dir, NODE_PLUGGED_FILE, NULL, i);
        if (dir_list_add(list, &id, file_names[i]) < 0)
            return -1;
    }
    struct vm_plug *p = node_plug(dir);
    if (!p)
        return -1;
    int r = 0;
    for (size_t i = 0; i < vm_plug_fs_count(p) && r == 0; i++) {
        struct node_id id;
        struct stat st;
        struct vm_xattrs xattrs = {0};
        const char *fsname = vm_plug_fs_name(p, i);
        r = fs_root_id(dir, p, fsname, &id, &st, &xattrs);
        if (r == 0)
            r = dir_list_add(list, &id, fsname);
        free(xattrs.data);
    }
    vm_plug_unref(p);
    return r;
}

const struct node_ops node_plugged_ops = {
    .is_dir = true,
    .getattr = plugged_getattr,
    .lookup = plugged_lookup,
    .readdir = plugged_readdir,
};

static int plugged_file_getattr(const struct node *n, struct stat *st)
{
    struct vm_plug *p = node_plug(n);
    if (!p)
        return -1;
    node_fill_file(st, fs_mount_time());
    if (n->file == F_IMAGE) {
        st->st_size = vm_plug_size(p);
        st->st_blocks = (blkcnt_t)((st->st_size + 511) / 512);
        st->st_blksize = VM_MAX_PREAD;
    } else {
        st->st_size = (off_t)strlen(vm_plug_info(p));
    }
    vm_plug_unref(p);
    return 0;
}

struct plugged_file {
    struct vm_plug *plug;
    struct readahead ra;
};

static int plugged_file_open(const struct node *n, void **handle)
{
    struct plugged_file *f = calloc(1, sizeof *f);
    if (!f)
        return vm_error(ENOMEM, "out of memory");
    f->plug = node_plug(n);
    if (!f->plug) {
        free(f);
        return -1;
    }
    readahead_init(&f->ra);
    *handle = f;
    return 0;
}

static ssize_t fetch_image(void *ctx, char *buf, size_t size, off_t off)
{
    return vm_plug_image_pread(ctx, buf, size, off);
}

static ssize_t plugged_file_read(const struct node *n, void *handle, char *buf, size_t size,
                                 off_t off)
{
    struct plugged_file *f = handle;
    struct vm_plug *p = f->plug;
    if (n->file == F_IMAGE)
        return readahead_read(&f->ra, buf, size, off, vm_plug_size(p), fetch_image, p);
    const char *info = vm_plug_info(p);
    size_t len = strlen(info);
    if (off < 0 || (size_t)off >= len)
        return 0;
    size_t count = len - (size_t)off < size ? len - (size_t)off : size;
    memcpy(buf, info + off, count);
    return (ssize_t)count;
}

static void plugged_file_release(const struct node *n, void *handle)
{
    struct plugged_file *f = handle;
    readahead_free(&f->ra);
    vm_plug_unref(f->plug);
    free(f);
}

const struct node_ops node_plugged_file_ops = {
    .getattr = plugged_file_getattr,
    .open = plugged_file_open,
    .read = plugged_file_read,
    .release = plugged_file_release,
};
