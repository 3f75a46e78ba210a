/* The one FUSE low-level operations table.  Each handler finds the node,
 * dispatches on its kind through node_ops, and turns a lib error into
 * -errno in one place (reply_error).  Everything that would change the tree
 * is refused here: EROFS for writes, EPERM for mkdir/rmdir where they mean
 * nothing.
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include "cleanup.h"

/* The tree is invalidated explicitly on every change (fs_host_changed), so
 * the kernel may keep what it has for long. */
#define ENTRY_TIMEOUT 3600.0
#define ATTR_TIMEOUT  3600.0

static struct fuse_session *session;

void fs_set_session(struct fuse_session *se)
{
    session = se;
}

/* The one place a lib error becomes an errno for the kernel (and a log line). */
static void reply_error(fuse_req_t req, const char *op)
{
    int e = vm_error_errno();
    /* A lookup of a name that is not there is how shells and file managers
     * probe, and a host that is down was logged when it went: anything else
     * that fails is worth a line. */
    bool probe = (e == ENOENT || e == EHOSTUNREACH) &&
                 (strcmp(op, "lookup") == 0 || strcmp(op, "getattr") == 0);
    fs_log(probe ? LOG_DEBUG : LOG_INFO, "%s: %s", op, vm_error_message());
    fuse_reply_err(req, e);
}

static void reply_refused(fuse_req_t req, int e, const char *op, const char *name)
{
    vm_error(e, "%s",
             e == EROFS ? "virtmount is read-only"
                        : "mkdir and rmdir plug and unplug, in disks/ only");
    CLEANUP_FREE char *what = NULL;
    if (asprintf(&what, "%s%s%s", op, name ? " " : "", name ? name : "") < 0)
        what = NULL;
    reply_error(req, what ? what : op);
}

/* Stat N, with the size of a file's content. */
static int node_stat(const struct node *n, struct stat *st)
{
    const struct node_ops *ops = node_ops_of(n->kind);
    memset(st, 0, sizeof *st);
    if (ops->getattr(n, st) < 0)
        return -1;
    st->st_ino = n->ino;
    if (ops->content) {
        CLEANUP_FREE char *buf = NULL;
        size_t len = 0;
        if (ops->content(n, &buf, &len) < 0)
            return -1;
        st->st_size = (off_t)len;
        st->st_blocks = (blkcnt_t)((len + 511) / 512);
    }
    return 0;
}

/* Files and directories open under a plugged disk keep rmdir from unplugging it. */
static bool under_plug(const struct node *n)
{
    return n->kind == NODE_PLUGGED_FILE || n->kind == NODE_GUEST;
}

static int open_plug(const struct node *n, struct vm_plug **plug)
{
    *plug = NULL;
    if (!under_plug(n))
        return 0;
    *plug = node_plug(n);
    if (!*plug)
        return -1;
    vm_plug_open(*plug);
    return 0;
}

static void close_plug(struct vm_plug *p)
{
    if (p) {
        vm_plug_close(p);
        vm_plug_unref(p);
    }
}

/* An open directory.  Offsets are entry indexes: 0 = start, i + 1 = after
 * entry i; 0 and 1 are "." and "..".  A directory of the tree is listed
 * whole; a guest's holds its names and a window of entries with their
 * attributes, so that 100 000 entries cost their names and one window. */
struct open_dir {
    struct dir_list list; /* entries base .. base + list.n */
    size_t base;
    size_t total;
    struct vm_names *names; /* a guest directory's: entry i + 2 is names->v[i] */
    struct vm_plug *plug;
    bool listed; /* the listing is taken at the first READDIR (see op_opendir) */
};

#define DIR_WINDOW 1000

static struct node *find_node(fuse_ino_t ino);

/* Put "." and ".." (the first two entries) of N into D's list. */
static int list_dots(struct open_dir *d, struct node *n)
{
    struct node_id self = node_identity(n);
    struct node *parent = find_node(n->parent);
    struct node_id up = parent ? node_identity(parent) : self;
    return dir_list_add(&d->list, &self, ".") < 0 || dir_list_add(&d->list, &up, "..") < 0 ? -1 : 0;
}

