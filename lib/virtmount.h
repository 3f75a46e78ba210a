/* virtmount core library: what fs/ may use.
 *
 * Nothing here knows about FUSE.  Every function that can fail returns -1 or
 * NULL and records an errno and a message with vm_error_*; the caller decides
 * whether and how to log it.  Functions never print.
 */
#ifndef VIRTMOUNT_H
#define VIRTMOUNT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>

/* ---- error.c ------------------------------------------------------------ */

/** Record errno ERRNUM and a printf-style message for this thread; returns -1. */
int vm_error(int errnum, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Like vm_error, appending ": " and libvirt's last error message of this thread. */
int vm_error_libvirt(int errnum, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** The errno of this thread's last recorded error (EIO if none was recorded). */
int vm_error_errno(void);
/** The message of this thread's last recorded error ("" if none). Valid until the next error. */
const char *vm_error_message(void);
void vm_error_clear(void);

/* ---- domxml.c ----------------------------------------------------------- */

/** One disk of a domain, as read from its XML. All strings owned by the struct. */
struct vm_disk {
    char *name;   /* its name under devices/: serial or target, unique in the domain */
    char *target; /* target dev: vda, sdb, hdc */
    char *bus;    /* virtio, scsi, sata, ide, fdc, usb, ... ("" if unknown) */
    char *device; /* disk, cdrom, floppy, lun */
    char *type;   /* source type: file, block, volume, network, dir, nvme, vhostuser */
    char *source; /* a path, pool/volume, or protocol://host:port/name ("" if none) */
    char *format; /* driver type: qcow2, raw, ... ("" if unknown) */
    char *serial; /* NULL when the disk has none */
    bool readonly;
    bool shareable;
    char *xml; /* the <disk> element, serialized */
};

/** What virtmount knows of one domain. Immutable once published; refcounted. */
struct vm_domain {
    int refcount;
    char *name;
    char uuid[37]; /* canonical string form */
    int state;     /* virDomainState */
    char *xml;     /* as virDomainGetXMLDesc(flags 0) gives it */
    size_t ndisks;
    struct vm_disk *disks;
    /* Filled by host.c, not by the parser: capacity in bytes per disk, or -1 with a reason. */
    int64_t *sizes;
    char **size_errors;
    time_t read_at; /* when host.c read it: the mtime of its files */
};

/**
 * Parse a domain's XML: name, UUID and disks, named as DESIGN.md says (serial
 * when legal and unique, else target; CD-ROMs and floppies without media left
 * out).  Returns a new domain with refcount 1, state 0 and no sizes; NULL
 * with EINVAL when the XML is not a domain.
 */
struct vm_domain *vm_domxml_parse(const char *xml);

/** True when S may be used as a file name in the tree. */
bool vm_name_is_legal(const char *s);

/** Take a reference. */
struct vm_domain *vm_domain_ref(struct vm_domain *d);
/** Drop a reference; frees at zero. Accepts NULL. */
void vm_domain_unref(struct vm_domain *d);
/** The disk named NAME, or NULL. */
const struct vm_disk *vm_domain_find_disk(const struct vm_domain *d, const char *name,
                                          size_t *index);
/** "running", "shut off", ... as virsh prints a virDomainState. */
const char *vm_domain_state_name(int state);

/* ---- config.c ----------------------------------------------------------- */

struct vm_host_config {
    char *name;
    char *uri;
};

struct vm_config {
    size_t nhosts;
    struct vm_host_config *hosts;
};

/**
 * Add host NAME=URI (the text of -o host=).  EINVAL for a malformed spec or an
 * illegal name, EEXIST for a name already configured.
 */
int vm_config_add_host_spec(struct vm_config *c, const char *spec);
/** Add host NAME with URI. Errors as vm_config_add_host_spec. */
int vm_config_add_host(struct vm_config *c, const char *name, const char *uri);
/**
 * Read a config file (format: virtmount(1), FILES).  A missing file is an
 * error (ENOENT) only when MUST_EXIST; syntax errors are EINVAL naming the
 * line.
 */
int vm_config_read_file(struct vm_config *c, const char *path, bool must_exist);
/** Parse the text of a config file; SOURCE names it in messages. */
int vm_config_parse(struct vm_config *c, const char *text, const char *source);
void vm_config_clear(struct vm_config *c);

/* ---- ino.c -------------------------------------------------------------- */

/** Inode numbers stable across mounts, from a registry file in the state dir. */
struct vm_ino_registry;

/**
 * Open (creating) the registry in directory DIR; NULL DIR gives a registry kept
 * in memory only.  The file is locked: EBUSY if another virtmount holds it.
 */
struct vm_ino_registry *vm_ino_open(const char *dir);
/** Close; accepts NULL. */
void vm_ino_close(struct vm_ino_registry *r);
/**
 * The inode number of the object named by KEY (KEYLEN bytes, any bytes),
 * allocating and recording a new one the first time.  Never returns 0 or 1
 * (1 is the root's).  Returns 0 with an error recorded when the registry
 * cannot be written.
 */
uint64_t vm_ino_get(struct vm_ino_registry *r, const void *key, size_t keylen);

/* ---- settings.c ---------------------------------------------------------- */

enum vm_accel { VM_ACCEL_AUTO, VM_ACCEL_KVM, VM_ACCEL_TCG };

/** What the mount options say about appliances; set once, before any host starts. */
struct vm_settings {
    const char *statedir; /* absolute */
    enum vm_accel accel;
    unsigned max_drives;       /* per appliance, 1..254 */
    unsigned appliance_idle;   /* seconds an empty appliance lives; 0: until unmount */
    bool appliance_eager;      /* boot each host's appliance at mount */
    unsigned appliance_memory; /* MiB */
    unsigned appliances;       /* per host, sharing the drives (least loaded first) */
    bool isolate_domain;       /* each domain its own appliance */
    /* Where lib/ reports what is worth logging (level: 0 info, 1 warning); may be NULL. */
    void (*notice)(int level, const char *message);
};
extern struct vm_settings vm_settings;

/* ---- host.c ------------------------------------------------------------- */

struct vm_host;

enum vm_host_kind { VM_HOST_CONFIGURED, VM_HOST_SYSTEM, VM_HOST_EMBEDDED };

/** Called (from a host's own thread, with no lock held) when something changed. */
struct vm_host_listener {
    /* DOMAIN_UUID NULL: the host itself changed (up/down, domain list). */
    void (*changed)(void *opaque, struct vm_host *h, const char *domain_uuid);
    void *opaque;
};

/** Start libvirt's event loop thread. Call once, before any vm_host_new. */
int vm_event_loop_start(void);
/** Stop it (after every host is freed). */
void vm_event_loop_stop(void);

/**
 * Choose localhost's URI: qemu:///system when a daemon answers there, else
 * the embedded driver rooted at STATEDIR/embed (with a qemu.conf that works
 * as root).  Returns a new string; *KIND says which.
 */
char *vm_host_choose_local_uri(const char *statedir, enum vm_host_kind *kind);

/** A host named NAME reached at URI; its thread connects, reconnects and follows events. */
struct vm_host *vm_host_new(const char *name, const char *uri, enum vm_host_kind kind,
                            const struct vm_host_listener *listener);
/** Wait up to TIMEOUT_MS for the first connection attempt to finish. */
void vm_host_wait_ready(struct vm_host *h, int timeout_ms);
/** Stop its thread, close its connection; accepts NULL. */
void vm_host_free(struct vm_host *h);

const char *vm_host_name(const struct vm_host *h);
const char *vm_host_uri(const struct vm_host *h);
enum vm_host_kind vm_host_kind(const struct vm_host *h);

/** A snapshot of a host's domains, sorted by name. Immutable; release with vm_domlist_unref. */
struct vm_domlist {
    int refcount;
    time_t read_at;
    size_t n;
    struct vm_domain **v;
};

/**
 * The host's current domains.  When the host is down: NULL with EHOSTUNREACH
 * and the reason (the libvirt message) recorded.
 */
struct vm_domlist *vm_host_domains(struct vm_host *h);
void vm_domlist_unref(struct vm_domlist *l);
/** The domain named NAME in L, or NULL. */
struct vm_domain *vm_domlist_find(const struct vm_domlist *l, const char *name);
/** The domain with UUID in L, or NULL. */
struct vm_domain *vm_domlist_find_uuid(const struct vm_domlist *l, const char *uuid);

/** True when the host is connected; else *REASON (if not NULL) gets a copy of why not. */
bool vm_host_is_up(struct vm_host *h, char **reason);

/** Write the host's part of /.status to OUT. */
void vm_host_status(struct vm_host *h, FILE *out);

/* ---- plug.c ------------------------------------------------------------- */

/** A disk plugged into its host's appliance.  Refcounted; release with vm_plug_unref. */
struct vm_plug;

/**
 * Plug disk DISK of domain UUID on host H: boot (or join the boot of) the
 * host's appliance, attach the disk read-only, wait for its serial's link,
 * find and mount its filesystems.  Returns when they can be listed.
 * ENOENT no such disk, EEXIST already plugged, EBUSY the domain runs,
 * ENOSPC no free slot, EIO (message from libvirt or libguestfs) otherwise.
 * Nothing is left behind on failure.
 */
int vm_plug_disk(struct vm_host *h, const char *uuid, const char *disk);
/** Unmount and detach; EBUSY while something under it is open, ENOENT if not plugged. */
int vm_unplug_disk(struct vm_host *h, const char *uuid, const char *disk);
/** Boot H's appliance now, in the background (-o appliance=eager). */
void vm_plug_start_eager(struct vm_host *h);
/** At unmount: drop every plug and stop every appliance. */
void vm_plugs_shutdown(void);
/** Write the host's plugs and appliances, for /.status, to OUT. */
void vm_plug_status(struct vm_host *h, FILE *out);

/** The plug of DISK, referenced, or NULL (ENOENT). */
struct vm_plug *vm_plug_find(struct vm_host *h, const char *uuid, const char *disk);
void vm_plug_unref(struct vm_plug *p);
bool vm_plug_is_plugged(struct vm_host *h, const char *uuid, const char *disk);
/** Names of the plugged disks of domain UUID (NULL-terminated, all malloc'd). */
char **vm_plug_names(struct vm_host *h, const char *uuid, size_t *n);

const char *vm_plug_info(const struct vm_plug *p);
int64_t vm_plug_size(const struct vm_plug *p);
size_t vm_plug_fs_count(const struct vm_plug *p);
const char *vm_plug_fs_name(const struct vm_plug *p, size_t i);
/** Index of the filesystem directory NAME, or -1 (ENOENT). */
int vm_plug_fs_index(const struct vm_plug *p, const char *name);
/** Count a file or directory open under P (unplug waits for none). */
void vm_plug_open(struct vm_plug *p);
/** Whether P is still plugged (not unplugged, nor replugged since). */
bool vm_plug_current(struct vm_plug *p);
/** vm_plug_open, if vm_plug_current. */
bool vm_plug_open_current(struct vm_plug *p);
void vm_plug_close(struct vm_plug *p);

/** Largest read sent to the appliance in one call (NOTES.md: 2 MiB is fastest). */
#define VM_MAX_PREAD (2 * 1024 * 1024)
/** Reader channels per appliance: reads of files and images run there, each
 * on a guestfsd and a vCPU of its own, beside the main channel's calls. */
#define VM_APPLIANCE_READERS 1

/** Read the whole disk at block level. Returns bytes read, or -1. */
ssize_t vm_plug_image_pread(struct vm_plug *p, char *buf, size_t size, int64_t offset);

/**
 * A file's extended attributes, packed: for each, its name, a NUL, a
 * little-endian u32 length and the value.  Walk with vm_xattrs_next.
 */
struct vm_xattrs {
    size_t len;
    char *data; /* NULL when none */
};
/** The attribute after position *POS (start at 0); false at the end. */
bool vm_xattrs_next(const struct vm_xattrs *x, size_t *pos, const char **name, const char **value,
                    uint32_t *value_len);

/** The names in a guest directory, "." and ".." left out. */
struct vm_names {
    size_t n;
    char **v;   /* into blob */
    char *blob; /* the names, NUL-terminated, one after the other */
    int refs;   /* see vm_names_hold */
};
int vm_guest_lstat(struct vm_plug *p, int fs, const char *path, struct stat *st);
/** PATH's extended attributes (none is not an error). */
int vm_guest_xattrs(struct vm_plug *p, int fs, const char *path, struct vm_xattrs *out);
/**
 * The extended attributes of N entries NAMES of directory DIR, into OUT[N]
 * (zeroed first), in as few round trips as the appliance allows; OK[i]
 * false: entry i's could not be read.
 */
int vm_guest_xattrs_list(struct vm_plug *p, int fs, const char *dir, char *const *names, size_t n,
                         struct vm_xattrs *out, bool *ok);
/** statvfs of the guest filesystem FS. */
int vm_guest_statvfs(struct vm_plug *p, int fs, struct statvfs *out);
/** The names in directory PATH, however many; SIZE: its st_size (how to ask). */
struct vm_names *vm_guest_names(struct vm_plug *p, int fs, const char *path, int64_t size);
/** One more holder of NAMES (returned), each of which calls vm_names_free. */
struct vm_names *vm_names_hold(struct vm_names *names);
void vm_names_free(struct vm_names *names);
/**
 * The attributes of N entries NAMES of directory DIR into OUT[N], in as few
 * round trips as the appliance allows; one that is gone gets st_mode 0.
 */
int vm_guest_lstat_list(struct vm_plug *p, int fs, const char *dir, char *const *names, size_t n,
                        struct stat *out);
ssize_t vm_guest_pread(struct vm_plug *p, int fs, const char *path, char *buf, size_t size,
                       int64_t offset);
char *vm_guest_readlink(struct vm_plug *p, int fs, const char *path);

/** Name prefix of virtmount's own appliance domains; never listed. */
#define VM_APPLIANCE_PREFIX "virtmount-appliance-"

#endif
