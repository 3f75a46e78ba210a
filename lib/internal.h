/* lib/'s private declarations, in sections named after the .c files.
 * fs/ includes only virtmount.h; unit tests may include this.
 */
#ifndef VIRTMOUNT_INTERNAL_H
#define VIRTMOUNT_INTERNAL_H

#include "virtmount.h"

#include <libvirt/libvirt.h>
#include <guestfs.h>
#include <stdio.h>

/* ---- channel.c ---- */

struct vm_channel;

/**
 * Open the appliance's guestfsd channel NAME (or, when CONSOLE, its console)
 * as a non-blocking stream on the event loop.  ON_CLOSE is called once, on
 * the event loop thread, when the channel ends by itself (not for a console).
 */
struct vm_channel *vm_channel_open(virConnectPtr conn, virDomainPtr dom, const char *name,
                                   bool console, void (*on_close)(void *opaque, const char *reason),
                                   void *opaque);
/** Wait for guestfsd's launch flag: ETIMEDOUT after TIMEOUT_MS, EIO if the channel ends. */
int vm_channel_wait_flag(struct vm_channel *c, int timeout_ms);
/** Join the guestfs handle's socket FD (taken) to the channel, replaying the flag. */
int vm_channel_attach(struct vm_channel *c, int fd);
/** The last MAX bytes a console printed (malloc'd). */
char *vm_channel_console_tail(struct vm_channel *c, size_t max);
/** Close and release; accepts NULL. ON_CLOSE is not called. */
void vm_channel_close(struct vm_channel *c);

/* ---- domxml.c ---- */

/** Give each of N disks its name: serial when legal and unique, else target. */
void vm_disks_assign_names(struct vm_disk *disks, size_t n);

/** What the appliance domain is made of (see vm_xml_appliance). */
struct vm_appliance_spec {
    const char *name;
    bool kvm;
    unsigned memory_mib;
    unsigned vcpus;
    const char *kernel, *initrd, *root, *root_uuid;
    const char *channel_path; /* NULL: libvirt chooses */
    /* Reader channels (org.virtmount.reader.N, 1-based), each served by a
     * guestfsd of its own (see virtmount-build-appliance); path as above. */
    unsigned readers;
    const char *reader_paths[VM_APPLIANCE_READERS];
};

/** The transient domain XML of an appliance. Returns a new string. */
char *vm_xml_appliance(const struct vm_appliance_spec *spec);
/**
 * The XML that attaches a guest's disk (its <disk> element as the guest has
 * it) to an appliance: device='disk', our target, SCSI unit UNIT, SERIAL,
 * <readonly/> when READONLY; alias, boot order, iotune and the like dropped.
 */
char *vm_xml_attach_disk(const char *guest_disk_xml, const char *serial, unsigned unit,
                         bool readonly);

/**
 * A pull-mode backup job over every writable disk of running domain D, its
 * NBD export on unix socket SOCKET; each disk's scratch file is
 * SCRATCH_DIR/SCRATCH_PREFIX<target>.qcow2.
 */
char *vm_xml_backup(const struct vm_domain *d, const char *socket, const char *scratch_dir,
                    const char *scratch_prefix);
/** Attach the NBD export EXPORT_NAME on SOCKET read-only as SCSI UNIT with SERIAL. */
char *vm_xml_attach_nbd(const char *socket, const char *export_name, const char *serial,
                        unsigned unit);

/* ---- appliance.c ---- */

#define VM_MAX_UNITS 255