/* Take D's listing of directory INO now, if it has not been taken yet. */
static int take_listing(struct open_dir *d, fuse_ino_t ino)
{
    if (d->listed)
        return 0;
    struct node *n = find_node(ino);
    if (!n)
        return -1;
    const struct node_ops *ops = node_ops_of(n->kind);
    if (ops->names) {
        if (ops->names(n, &d->names) < 0)
            return -1;
        d->total = 2 + d->names->n;
        d->base = d->total; /* an empty window */
    } else {
        if (list_dots(d, n) < 0 || ops->readdir(n, &d->list) < 0) {
            dir_list_free(&d->list);
            return -1;
        }
        d->total = d->list.n;
    }
    d->listed = true;
    return 0;
}

/* Entry I of D (I < d->total), its window taken if need be; NULL with an error recorded. */
static struct dir_entry *dir_entry_at(struct open_dir *d, fuse_ino_t ino, size_t i)
{
    if (i >= d->base && i - d->base < d->list.n)
        return &d->list.v[i - d->base];
    struct node *n = find_node(ino);
    if (!n)
        return NULL;
    dir_list_free(&d->list);
    d->base = i;
    size_t first = i < 2 ? 0 : i - 2;
    size_t count = d->names->n - first < DIR_WINDOW ? d->names->n - first : DIR_WINDOW;
    if (i < 2) {
        d->base = 0;
        if (list_dots(d, n) < 0)
            goto fail;
    }
    if (node_ops_of(n->kind)->list_range(n, d->names->v + first, count, &d->list) < 0)
        goto fail;
    if (i - d->base < d->list.n)
        return &d->list.v[i - d->base];
    vm_error(EIO, "listing of %s is short", n->name);
fail:
    dir_list_free(&d->list);
    d->base = d->total;
    return NULL;
}

struct open_file {
    char *buf; /* a generated file's content */
    size_t len;
    void *handle; /* or a data file's */
    struct vm_plug *plug;
};

