/* fs/'s private header: the only way fs/ reaches <fuse_lowlevel.h>.
 *
 * A node is one object of the tree that the kernel knows by inode number.
 * Its identity (kind, host, domain UUID, disk, file) is fixed at lookup; what
 * it shows is read from the host's current snapshot every time, so a node
 * never holds stale data, only a name.
 */
#ifndef VIRTMOUNT_FS_H
#define VIRTMOUNT_FS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "virtmount.h"

/* ---- options.c ---- */

struct options {
    char *mountpoint;
    char *config; /* NULL: the default file, optional */
    char *statedir;
    struct vm_config hosts;
    bool foreground;
    bool debug;
    bool allow_other;
    bool show_help;
    bool show_version;
    enum vm_accel accel;
    unsigned max_drives;
    unsigned appliance_idle;
    bool appliance_eager;
    unsigned appliances;
    bool isolate_domain;
    unsigned cache_mb;
    bool parse_failed; /* fuse_opt_parse's callback cannot return why: vm_error has it */
};

/**
 * Parse the command line.  Options for libfuse itself are left in *FUSE_ARGS
 * (with subtype and, for allow_other, default_permissions added).  Returns 0,
 * or -1 with a message recorded (vm_error) for bad input.
 */
int options_parse(int argc, char **argv, struct options *o, struct fuse_args *fuse_args);
void options_free(struct options *o);
void options_usage(const char *progname);

/* ---- main.c ---- */