enum { VM_NOTICE_INFO, VM_NOTICE_WARNING };
/** Tell the application something worth logging (through vm_settings.notice). */
void vm_notice(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Run FN(ARG) on a detached thread of its own (for work an event callback must not do). */
int vm_spawn_detached(void *(*fn)(void *), void *arg);
/** The id naming this instance's appliances (host name and state dir). */
const char *vm_instance_id(void);

struct vm_appliance;
/** Called on a thread of its own when boot GENERATION of an appliance died by itself. */
typedef void (*vm_appliance_dead_fn)(struct vm_appliance *a, unsigned generation, const char *why);

struct vm_appliance *vm_appliance_new(struct vm_host *h, unsigned index,
                                      vm_appliance_dead_fn on_dead, void *opaque);
/** Boot it unless it runs; join a boot in flight.  Bounded. */
int vm_appliance_start(struct vm_appliance *a);
/** Stop boot GENERATION (0: whatever runs): handle, channel, domain. */
void vm_appliance_stop(struct vm_appliance *a, unsigned generation);
void vm_appliance_free(struct vm_appliance *a);
/** A free SCSI unit (ENOSPC past max_drives) and the boot it belongs to. */
int vm_appliance_reserve_unit(struct vm_appliance *a, unsigned *unit, unsigned *generation);
void vm_appliance_release_unit(struct vm_appliance *a, unsigned unit, unsigned generation);
unsigned vm_appliance_drive_count(struct vm_appliance *a);
int vm_appliance_attach(struct vm_appliance *a, const char *xml);
int vm_appliance_detach(struct vm_appliance *a, const char *xml);
/** The guestfs handle, locked for this thread until vm_appliance_handle_release. */
guestfs_h *vm_appliance_handle(struct vm_appliance *a);
void vm_appliance_handle_release(struct vm_appliance *a);
/**
 * A handle for a read of a file or an image: a free reader's, else the main
 * one if free, else the first reader's once free; SLOT says which, for
 * vm_appliance_reader_release.
 */
guestfs_h *vm_appliance_reader(struct vm_appliance *a, int *slot);
void vm_appliance_reader_release(struct vm_appliance *a, int slot);
int vm_appliance_status(struct vm_appliance *a, FILE *out);
/** Where devtmpfs is mounted in the appliance's sysroot (see vm_appliance_mount_dev). */
#define VM_APPLIANCE_DEVDIR "/.virtmount-dev"
/** Mount devtmpfs at VM_APPLIANCE_DEVDIR once per boot (handle G held); DEVICE: any drive. */
int vm_appliance_mount_dev(struct vm_appliance *a, guestfs_h *g, const char *device);
/** The running boot's generation, 0 when not running. */
unsigned vm_appliance_generation(struct vm_appliance *a);
/** Whether devtmpfs is mounted in this boot's sysroot. */
bool vm_appliance_dev_mounted(struct vm_appliance *a);
/** Destroy the appliances a previous run of this instance left on CONN. */
int vm_appliances_cleanup(virConnectPtr conn);

/* ---- applfiles.c ---- */

/** The files an appliance boots from; all strings owned. */
struct vm_appliance_files {
    char *dir; /* the fixed appliance (set_path for the guestfs handle) */
    char *kernel;
    char *initrd;
    char *root; /* raw ext2, used read-only through a transient overlay */
    char *root_uuid;
};

/** The current generation of the fixed appliance, built first if need be (seconds). */
int vm_appliance_files_get(struct vm_appliance_files *out);
void vm_appliance_files_clear(struct vm_appliance_files *f);
/** Remove the overlay a killed run's appliance NAME may have left beside the root. */
void vm_appliance_files_forget_overlay(const struct vm_appliance_files *f, const char *name);
/**
 * The appliance's files on a remote host: uploaded through libvirt into a
 * storage pool of ours (once per generation), with the paths the remote host
 * knows them by.  Removes a transient overlay DOMAIN_NAME left there.
 */
int vm_appliance_files_ship(virConnectPtr conn, const struct vm_appliance_files *local,
                            const char *domain_name, struct vm_appliance_files *remote);
/** The path of helper program NAME: beside the binary in a build tree, else libexecdir. */
char *vm_helper_path(const char *name);

/* ---- plug.c ---- */

/** H's connection closed: its appliances went with it; drop their plugs (does not block). */
void vm_plug_host_down(struct vm_host *h);
/** End the backup jobs a killed run of this instance left on CONN; how many. */
int vm_backup_jobs_cleanup(virConnectPtr conn);
/** A domain of H started or stopped (event loop thread; does not block). */
void vm_plug_domain_event(struct vm_host *h, const char *uuid, bool started, bool stopped);

/* ---- host.c ---- */

/** The host's current connection, referenced (virConnectClose it), or NULL (EHOSTUNREACH). */
virConnectPtr vm_host_connection(struct vm_host *h);
/** True when H's URI names no server: it is this machine. */
bool vm_host_is_local(struct vm_host *h);
/** Have the host thread re-read domain UUID and tell the listener (asynchronously). */
void vm_host_refresh_later(struct vm_host *h, const char *uuid);

/** The qemu.conf virtmount writes for its embedded driver when none exists. */
extern const char vm_embed_qemu_conf[];

#endif