static struct node *find_node(fuse_ino_t ino)
{
    struct node *n = inode_find(ino);
    if (!n)
        vm_error(ESTALE, "inode %lu is not known", (unsigned long)ino);
    return n;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct node *dir = find_node(parent);
    if (!dir)
        return reply_error(req, "lookup");
    const struct node_ops *ops = node_ops_of(dir->kind);
    if (!node_is_dir(dir)) {
        vm_error(ENOTDIR, "lookup %s: not a directory", name);
        return reply_error(req, "lookup");
    }
    struct node_id id;
    if (ops->lookup(dir, name, &id) < 0)
        return reply_error(req, "lookup");
    struct node *n = inode_get(&id, parent, name, true);
    if (!n)
        return reply_error(req, "lookup");
    struct fuse_entry_param e = {
        .ino = n->ino, .attr_timeout = ATTR_TIMEOUT, .entry_timeout = ENTRY_TIMEOUT};
    if (node_stat(n, &e.attr) < 0) {
        int err = vm_error_errno();
        inode_forget(n->ino, 1);
        errno = err;
        return reply_error(req, "lookup");
    }
    fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    inode_forget(ino, nlookup);
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    for (size_t i = 0; i < count; i++)
        inode_forget(forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct node *n = find_node(ino);
    struct stat st;
    if (!n || node_stat(n, &st) < 0)
        return reply_error(req, "getattr");
    fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct node *n = find_node(ino);
    if (!n)
        return reply_error(req, "opendir");
    if (!node_is_dir(n)) {
        vm_error(ENOTDIR, "opendir: not a directory");
        return reply_error(req, "opendir");
    }
    /* The listing is taken once, so a reader sees one snapshot: at opendir
     * for the tree's own directories, at the first READDIR for a guest's,
     * which the kernel then keeps: a warm opendir costs the appliance nothing. */
    struct open_dir *d = calloc(1, sizeof *d);
    if (!d) {
        vm_error(ENOMEM, "out of memory");
        return reply_error(req, "opendir");
    }
    if (open_plug(n, &d->plug) < 0 || (!node_ops_of(n->kind)->names && take_listing(d, ino) < 0)) {
        vm_names_free(d->names);
        close_plug(d->plug);
        free(d);
        return reply_error(req, "opendir");
    }
    /* A plugged disk cannot change while plugged: let the kernel keep the listing. */
    if (d->plug) {
        fi->cache_readdir = 1;
        fi->keep_cache = 1;
    }
    fi->fh = (uintptr_t)d;
    fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    struct open_dir *d = (struct open_dir *)(uintptr_t)fi->fh;
    if (take_listing(d, ino) < 0)
        return reply_error(req, "readdir");
    CLEANUP_FREE char *buf = malloc(size);
    if (!buf) {
        vm_error(ENOMEM, "out of memory");
        return reply_error(req, "readdir");
    }
    size_t used = 0;
    for (size_t i = (size_t)off; i < d->total; i++) {
        struct dir_entry *de = dir_entry_at(d, ino, i);
        if (!de) {
            if (used)
                break;
            return reply_error(req, "readdir");
        }
        if (de->gone)
            continue;
        struct stat st = {.st_ino = de->ino, .st_mode = de->type};
        size_t need =
            fuse_add_direntry(req, buf + used, size - used, de->name, &st, (off_t)(i + 1));
        if (need > size - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
}

/* readdir with each entry's attributes: `ls -l` and file managers need no
 * lookup per entry, and a guest directory costs its batched listing only. */
static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    struct open_dir *d = (struct open_dir *)(uintptr_t)fi->fh;
    if (take_listing(d, ino) < 0)
        return reply_error(req, "readdirplus");
    CLEANUP_FREE char *buf = malloc(size);
    if (!buf) {
        vm_error(ENOMEM, "out of memory");
        return reply_error(req, "readdirplus");
    }
    size_t used = 0;
    for (size_t i = (size_t)off; i < d->total; i++) {
        struct dir_entry *de = dir_entry_at(d, ino, i);
        if (!de) {
            if (used)
                break;
            return reply_error(req, "readdirplus");
        }
        if (de->gone)
            continue;
        struct fuse_entry_param e = {.attr_timeout = ATTR_TIMEOUT, .entry_timeout = ENTRY_TIMEOUT};
        bool dots = i < 2; /* "." and "..": no lookup count for those */
        size_t need = fuse_add_direntry_plus(req, NULL, 0, de->name, NULL, 0);
        if (need > size - used)
            break;
        if (dots || inode_cache_full()) {
            /* With the cache full, an entry without a node: the kernel
             * takes it as a plain dirent (no inode, no lookup count), and
             * looks it up if it is stat'ed.  A directory larger than the
             * cache costs no more memory than one that fits. */
            e.attr.st_ino = de->ino;
            e.attr.st_mode = de->type;
        } else {
            struct node_id id = dir_list_entry_id(de);
            struct node *n = inode_get(&id, ino, de->name, true);
            if (!n || node_stat(n, &e.attr) < 0) {
                if (n)
                    inode_forget(n->ino, 1);
                continue; /* gone since opendir: leave it out */
            }
            e.ino = n->ino;
        }
        used += fuse_add_direntry_plus(req, buf + used, size - used, de->name, &e, (off_t)(i + 1));
    }
    fuse_reply_buf(req, buf, used);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct open_dir *d = (struct open_dir *)(uintptr_t)fi->fh;
    close_plug(d->plug);
    dir_list_free(&d->list);
    vm_names_free(d->names);
    free(d);
    fuse_reply_err(req, 0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct node *n = find_node(ino);
    if (!n)
        return reply_error(req, "open");
    const struct node_ops *ops = node_ops_of(n->kind);
    if (node_is_dir(n)) {
        vm_error(EISDIR, "open: is a directory");
        return reply_error(req, "open");
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
        return reply_refused(req, EROFS, "open for writing", n->name);
    if (!ops->content && !ops->open) {
        vm_error(ENXIO, "open %s: devices, fifos and sockets of a guest are not opened", n->name);
        return reply_error(req, "open");
    }
    struct open_file *f = calloc(1, sizeof *f);
    if (!f) {
        vm_error(ENOMEM, "out of memory");
        return reply_error(req, "open");
    }
    int r = open_plug(n, &f->plug);
    if (r == 0)
        r = ops->content ? ops->content(n, &f->buf, &f->len) : ops->open(n, &f->handle);
    if (r < 0) {
        close_plug(f->plug);
        free(f);
        return reply_error(req, "open");
    }
    if (ops->content) {
        /* Generated at open: read it from here, not from the page cache. */
        fi->direct_io = 1;
    } else {
        /* A plugged disk cannot change while plugged: keep the page cache. */
        fi->keep_cache = 1;
    }
    fi->fh = (uintptr_t)f;
    fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    struct open_file *f = (struct open_file *)(uintptr_t)fi->fh;
    if (f->handle) {
        struct node *n = find_node(ino);
        const struct node_ops *ops = n ? node_ops_of(n->kind) : NULL;
        CLEANUP_FREE char *buf = ops ? malloc(size) : NULL;
        if (!buf) {
            if (ops)
                vm_error(ENOMEM, "out of memory");
            return reply_error(req, "read");
        }
        ssize_t got = ops->read(n, f->handle, buf, size, off);
        if (got < 0)
            return reply_error(req, "read");
        return (void)fuse_reply_buf(req, buf, (size_t)got);
    }
    if (off < 0 || (size_t)off >= f->len)
        return (void)fuse_reply_buf(req, NULL, 0);
    size_t n = f->len - (size_t)off;
    fuse_reply_buf(req, f->buf + off, n < size ? n : size);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct open_file *f = (struct open_file *)(uintptr_t)fi->fh;
    struct node *n = find_node(ino);
    if (n && f->handle && node_ops_of(n->kind)->release)
        node_ops_of(n->kind)->release(n, f->handle);
    close_plug(f->plug);
    free(f->buf);
    free(f);
    fuse_reply_err(req, 0);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct node *n = find_node(ino);
    if (!n)
        return reply_error(req, "readlink");
    const struct node_ops *ops = node_ops_of(n->kind);
    if (!ops->readlink || !S_ISLNK(n->st.st_mode)) {
        vm_error(EINVAL, "readlink %s: not a symbolic link", n->name);
        return reply_error(req, "readlink");
    }
    CLEANUP_FREE char *target = ops->readlink(n);
    if (!target)
        return reply_error(req, "readlink");
    fuse_reply_readlink(req, target);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    struct node *dir = find_node(parent);
    if (!dir)
        return reply_error(req, "mkdir");
    const struct node_ops *ops = node_ops_of(dir->kind);
    if (dir->kind == NODE_GUEST)
        return reply_refused(req, EROFS, "mkdir", name); /* a guest's filesystem is read-only */
    if (!ops->mkdir)
        return reply_refused(req, EPERM, "mkdir", name);
    if (ops->mkdir(dir, name) < 0)
        return reply_error(req, "mkdir");
    op_lookup(req, parent, name);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct node *dir = find_node(parent);
    if (!dir)
        return reply_error(req, "rmdir");
    const struct node_ops *ops = node_ops_of(dir->kind);
    if (dir->kind == NODE_GUEST)
        return reply_refused(req, EROFS, "rmdir", name);
    if (!ops->rmdir)
        return reply_refused(req, EPERM, "rmdir", name);
    if (ops->rmdir(dir, name) < 0)
        return reply_error(req, "rmdir");
    fuse_reply_err(req, 0);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    reply_refused(req, EROFS, "setattr", NULL);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    reply_refused(req, EROFS, "mknod", name);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    reply_refused(req, EROFS, "create", name);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    reply_refused(req, EROFS, "unlink", name);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    reply_refused(req, EROFS, "symlink", name);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    reply_refused(req, EROFS, "link", newname);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    reply_refused(req, EROFS, "rename", name);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
    reply_refused(req, EROFS, "setxattr", name);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    reply_refused(req, EROFS, "removexattr", name);
}

/* N, with its extended attributes known; NULL with an error recorded. */
static struct node *with_xattrs(fuse_ino_t ino)
{
    struct node *n = find_node(ino);
    const struct node_ops *ops = n ? node_ops_of(n->kind) : NULL;
    if (n && ops->load_xattrs && !node_xattrs_known(n) && ops->load_xattrs(n) < 0)
        return NULL;
    return n;
}

/* Extended attributes: a guest file's, fetched at the first question about
 * one in its directory; the tree's own objects have none.  Answered from
 * memory: the kernel asks on every `ls -l` and caches nothing. */
static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct node *n = with_xattrs(ino);
    if (!n)
        return reply_error(req, "getxattr");
    size_t pos = 0;
    const char *xname, *value;
    uint32_t len;
    while (node_xattrs_known(n) && vm_xattrs_next(&n->xattrs, &pos, &xname, &value, &len)) {
        if (strcmp(xname, name) != 0)
            continue;
        if (size == 0)
            return (void)fuse_reply_xattr(req, len);
        if (size < len)
            return (void)fuse_reply_err(req, ERANGE);
        return (void)fuse_reply_buf(req, value, len);
    }
    fuse_reply_err(req, ENODATA);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    struct node *n = with_xattrs(ino);
    if (!n)
        return reply_error(req, "listxattr");
    size_t total = 0, pos = 0;
    const char *xname, *value;
    uint32_t len;
    while (node_xattrs_known(n) && vm_xattrs_next(&n->xattrs, &pos, &xname, &value, &len))
        total += strlen(xname) + 1;
    if (size == 0)
        return (void)fuse_reply_xattr(req, total);
    if (size < total)
        return (void)fuse_reply_err(req, ERANGE);
    CLEANUP_FREE char *buf = malloc(total ? total : 1);
    if (!buf)
        return (void)fuse_reply_err(req, ENOMEM);
    size_t off = 0;
    pos = 0;
    while (node_xattrs_known(n) && vm_xattrs_next(&n->xattrs, &pos, &xname, &value, &len)) {
        memcpy(buf + off, xname, strlen(xname) + 1);
        off += strlen(xname) + 1;
    }
    fuse_reply_buf(req, buf, total);
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
    struct node *n = find_node(ino);
    if (!n)
        return reply_error(req, "access");
    if ((mask & W_OK) && !node_ops_of(n->kind)->mkdir)
        return reply_refused(req, EROFS, "access for writing", n->name);
    fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct statvfs st = {.f_bsize = 4096, .f_frsize = 4096, .f_namemax = 255};
    /* Inside a guest filesystem, df shows that filesystem. */
    struct node *n = find_node(ino);
    if (n && n->kind == NODE_GUEST) {
        struct vm_plug *p = node_plug(n);
        int fs = p ? vm_plug_fs_index(p, n->fsname) : -1;
        if (fs < 0 || vm_guest_statvfs(p, fs, &st) < 0) {
            vm_plug_unref(p);
            return reply_error(req, "statfs");
        }
        vm_plug_unref(p);
    }
    fuse_reply_statfs(req, &st);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    /* Reads of up to 1 MiB per request (libfuse derives max_pages from
     * max_write): fewer round trips to the appliance, whose calls cost
     * ~0.5 ms each however small. */
    conn->max_write = 1024 * 1024;
    conn->max_readahead = 1024 * 1024;
    /* Attributes come with every listing at no extra cost: always readdirplus. */
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
        conn->want |= FUSE_CAP_PARALLEL_DIROPS;
}

const struct fuse_lowlevel_ops fs_ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .open = op_open,
    .read = op_read,
    .release = op_release,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .readlink = op_readlink,
    .releasedir = op_releasedir,
    .statfs = op_statfs,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
    .access = op_access,
    .create = op_create,
};

/* ---- change notices from the hosts ------------------------------------- */

static bool still_there(const struct node *n)
{
    if (n->kind == NODE_HOST)
        return true;
    if (n->kind == NODE_PLUGGED || n->kind == NODE_PLUGGED_FILE || n->kind == NODE_GUEST) {
        struct vm_plug *p = node_plug(n);
        bool there = p && (n->kind != NODE_GUEST || vm_plug_fs_index(p, n->fsname) >= 0);
        vm_plug_unref(p);
        return there;
    }
    struct resolved r;
    if (node_resolve(n, &r) < 0)
        return false;
    /* A renamed domain is the same node under a new name: drop the old entry. */
    bool same = n->kind != NODE_DOMAIN || strcmp(r.domain->name, n->name) == 0;
    resolved_release(&r);
    return same;
}

static pthread_mutex_t up_lock = PTHREAD_MUTEX_INITIALIZER;

/* Log a host going up or down, once per transition. */
static void log_transition(struct vm_host *h)
{
    static struct {
        struct vm_host *h;
        int up; /* -1 unknown */
    } seen[256];
    CLEANUP_FREE char *reason = NULL;
    bool up = vm_host_is_up(h, &reason);
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&up_lock);
    size_t i;
    for (i = 0; i < 256 && seen[i].h && seen[i].h != h; i++)
        ;
    if (i == 256)
        return;
    if (!seen[i].h) {
        seen[i].h = h;
        seen[i].up = -1;
    }
    if (seen[i].up == (int)up)
        return;
    seen[i].up = up;
    if (up)
        fs_log(LOG_NOTICE, "host %s: connected to %s", vm_host_name(h), vm_host_uri(h));
    else
        fs_log(LOG_WARNING, "host %s: down: %s", vm_host_name(h), reason ? reason : "unknown");
}

void fs_store_pages(fuse_ino_t ino, const char *buf, size_t size)
{
    if (!session)
        return;
    struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
    bv.buf[0].mem = (void *)buf;
    /* ENOENT: the kernel has forgotten the file since; nothing lost. */
    if (fuse_lowlevel_notify_store(session, ino, 0, &bv, 0) == 0)
        inode_set_stored(ino);
}

static void invalidate(fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
    if (!session || !ino)
        return;
    if (name)
        fuse_lowlevel_notify_inval_entry(session, parent, name, strlen(name));
    fuse_lowlevel_notify_inval_inode(session, ino, 0, 0);
}

struct forget_share {
    struct invalidation *v;
    size_t n;
};

static void *forget_some(void *arg)
{
    struct forget_share *s = arg;
    for (size_t i = 0; i < s->n; i++) {
        if (session && s->v[i].name)
            fuse_lowlevel_notify_inval_entry(session, s->v[i].parent, s->v[i].name,
                                             strlen(s->v[i].name));
        free(s->v[i].name);
    }
    return NULL;
}

/*
 * Invalidating an entry takes its directory's lock, which the kernel holds
 * (shared) through each LOOKUP in it, and readers keep taking it while one
 * invalidation waits: one thread got ~4 000 through a second while find
 * stat'ed a directory of 100 000 entries at ~25 000 lookups a second, and
 * the nodes piled up (RSS +20 to +34 MB with -o cache_mb=2).  Many
 * invalidations waiting at once take the lock in turn: a large batch is
 * shared among up to FORGET_THREADS threads (measured: 4 threads +13 MB,
 * 16 threads +4 MB, find as fast).
 */
#define FORGET_THREADS 16
#define FORGET_SHARE   64

void fs_forget_entries(struct invalidation *v, size_t n)
{
    struct forget_share share[FORGET_THREADS];
    pthread_t th[FORGET_THREADS];
    size_t nth = n / FORGET_SHARE < FORGET_THREADS ? n / FORGET_SHARE : FORGET_THREADS;
    if (nth < 2) {
        struct forget_share all = {v, n};
        forget_some(&all);
        return;
    }
    size_t started = 0, at = 0;
    for (size_t t = 0; t < nth; t++) {
        share[t] = (struct forget_share){v + at, n / nth + (t < n % nth)};
        at += share[t].n;
    }
    for (size_t t = 1; t < nth; t++)
        if (pthread_create(&th[t], NULL, forget_some, &share[t]) == 0)
            started = t;
        else
            break;
    /* What could not get a thread of its own is done here. */
    for (size_t t = started + 1; t < nth; t++)
        forget_some(&share[t]);
    forget_some(&share[0]);
    for (size_t t = 1; t <= started; t++)
        pthread_join(th[t], NULL);
}

void fs_host_changed(void *opaque, struct vm_host *h, const char *domain_uuid)
{
    if (!domain_uuid)
        log_transition(h);
    struct invalidation *v = NULL;
    size_t n = inode_collect(h, domain_uuid, &v, still_there);
    for (size_t i = 0; i < n; i++) {
        invalidate(v[i].ino, v[i].parent, v[i].name);
        free(v[i].name);
    }
    free(v);
    struct node_id host = {.kind = NODE_HOST, .host = h};
    struct node_id status = {.kind = NODE_STATUS};
    if (domain_uuid)
        invalidate(inode_number(&host), 0, NULL);
    invalidate(inode_number(&status), 0, NULL);
}