/** Log one line: to stderr in the foreground, else to syslog. */
void fs_log(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- inode.c ---- */

enum node_kind {
    NODE_ROOT,
    NODE_STATUS,
    NODE_HOST,
    NODE_DOMAIN,
    NODE_DOMAIN_FILE,
    NODE_DEVICES,
    NODE_DEVICE,
    NODE_DEVICE_FILE,
    NODE_DISKS,
    NODE_PLUGGED,      /* disks/<name>/: a plugged disk */
    NODE_PLUGGED_FILE, /* its image and info */
    NODE_GUEST,        /* anything inside one of its filesystems */
    NODE_KIND_COUNT
};

/** Who a node is.  Strings point into the node, or into the caller's buffers during a call. */
struct node_id {
    enum node_kind kind;
    struct vm_host *host; /* NULL above hosts */
    char uuid[37];        /* domain UUID from NODE_DOMAIN down, else "" */
    const char *disk;     /* device name, for NODE_DEVICE, NODE_PLUGGED and below */
    int file;             /* index of a file in its directory's table */
    const char *fsname;   /* NODE_GUEST: the filesystem's directory (part1, whole, ...) */
    const char *path;     /* NODE_GUEST: the path inside it, "/" for its top */
    /* NODE_GUEST: the path of the volume it is in when that is not the
     * filesystem's own top (a btrfs subvolume or snapshot: each numbers
     * its inodes afresh), else NULL */
    const char *volume;
    const struct stat *st; /* NODE_GUEST: the guest's attributes (st_ino: the guest's own) */
    const struct vm_xattrs *xattrs; /* NODE_GUEST: its extended attributes; NULL: not known yet */
};

struct node {
    fuse_ino_t ino;
    fuse_ino_t parent;
    char *name;
    uint64_t nlookup;
    enum node_kind kind;
    struct vm_host *host;
    char uuid[37];
    char *disk;
    int file;
    char *fsname;
    char *path;
    char *volume;
    struct stat st; /* NODE_GUEST: the guest's attributes; they cannot change while plugged */
    /* NODE_GUEST: likewise its extended attributes, once xattrs_known (set
     * once, atomically, by inode_set_xattrs: readers need no lock). */
    struct vm_xattrs xattrs;
    bool xattrs_known;
    /* NODE_GUEST: its whole content went to the kernel's page cache (read
     * ahead, or read whole); under the table's lock. */
    bool stored;
    struct node *hash_next;
    struct node *up, *kids, *kid_prev, *kid_next; /* the parent's node and its children */
    struct node *kids_last;                       /* the last of kids */
    struct node *lru_prev, *lru_next;             /* NODE_GUEST: in the table's LRU list */
    size_t trimming; /* the bytes it holds, while the kernel is being asked to forget it */
};

/** True for directories (a guest node is one when the guest says so). */
bool node_is_dir(const struct node *n);

/** A node's identity as a node_id. */
struct node_id node_identity(const struct node *n);

int inode_table_init(struct vm_ino_registry *registry, struct vm_host **hosts, size_t nhosts);
void inode_table_free(void);
/**
 * The node for ID, named NAME under PARENT, created if new; its lookup count
 * goes up by one when COUNT_LOOKUP.  Returns NULL with an error recorded.
 */
struct node *inode_get(const struct node_id *id, fuse_ino_t parent, const char *name,
                       bool count_lookup);
/** The node numbered INO, or NULL.  Nodes live until forgotten: no reference is taken. */
struct node *inode_find(fuse_ino_t ino);
/** The inode number ID has (or would have). 0 with an error recorded on failure. */
fuse_ino_t inode_number(const struct node_id *id);
void inode_forget(fuse_ino_t ino, uint64_t nlookup);
/** Past BYTES of guest nodes, the coldest are invalidated for the kernel to forget. */
void inode_set_cache_limit(size_t bytes);
size_t inode_cache_limit(void);
/** Whether guest nodes take the whole limit (new ones would only be trimmed again). */
bool inode_cache_full(void);
/**
 * Up to MAX guest nodes whose extended attributes are not known: N, then
 * the other children of N's parent.  Their numbers into INOS, their names
 * (malloc'd) into NAMES; returns how many.
 */
size_t inode_xattrs_wanted(const struct node *n, fuse_ino_t *inos, char **names, size_t max);
/** Node INO's extended attributes are X (taken over), unless already known. */
void inode_set_xattrs(fuse_ino_t ino, struct vm_xattrs *x);
/** A file prefetch.c may read ahead: its inode, size and name in its directory. */
struct prefetch_entry {
    fuse_ino_t ino;
    off_t size;
    char *name;
    int state; /* prefetch.c's */
};
/**
 * The regular files of 1 to MAX_SIZE bytes in N's directory that the
 * table knows (N among them) and has not stored, unordered, in *OUT
 * (malloc'd, names too).
 */
size_t inode_small_siblings(const struct node *n, off_t max_size, struct prefetch_entry **out);
/** File INO's whole content is in the kernel's page cache: not to be read ahead. */
void inode_set_stored(fuse_ino_t ino);
/**
 * The kernel asked for N's content although it had it: its page cache was
 * reclaimed, the rest of the directory's likely too.  Returns whether N was
 * stored.
 */
bool inode_unstore_siblings(const struct node *n);
/** Whether N's extended attributes are known. */
bool node_xattrs_known(const struct node *n);
/** The hosts of the mount. */
struct vm_host **inode_hosts(size_t *n);

/** One entry of a change: the kernel must forget what it cached. */
struct invalidation {
    fuse_ino_t ino;
    fuse_ino_t parent; /* with NAME: drop that entry too */
    char *name;
};

/**
 * Collect, for every known node of host H (of domain UUID only, when not
 * NULL), an invalidation; STILL_THERE decides whether the entry survives.
 */
size_t inode_collect(struct vm_host *h, const char *uuid, struct invalidation **out,
                     bool (*still_there)(const struct node *n));

/* ---- nodes: one file per kind, one table ---- */

/** A directory listing being built: each entry with who it is, for readdirplus. */
struct dir_list {
    size_t n, cap;
    struct dir_entry {
        char *name;
        fuse_ino_t ino;
        mode_t type;       /* S_IFMT bits */
        struct node_id id; /* its strings point into the owned copies below */
        char *disk, *fsname, *path, *volume;
        bool has_st, has_xattrs;
        bool gone; /* listed, but gone when its attributes were asked for */
        struct stat st;
        struct vm_xattrs xattrs;
    } * v;
};
int dir_list_add(struct dir_list *l, const struct node_id *id, const char *name);
/** An entry that keeps its place (offsets) but is never shown. */
int dir_list_add_gone(struct dir_list *l, const char *name);
/** The identity of entry E (valid while the list is). */
struct node_id dir_list_entry_id(struct dir_entry *e);
void dir_list_free(struct dir_list *l);

/** A domain snapshot a node was resolved against; release with resolved_release. */
struct resolved {
    struct vm_domlist *list;
    struct vm_domain *domain;
    const struct vm_disk *disk;
    size_t disk_index;
};
/** Resolve N against its host's snapshot: -1 with ENOENT / EHOSTUNREACH recorded. */
int node_resolve(const struct node *n, struct resolved *r);
void resolved_release(struct resolved *r);

struct node_ops {
    bool is_dir;
    /** Fill mode, nlink and times; size is filled by the caller for files. */
    int (*getattr)(const struct node *n, struct stat *st);
    int (*lookup)(const struct node *dir, const char *name, struct node_id *child);
    int (*readdir)(const struct node *dir, struct dir_list *list);
    /**
     * Or, for directories too big to hold listed whole (a guest's): the
     * names first, then COUNT of them at a time with their attributes.
     */
    int (*names)(const struct node *dir, struct vm_names **out);
    int (*list_range)(const struct node *dir, char *const *names, size_t count,
                      struct dir_list *list);
    /** The content of a small generated file, malloc'd (its size is its length). */
    int (*content)(const struct node *file, char **buf, size_t *len);
    /** Files with real data instead: open, read (a full buffer unless at the end), release. */
    int (*open)(const struct node *file, void **handle);
    ssize_t (*read)(const struct node *file, void *handle, char *buf, size_t size, off_t off);
    void (*release)(const struct node *file, void *handle);
    /** The target of a symbolic link, malloc'd. */
    char *(*readlink)(const struct node *link);
    /** Make N's extended attributes known (node_xattrs_known); NULL: it has none. */
    int (*load_xattrs)(const struct node *n);
    /** mkdir/rmdir under this directory; NULL: EPERM. */
    int (*mkdir)(const struct node *dir, const char *name);
    int (*rmdir)(const struct node *dir, const char *name);
};

/* ---- lookahead.c: lookups in a guest directory answered from its listing ---- */

/** Keep NAMES, the listing of guest directory DIR under plug P (a hold of
 * its own on NAMES; P's reference is taken). */
void lookahead_keep(const struct node *dir, struct vm_plug *p, struct vm_names *names);
/** READDIR took the attributes ST of COUNT entries NAMES (within a kept
 * listing) of DIR, plugged as P. */
void lookahead_note(const struct node *dir, const struct vm_plug *p, char *const *names,
                    size_t count, const struct stat *st);
/**
 * Stat NAME in DIR (plug P, its filesystem FS) from a kept listing: 1 with
 * *ST filled (with the entries after it, in one round trip); 0 when no kept
 * listing answers (ask the appliance); -1 with ENOENT recorded when the
 * listing has no such name.
 */
int lookahead_stat(const struct node *dir, struct vm_plug *p, int fs, const char *name,
                   struct stat *st);
/** What the kept listings hold, counted in cache_mb with the nodes. */
size_t lookahead_memory(void);
void lookahead_clear(void);

/* ---- prefetch.c: a directory's small files read ahead of their opens ---- */

/** What prefetch.c reads with (node-guest.c's; a unit test's stand-in). */
struct prefetch_io {
    /** inode_small_siblings, or a stand-in. */
    size_t (*siblings)(const struct node *n, off_t max_size, struct prefetch_entry **out);
    /** What fetch needs to read in N's directory (a plug reference...); NULL: cannot. */
    void *(*dir_open)(const struct node *n);
    /** Read SIZE bytes, the whole of file NAME of that directory. */
    ssize_t (*fetch)(void *dir, const char *name, char *buf, size_t size);
    /** Whether what fetch reads is still what the tree shows (not unplugged). */
    bool (*current)(void *dir);
    /** Keep it so from a fetch to its store (false: it is not any more). */
    bool (*hold)(void *dir);
    void (*release)(void *dir);
    void (*dir_close)(void *dir);
};
/** Where a file read ahead goes: the kernel's page cache (ops.c). */
typedef void (*prefetch_store_fn)(fuse_ino_t ino, const char *buf, size_t size);
/** Start the threads that read ahead. */
void prefetch_init(prefetch_store_fn store);
/** Guest file N is being opened (it may wait for its fetch in flight). */
void prefetch_open(const struct node *n, const struct prefetch_io *io);
/** Stop the threads; forget every scan. */
void prefetch_stop(void);
/** What was read ahead since the mount, and how much of it was opened then. */
struct prefetch_stats {
    uint64_t files, bytes, opened;
};
void prefetch_get_stats(struct prefetch_stats *out);

extern const struct node_ops node_root_ops, node_status_ops, node_host_ops, node_domain_ops,
    node_domain_file_ops, node_devices_ops, node_device_ops, node_device_file_ops, node_disks_ops,
    node_plugged_ops, node_plugged_file_ops, node_guest_ops;

/**
 * Read-ahead for one open file: sequential readers get VM_MAX_PREAD per
 * round trip to the appliance, whatever size the kernel asks for.
 */
struct readahead {
    pthread_mutex_t lock;
    char *buf;
    off_t off; /* what buf holds: [off, off + len) */
    size_t len;
    off_t next; /* where a sequential reader reads next */
};
void readahead_init(struct readahead *ra);
void readahead_free(struct readahead *ra);
/** Read SIZE at OFF of a file of FILE_SIZE bytes, through FETCH for what is not at hand. */
ssize_t readahead_read(struct readahead *ra, char *out, size_t size, off_t off, off_t file_size,
                       ssize_t (*fetch)(void *ctx, char *buf, size_t size, off_t off), void *ctx);

/** The plug a node under disks/<name>/ belongs to, referenced; NULL (ENOENT) if unplugged. */
struct vm_plug *node_plug(const struct node *n);
const struct node_ops *node_ops_of(enum node_kind kind);

/** The identity of a child of PARENT: same host, domain and disk unless given. */
struct node_id node_child(const struct node *parent, enum node_kind kind, const char *disk,
                          int file);

/** Shared attributes: owner, times, nlink for a directory with NSUBDIRS subdirectories. */
void node_fill_dir(struct stat *st, mode_t perm, size_t nsubdirs, time_t mtime);
void node_fill_file(struct stat *st, time_t mtime);
/** When the mount started (the times of the static parts of the tree). */
time_t fs_mount_time(void);

/* ---- ops.c ---- */

extern const struct fuse_lowlevel_ops fs_ops;
/** The host listener: invalidates the kernel's caches after a change. */
void fs_host_changed(void *opaque, struct vm_host *h, const char *domain_uuid);
void fs_set_session(struct fuse_session *se);
/** Put SIZE bytes of file INO, from its start, in the kernel's page cache. */
void fs_store_pages(fuse_ino_t ino, const char *buf, size_t size);

/** Ask the kernel to forget the entries of V (names freed here). */
void fs_forget_entries(struct invalidation *v, size_t n);

#endif
