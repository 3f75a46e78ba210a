/* Plugging: a domain's disk attached to its host's appliance, found by
 * serial, probed and mounted; unplugging undoes it in reverse.
 *
 * A plug is only ever addressed inside the appliance as
 * /dev/disk/guestfs/SERIAL (and SERIALn for partition n), the udev link that
 * libguestfs's appliance makes: hotplug reorders /dev/sdX names, so no code
 * here knows them.  The serial is derived from the disk (host, domain UUID,
 * name), so the same disk gets the same serial every time.
 *
 * Plugs live in one table guarded by one lock; the slow work (boot, attach,
 * probe, mount) runs without it, so listing disks/ or another host never
 * waits on an appliance.  A plug being set up is not in the table until it
 * is ready; a failed plug leaves nothing behind.
 */
#include "internal.h"

#include <errno.h>
#include <endian.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

#include <libvirt/virterror.h>

#include "cleanup.h"

#define UDEV_WAIT_MS    60000
#define UDEV_POLL_MS    20
#define RELEASE_WAIT_MS 2000 /* the kernel's RELEASE may follow close() a little later */

struct vm_fs {
    char *type;       /* ext4, xfs, vfat, ... as blkid says */
    char *name;       /* part1, whole, lv-vg-root */
    char *device;     /* /dev/disk/guestfs/SERIAL1, /dev/VG/LV */
    char *mountpoint; /* inside the appliance */
    bool mounted;
};

/* A pull-mode backup job on a running domain: one point in time shared by
 * all of the domain's plugged disks, from the first plug to the last unplug. */
struct backup_job {
    struct vm_host *host;
    char uuid[37];
    char *socket;   /* the NBD export, on the guest's host */
    char **scratch; /* the scratch files we named */
    size_t nscratch;
    int plugs; /* under table_lock */
};

struct vm_plug {
    int refs;               /* under table_lock */
    struct backup_job *job; /* NULL: the disk itself is attached */
    bool network;           /* a network disk: not locked, so dropped when its domain starts */
    struct vm_host *host;
    char uuid[37];
    char *disk;
    char *serial;
    char *device;     /* /dev/disk/guestfs/SERIAL */
    char *image_path; /* the same link as a sysroot path, for fast preads; NULL: use device */
    char *attach_xml;
    struct vm_appliance *appliance;
    unsigned unit, generation;
    int64_t size;
    char *info;
    size_t nfs;
    struct vm_fs *fs;
    char **vgs; /* VGs this plug activated */
    size_t nvgs;
    char **pv_uuids; /* LVM PVs on this drive */
    size_t npvs;
    int opens;    /* files and directories open under it; under table_lock */
    bool dropped; /* its appliance died: every call is EIO */
};

/* An appliance of a host, with what decides which plugs go to it. */
struct appliance_entry {
    struct vm_host *host;
    struct vm_appliance *appliance;
    char owner[37];    /* -o isolate=domain: the domain it serves, else "" */
    bool reserved;     /* a clone's LVM clashed: this drive alone */
    int load;          /* plugs in it or on their way; under table_lock */
    time_t idle_since; /* 0: in use */
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t table_cond = PTHREAD_COND_INITIALIZER;
static struct vm_plug **plugs;
static size_t nplugs;
static struct appliance_entry *appls;
static size_t nappls;
static struct backup_job **jobs;
static size_t njobs;

/* What LVM each disk held when it was last plugged: a clone plugged again
 * beside its original goes straight to an appliance of its own, instead of
 * being attached, probed and detached in the shared one first.  Only a
 * hint: a disk changed since is probed, and a clash found, as ever. */
struct lvm_memo {
    struct vm_host *host;
    char uuid[37];
    char *disk;
    char **pv_uuids;
    size_t npvs;
    char **vgs;
    size_t nvgs;
};
static struct lvm_memo *memos; /* under table_lock */
static size_t nmemos;
static pthread_t reaper;
static bool reaper_running, reaper_stop;

static void job_release(struct backup_job *j);
static void appliance_put(struct vm_appliance *a);
static void unmount_all(guestfs_h *g, struct vm_plug *p);
static int detach_and_wait(struct vm_plug *p);

/* ---- the table ---------------------------------------------------------- */

static void fs_clear(struct vm_fs *f)
{
    free(f->type);
    free(f->name);
    free(f->device);
    free(f->mountpoint);
}

/* Forget what probing found (before probing again elsewhere). */
static void reset_probe(struct vm_plug *p)
{
    for (size_t i = 0; i < p->nfs; i++)
        fs_clear(&p->fs[i]);
    free(p->fs);
    p->fs = NULL;
    p->nfs = 0;
    for (size_t i = 0; i < p->nvgs; i++)
        free(p->vgs[i]);
    free(p->vgs);
    p->vgs = NULL;
    p->nvgs = 0;
    for (size_t i = 0; i < p->npvs; i++)
        free(p->pv_uuids[i]);
    free(p->pv_uuids);
    p->pv_uuids = NULL;
    p->npvs = 0;
    free(p->info);
    p->info = NULL;
    free(p->image_path);
    p->image_path = NULL;
}

static void plug_free(struct vm_plug *p)
{
    reset_probe(p);
    free(p->disk);
    free(p->serial);
    free(p->device);
    free(p->attach_xml);
    free(p);
}

void vm_plug_unref(struct vm_plug *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&table_lock);
    int refs = --p->refs;
    pthread_mutex_unlock(&table_lock);
    if (refs == 0)
        plug_free(p);
}

static struct vm_plug *find_locked(struct vm_host *h, const char *uuid, const char *disk,
                                   size_t *index)
{
    for (size_t i = 0; i < nplugs; i++)
        if (plugs[i]->host == h && strcmp(plugs[i]->uuid, uuid) == 0 &&
            strcmp(plugs[i]->disk, disk) == 0) {
            if (index)
                *index = i;
            return plugs[i];
        }
    return NULL;
}

struct vm_plug *vm_plug_find(struct vm_host *h, const char *uuid, const char *disk)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    struct vm_plug *p = find_locked(h, uuid, disk, NULL);
    if (!p)
        return vm_error(ENOENT, "%s is not plugged", disk), NULL;
    p->refs++;
    return p;
}

bool vm_plug_is_plugged(struct vm_host *h, const char *uuid, const char *disk)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    return find_locked(h, uuid, disk, NULL) != NULL;
}

char **vm_plug_names(struct vm_host *h, const char *uuid, size_t *n)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    char **names = calloc(nplugs + 1, sizeof *names);
    *n = 0;
    for (size_t i = 0; names && i < nplugs; i++)
        if (plugs[i]->host == h && strcmp(plugs[i]->uuid, uuid) == 0)
            names[(*n)++] = strdup(plugs[i]->disk);
    return names;
}

/* ---- the appliances of a host -------------------------------------------- */

static void appliance_died(struct vm_appliance *a, unsigned generation, const char *why);

static struct appliance_entry *new_entry_locked(struct vm_host *h)
{
    unsigned index = 0;
    for (size_t i = 0; i < nappls; i++)
        if (appls[i].host == h)
            index++;
    struct appliance_entry *v = realloc(appls, (nappls + 1) * sizeof *v);
    if (!v)
        return vm_error(ENOMEM, "out of memory"), NULL;
    appls = v;
    struct appliance_entry *e = &appls[nappls];
    memset(e, 0, sizeof *e);
    e->host = h;
    e->appliance = vm_appliance_new(h, index, appliance_died, NULL);
    if (!e->appliance)
        return NULL;
    nappls++;
    return e;
}

/*
 * The appliance a plug of domain UUID goes to, its load counted: with
 * isolate=domain the domain's own; a clashing clone (EXCLUSIVE) a new one
 * of its own; else the least loaded of up to `appliances` per host, a new
 * one while all of them are busy, so drives in different appliances are
 * read in parallel.  Loads are counted here, never asked of an appliance
 * (which may be busy booting).
 */
static struct vm_appliance *appliance_take(struct vm_host *h, const char *uuid, bool exclusive)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    struct appliance_entry *best = NULL;
    size_t count = 0;
    bool all_busy = true;
    /* A clone's appliance, once empty, serves the next clone. */
    for (size_t i = 0; i < nappls && exclusive && !best; i++)
        if (appls[i].host == h && appls[i].reserved && appls[i].load == 0)
            best = &appls[i];
    if (best) {
        best->load++;
        best->idle_since = 0;
        return best->appliance;
    }
    for (size_t i = 0; i < nappls && !exclusive; i++) {
        struct appliance_entry *e = &appls[i];
        if (e->host != h || e->reserved)
            continue;
        if (vm_settings.isolate_domain) {
            if (strcmp(e->owner, uuid) == 0) {
                best = e;
                break;
            }
            continue;
        }
        count++;
        if (e->load == 0)
            all_busy = false;
        if (!best || e->load < best->load)
            best = e;
    }
    if (exclusive || !best ||
        (!vm_settings.isolate_domain && all_busy && count < vm_settings.appliances)) {
        struct appliance_entry *e = new_entry_locked(h);
        if (!e)
            return NULL;
        e->reserved = exclusive;
        if (vm_settings.isolate_domain)
            snprintf(e->owner, sizeof e->owner, "%s", uuid);
        best = e;
    }
    best->load++;
    best->idle_since = 0;
    return best->appliance;
}

static void start_reaper_locked(void);

/* A's entry in the table, or NULL; under table_lock. */
static struct appliance_entry *entry_of_locked(const struct vm_appliance *a)
{
    for (size_t i = 0; i < nappls; i++)
        if (appls[i].appliance == a)
            return &appls[i];
    return NULL;
}

/* One plug less in A; an empty appliance starts counting its idle time. */
static void appliance_put(struct vm_appliance *a)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    struct appliance_entry *e = entry_of_locked(a);
    if (e && e->load > 0)
        e->load--;
    if (e && e->load == 0)
        e->idle_since = time(NULL);
    start_reaper_locked();
}

/* Drop every plug of boot GENERATION of A: the drives are gone with it. */
/* Take out of the table every plug MATCH accepts; they are marked dropped
 * (open files get EIO).  Returns them (NULL-terminated, references taken over). */
static struct vm_plug **take_plugs(bool (*match)(const struct vm_plug *p, const void *arg),
                                   const void *arg, size_t *n)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    struct vm_plug **out = calloc(nplugs + 1, sizeof *out);
    *n = 0;
    if (!out)
        return NULL;
    for (size_t i = 0; i < nplugs;) {
        if (match(plugs[i], arg)) {
            __atomic_store_n(&plugs[i]->dropped, true, __ATOMIC_RELEASE);
            out[(*n)++] = plugs[i];
            plugs[i] = plugs[--nplugs];
            continue;
        }
        i++;
    }
    return out;
}

struct died {
    struct vm_appliance *a;
    unsigned generation;
};

static bool of_boot(const struct vm_plug *p, const void *arg)
{
    const struct died *d = arg;
    return p->appliance == d->a && p->generation == d->generation;
}

/* Drop every plug of boot GENERATION of A: the drives are gone with it. */
static void appliance_died(struct vm_appliance *a, unsigned generation, const char *why)
{
    struct died d = {a, generation};
    size_t n;
    struct vm_plug **dropped = take_plugs(of_boot, &d, &n);
    vm_notice(VM_NOTICE_WARNING,
              "host %s: the appliance stopped by itself (%s): %zu plug(s) dropped; they can be "
              "plugged again",
              n ? vm_host_name(dropped[0]->host) : "?", why, n);
    vm_appliance_stop(a, generation);
    for (size_t i = 0; i < n; i++) {
        struct vm_plug *p = dropped[i];
        job_release(p->job);
        p->job = NULL;
        vm_host_refresh_later(p->host, p->uuid);
        appliance_put(p->appliance);
        vm_plug_unref(p);
    }
    free(dropped);
}

/* Stops appliances that have had nothing plugged for appliance_idle seconds. */
static void *reaper_thread(void *arg)
{
    pthread_mutex_lock(&table_lock);
    while (!reaper_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&table_cond, &table_lock, &ts);
        time_t now = time(NULL);
        for (size_t i = 0; i < nappls && !reaper_stop; i++) {
            struct appliance_entry *e = &appls[i];
            if (!e->idle_since || e->load || vm_settings.appliance_idle == 0 ||
                now - e->idle_since < (time_t)vm_settings.appliance_idle)
                continue;
            struct vm_appliance *a = e->appliance;
            struct vm_host *h = e->host;
            e->idle_since = 0;
            pthread_mutex_unlock(&table_lock);
            if (vm_appliance_drive_count(a) == 0) {
                vm_notice(VM_NOTICE_INFO, "host %s: appliance idle for %u s: stopping",
                          vm_host_name(h), vm_settings.appliance_idle);
                vm_appliance_stop(a, 0);
            }
            pthread_mutex_lock(&table_lock);
        }
    }
    pthread_mutex_unlock(&table_lock);
    return NULL;
}

static void start_reaper_locked(void)
{
    if (!reaper_running && !reaper_stop && pthread_create(&reaper, NULL, reaper_thread, NULL) == 0)
        reaper_running = true;
}

static void *eager_thread(void *arg)
{
    struct vm_host *h = arg;
    struct vm_appliance *a = appliance_take(h, "", false);
    if (a && vm_appliance_start(a) < 0)
        vm_notice(VM_NOTICE_WARNING, "host %s: %s", vm_host_name(h), vm_error_message());
    if (a)
        appliance_put(a);
    return NULL;
}

void vm_plug_start_eager(struct vm_host *h)
{
    /* With isolate=domain no appliance exists before a domain's first plug. */
    if (vm_settings.isolate_domain)
        return;
    vm_spawn_detached(eager_thread, h);
}

/* ---- probing and mounting ------------------------------------------------ */

static int gfs_error(guestfs_h *g, const char *what)
{
    int e = guestfs_last_errno(g);
    const char *m = guestfs_last_error(g);
    /* One line: libguestfs appends paragraphs of advice to some errors. */
    int len = m ? (int)strcspn(m, "\n") : 0;
    return vm_error(e ? e : EIO, "%s: %.*s", what, m ? len : 13, m ? m : "unknown error");
}

static void free_strings(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* The serial a disk gets in the appliance: [A-Za-z0-9_-], ends in a letter. */
static char *derive_serial(struct vm_host *h, const char *uuid, const char *disk)
{
    uint64_t a = 14695981039346656037ULL, b = 1099511628211ULL * 31;
    const char *parts[] = {vm_host_name(h), uuid, disk};
    for (size_t i = 0; i < 3; i++) {
        for (const char *p = parts[i]; *p; p++) {
            a = (a ^ (unsigned char)*p) * 1099511628211ULL;
            b = (b ^ (unsigned char)*p) * 0x100000001b3ULL + 0x9e3779b97f4a7c15ULL;
        }
        a = (a ^ 0xff) * 1099511628211ULL;
        b = (b ^ 0xff) * 0x100000001b3ULL;
    }
    char *s;
    if (asprintf(&s, "vm%016" PRIx64 "%08" PRIx32 "d", a, (uint32_t)(b >> 32)) < 0)
        return NULL;
    return s;
}

/* The name device-mapper gives VG/LV: dashes inside names doubled. */
static char *lv_dir_name(const char *vg, const char *lv)
{
    size_t n = strlen(vg) * 2 + strlen(lv) * 2 + 8;
    char *s = malloc(n), *o = s;
    if (!s)
        return NULL;
    o += sprintf(o, "lv-");
    for (const char *p = vg; *p; p++)
        o += sprintf(o, *p == '-' ? "--" : "%c", *p);
    *o++ = '-';
    for (const char *p = lv; *p; p++)
        o += sprintf(o, *p == '-' ? "--" : "%c", *p);
    *o = '\0';
    return s;
}

static bool is_mountable(const char *type)
{
    static const char *const not [] = {
        "", "swap", "LVM2_member", "crypto_LUKS", "linux_raid_member", "BitLocker", NULL};
    if (!type)
        return false;
    for (size_t i = 0; not [i]; i++)
        if (strcmp(type, not [i]) == 0)
            return false;
    return true;
}

/* Read-only, and without replaying a journal: a crashed or running guest's
 * filesystem would otherwise refuse to mount on a read-only drive. */
static const char *mount_options(const char *type)
{
    if (strcmp(type, "ext3") == 0 || strcmp(type, "ext4") == 0)
        return "ro,noload"; /* ext2 has no journal, and refuses the option */
    if (strcmp(type, "xfs") == 0)
        return "ro,norecovery";
    if (strcmp(type, "btrfs") == 0)
        return "ro,rescue=nologreplay";
    return "ro";
}

static int add_fs(struct vm_plug *p, const char *name, const char *device)
{
    struct vm_fs *v = realloc(p->fs, (p->nfs + 1) * sizeof *v);
    if (!v)
        return vm_error(ENOMEM, "out of memory");
    p->fs = v;
    struct vm_fs *f = &p->fs[p->nfs];
    memset(f, 0, sizeof *f);
    f->name = strdup(name);
    f->device = strdup(device);
    if (asprintf(&f->mountpoint, "/%s.%s", p->serial, name) < 0 || !f->name || !f->device) {
        fs_clear(f);
        return vm_error(ENOMEM, "out of memory");
    }
    p->nfs++;
    return 0;
}

/* One line of `info` about the filesystem (or whatever) on DEVICE; adds a
 * directory for it when it can be mounted. */
/* KEY's value in the key/value list BLKID returns, or NULL. */
static const char *blkid_value(char **blkid, const char *key)
{
    for (size_t i = 0; blkid && blkid[i] && blkid[i + 1]; i += 2)
        if (strcmp(blkid[i], key) == 0)
            return blkid[i + 1];
    return NULL;
}

/* What blkid says of DEVICE: one program in the appliance for what would
 * take vfs_type, vfs_label and vfs_uuid (and parted) three or four. */
static char **blkid(guestfs_h *g, const char *device)
{
    guestfs_push_error_handler(g, NULL, NULL);
    char **r = guestfs_blkid(g, device); /* fails on a device it recognises nothing on */
    guestfs_pop_error_handler(g);
    return r;
}

/* `info` lines about the filesystem (or whatever) blkid found; a directory
 * for it when it can be mounted. */
static int describe(struct vm_plug *p, FILE *info, char **id, const char *device,
                    const char *dirname, bool *is_pv)
{
    const char *type = blkid_value(id, "TYPE");
    *is_pv = type && strcmp(type, "LVM2_member") == 0;
    if (!type || !*type) {
        fprintf(info, "  filesystem: none\n");
        return 0;
    }
    const char *label = blkid_value(id, "LABEL");
    const char *fsuuid = blkid_value(id, "UUID");
    fprintf(info, "  filesystem: %s\n", strcmp(type, "crypto_LUKS") == 0 ? "LUKS (locked)" : type);
    if (label && *label)
        fprintf(info, "  label: %s\n", label);
    if (fsuuid && *fsuuid)
        fprintf(info, "  uuid: %s\n", fsuuid);
    if (is_mountable(type)) {
        fprintf(info, "  directory: %s\n", dirname);
        if (add_fs(p, dirname, device) < 0)
            return -1;
        p->fs[p->nfs - 1].type = strdup(type);
    }
    return 0;
}

/* Activate VG read-only.  Its drives are attached <readonly/>, where a
 * plain `vgchange -ay` fails ("reload ioctl ... Read-only file system"):
 * LVM must be told the LVs are read-only, which vg_activate cannot say, so
 * then ask the appliance's shell through guestfs_debug. */
static int activate_vg(guestfs_h *g, const char *vg)
{
    char *one[] = {(char *)vg, NULL};
    guestfs_push_error_handler(g, NULL, NULL);
    int r = guestfs_vg_activate(g, 1, one);
    guestfs_pop_error_handler(g);
    if (r == 0)
        return 0;
    /* VG names are [A-Za-z0-9+_.-]: nothing here needs quoting. */
    for (const char *c = vg; *c; c++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+_.-", *c))
            return vm_error(EINVAL, "unexpected volume group name");
    CLEANUP_FREE char *cmd = NULL;
    if (asprintf(&cmd, "lvm vgchange -ay --config 'activation{read_only_volume_list=[\"%s\"]}' %s",
                 vg, vg) < 0)
        return vm_error(ENOMEM, "out of memory");
    char *args[] = {cmd, NULL};
    char *out = guestfs_debug(g, "sh", args);
    if (!out)
        return gfs_error(g, "vgchange");
    free(out);
    return 0;
}

/* Does plug O hold one of the PVs PVS or, VGS being non-NULL, one of the
 * VGs VGS ("": any VG at all)? */
static bool holds_lvm(const struct vm_plug *o, char *const *pvs, size_t npvs, char *const *vgs,
                      size_t nvgs)
{
    for (size_t j = 0; j < o->npvs; j++)
        for (size_t k = 0; k < npvs; k++)
            if (strcmp(o->pv_uuids[j], pvs[k]) == 0)
                return true;
    for (size_t j = 0; vgs && j < o->nvgs; j++)
        for (size_t k = 0; k < nvgs; k++)
            if (!*vgs[k] || strcmp(o->vgs[j], vgs[k]) == 0)
                return true;
    return false;
}

/* Does another plug in P's appliance hold one of these PVs, or a VG named VG
 * ("": any VG at all, ours hides behind one of the same name)? */
static bool clashes(const struct vm_plug *p, const char *vg)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    char *vgs[] = {(char *)vg};
    for (size_t i = 0; i < nplugs; i++) {
        const struct vm_plug *o = plugs[i];
        if (o != p && o->appliance == p->appliance &&
            (vg ? holds_lvm(o, NULL, 0, vgs, 1) : holds_lvm(o, p->pv_uuids, p->npvs, NULL, 0)))
            return true;
    }
    return false;
}

/* Activate the VGs whose PVs are now all plugged, and add their LVs.
 * PLUG_CLASH when the names clash with another drive's (cloned guests). */
static int probe_lvm(guestfs_h *g, struct vm_plug *p, FILE *info, char **pv_devices)
{
    for (size_t i = 0; pv_devices[i]; i++) {
        char *u = guestfs_pvuuid(g, pv_devices[i]);
        char **v = u ? realloc(p->pv_uuids, (p->npvs + 1) * sizeof *v) : NULL;
        if (v) {
            p->pv_uuids = v;
            p->pv_uuids[p->npvs++] = u;
        } else {
            free(u);
        }
    }
    /* Before LVM sees both: a clone's PVs carry the same UUIDs. */
    if (clashes(p, NULL))
        return 1;
    int r = 0;
    bool found = false;
    /* LVM scans every block device here: only when this drive holds a PV. */
    char **vgs = guestfs_lvm_scan(g, 0) == 0 ? guestfs_vgs(g) : NULL;
    for (size_t i = 0; vgs && vgs[i] && r == 0; i++) {
        char **pvs = guestfs_vgpvuuids(g, vgs[i]);
        bool ours = false;
        for (size_t j = 0; pvs && pvs[j]; j++)
            for (size_t k = 0; k < p->npvs; k++)
                if (strcmp(pvs[j], p->pv_uuids[k]) == 0)
                    ours = true;
        free_strings(pvs);
        if (!ours)
            continue;
        found = true;
        if (clashes(p, vgs[i])) {
            r = 1;
            break;
        }
        if (activate_vg(g, vgs[i]) < 0) {
            fprintf(info, "volume group %s: cannot be activated: %s\n", vgs[i], vm_error_message());
            continue;
        }
        char **v = realloc(p->vgs, (p->nvgs + 1) * sizeof *v);
        if (v) {
            p->vgs = v;
            p->vgs[p->nvgs++] = strdup(vgs[i]);
        }
        char **lvs = guestfs_lvs(g);
        CLEANUP_FREE char *prefix = NULL;
        if (asprintf(&prefix, "/dev/%s/", vgs[i]) < 0)
            prefix = NULL;
        for (size_t j = 0; lvs && prefix && lvs[j] && r == 0; j++) {
            if (strncmp(lvs[j], prefix, strlen(prefix)) != 0)
                continue;
            const char *lv = lvs[j] + strlen(prefix);
            CLEANUP_FREE char *dir = lv_dir_name(vgs[i], lv);
            fprintf(info, "logical volume %s/%s\n", vgs[i], lv);
            bool pv;
            char **id = blkid(g, lvs[j]);
            if (dir)
                r = describe(p, info, id, lvs[j], dir, &pv);
            free_strings(id);
        }
        free_strings(lvs);
    }
    free_strings(vgs);
    /* Our PVs in no VG LVM shows: its name is taken by another drive's VG. */
    if (r == 0 && !found && p->npvs && clashes(p, ""))
        r = 1;
    return r;
}

/* What is on the drive: partitions, filesystems, LVs; `info` says it all. */
static int probe(guestfs_h *g, struct vm_plug *p)
{
    p->size = guestfs_blockdev_getsize64(g, p->device);
    if (p->size < 0)
        return gfs_error(g, "cannot read the size of the drive");
    char *text = NULL;
    size_t len = 0;
    FILE *info = open_memstream(&text, &len);
    if (!info)
        return vm_error(ENOMEM, "out of memory");
    fprintf(info, "disk: %s\nsize: %" PRId64 "\n", p->disk, p->size);
    char *pvs[130] = {NULL};
    size_t npvs = 0;
    int r = 0;
    char **whole = blkid(g, p->device);
    const char *parttype = blkid_value(whole, "PTTYPE");
    if (parttype) {
        fprintf(info, "partition table: %s\n", strcmp(parttype, "dos") == 0 ? "msdos" : parttype);
        struct guestfs_partition_list *parts = guestfs_part_list(g, p->device);
        for (uint32_t i = 0; parts && i < parts->len && r == 0; i++) {
            struct guestfs_partition *pt = &parts->val[i];
            CLEANUP_FREE char *dev = NULL, *dir = NULL;
            if (asprintf(&dev, "%s%d", p->device, pt->part_num) < 0 ||
                asprintf(&dir, "part%d", pt->part_num) < 0)
                break;
            fprintf(info, "partition %d\n  start: %" PRIu64 "\n  size: %" PRIu64 "\n", pt->part_num,
                    pt->part_start, pt->part_size);
            bool pv;
            char **id = blkid(g, dev);
            r = describe(p, info, id, dev, dir, &pv);
            free_strings(id);
            if (pv && npvs < 128)
                pvs[npvs++] = strdup(dev);
        }
        if (parts)
            guestfs_free_partition_list(parts);
    } else {
        fprintf(info, "partition table: none\nwhole disk\n");
        bool pv;
        r = describe(p, info, whole, p->device, "whole", &pv);
        if (pv)
            pvs[npvs++] = strdup(p->device);
    }
    free_strings(whole);
    if (r == 0 && npvs)
        r = probe_lvm(g, p, info, pvs);
    for (size_t i = 0; i < npvs; i++)
        free(pvs[i]);
    fclose(info);
    p->info = text;
    return r;
}

static void unmount_all(guestfs_h *g, struct vm_plug *p)
{
    for (size_t i = p->nfs; i-- > 0;) {
        if (p->fs[i].mounted && guestfs_umount(g, p->fs[i].mountpoint) == 0)
            p->fs[i].mounted = false;
        guestfs_rmmountpoint(g, p->fs[i].mountpoint);
    }
    if (p->nvgs) {
        p->vgs = realloc(p->vgs, (p->nvgs + 1) * sizeof *p->vgs);
        p->vgs[p->nvgs] = NULL;
        guestfs_vg_activate(g, 0, p->vgs);
    }
}

static int mount_all(guestfs_h *g, struct vm_plug *p)
{
    char *notes = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&notes, &len);
    if (!out)
        return vm_error(ENOMEM, "out of memory");
    for (size_t i = 0; i < p->nfs; i++) {
        struct vm_fs *f = &p->fs[i];
        const char *type = f->type;
        if (guestfs_mkmountpoint(g, f->mountpoint) < 0) {
            fclose(out);
            free(notes);
            return gfs_error(g, "cannot make a mountpoint in the appliance");
        }
        if (guestfs_mount_options(g, mount_options(type ? type : ""), f->device, f->mountpoint) <
            0) {
            /* A filesystem the appliance cannot mount is named in `info`, not fatal. */
            fprintf(out, "not mounted: %s: %s\n", f->name, guestfs_last_error(g));
            guestfs_rmmountpoint(g, f->mountpoint);
            continue;
        }
        f->mounted = true;
    }
    fclose(out);
    if (len) {
        char *info = NULL;
        if (asprintf(&info, "%s%s", p->info ? p->info : "", notes) > 0) {
            free(p->info);
            p->info = info;
        }
    }
    free(notes);
    /* Keep only what mounted: a directory that cannot be listed helps nobody. */
    size_t k = 0;
    for (size_t i = 0; i < p->nfs; i++) {
        if (p->fs[i].mounted)
            p->fs[k++] = p->fs[i];
        else
            fs_clear(&p->fs[i]);
    }
    p->nfs = k;
    return 0;
}

static int wait_for_link(struct vm_appliance *a, const struct vm_plug *p)
{
    const char *device = p->device;
    /* Once devtmpfs is in the sysroot, the link is a path: asking whether
     * it exists runs no program in the appliance, unlike a Device call. */
    CLEANUP_FREE char *link = NULL;
    if (asprintf(&link, "%s/disk/guestfs/%s", VM_APPLIANCE_DEVDIR, p->serial) < 0)
        return vm_error(ENOMEM, "out of memory");
    for (int waited = 0; waited < UDEV_WAIT_MS; waited += UDEV_POLL_MS) {
        guestfs_h *g = vm_appliance_handle(a);
        if (!g)
            return -1;
        guestfs_push_error_handler(g, NULL, NULL);
        bool there = vm_appliance_dev_mounted(a) ? guestfs_exists(g, link) == 1
                                                 : guestfs_blockdev_getsize64(g, device) >= 0;
        guestfs_pop_error_handler(g);
        vm_appliance_handle_release(a);
        if (there)
            return 0;
        usleep(UDEV_POLL_MS * 1000);
    }
    return vm_error(ETIMEDOUT, "%s did not appear in the appliance within %d s", device,
                    UDEV_WAIT_MS / 1000);
}

/* ---- backup jobs for running domains ------------------------------------ */

static void job_free(struct backup_job *j)
{
    for (size_t i = 0; i < j->nscratch; i++)
        free(j->scratch[i]);
    free(j->scratch);
    free(j->socket);
    free(j);
}

/* The domain's backup job, started on its first plug (EBUSY when libvirt refuses). */
static struct backup_job *job_acquire(struct vm_host *h, const struct vm_domain *d)
{
    pthread_mutex_lock(&table_lock);
    for (size_t i = 0; i < njobs; i++)
        if (jobs[i]->host == h && strcmp(jobs[i]->uuid, d->uuid) == 0) {
            jobs[i]->plugs++;
            pthread_mutex_unlock(&table_lock);
            return jobs[i];
        }
    pthread_mutex_unlock(&table_lock);

    struct backup_job *j = calloc(1, sizeof *j);
    if (!j)
        return vm_error(ENOMEM, "out of memory"), NULL;
    j->host = h;
    memcpy(j->uuid, d->uuid, sizeof j->uuid);
    j->plugs = 1;
    /* On the guest's host, beside the appliance: nothing crosses hosts but libvirt. */
    char prefix[64];
    snprintf(prefix, sizeof prefix, "virtmount-%.8s-%.8s-", vm_instance_id(), d->uuid);
    if (asprintf(&j->socket, "/var/tmp/%snbd.sock", prefix) < 0) {
        free(j);
        return vm_error(ENOMEM, "out of memory"), NULL;
    }
    for (size_t i = 0; i < d->ndisks; i++) {
        const struct vm_disk *k = &d->disks[i];
        if (k->readonly || !*k->source || strcmp(k->device, "disk") != 0)
            continue;
        char **v = realloc(j->scratch, (j->nscratch + 1) * sizeof *v);
        if (v) {
            j->scratch = v;
            if (asprintf(&v[j->nscratch], "/var/tmp/%s%s.qcow2", prefix, k->target) > 0)
                j->nscratch++;
        }
    }
    if (vm_host_is_local(h)) {
        unlink(j->socket); /* left by a killed run */
        for (size_t i = 0; i < j->nscratch; i++)
            unlink(j->scratch[i]);
    }
    CLEANUP_FREE char *xml = vm_xml_backup(d, j->socket, "/var/tmp", prefix);
    virConnectPtr conn = xml ? vm_host_connection(h) : NULL;
    virDomainPtr dom = conn ? virDomainLookupByUUIDString(conn, d->uuid) : NULL;
    virDomainJobInfo info;
    int r = -1;
    if (!xml || !conn)
        ;
    else if (!dom)
        vm_error_libvirt(ENOENT, "domain %s is gone", d->name);
    /* Asked first: libvirt would wait 30 s for its job lock before saying no. */
    else if (virDomainGetJobInfo(dom, &info) == 0 && info.type != VIR_DOMAIN_JOB_NONE)
        vm_error(EBUSY,
                 "cannot plug a disk of running domain %s: another job (a backup, "
                 "migration or snapshot) runs on it",
                 d->name);
    else if ((r = virDomainBackupBegin(dom, xml, NULL, 0)) < 0)
        vm_error_libvirt(EBUSY, "cannot start a backup job on running domain %s", d->name);
    if (dom)
        virDomainFree(dom);
    if (conn)
        virConnectClose(conn);
    if (r < 0) {
        job_free(j);
        return NULL;
    }
    pthread_mutex_lock(&table_lock);
    struct backup_job **v = realloc(jobs, (njobs + 1) * sizeof *v);
    if (v) {
        jobs = v;
        jobs[njobs++] = j;
    }
    pthread_mutex_unlock(&table_lock);
    vm_notice(VM_NOTICE_INFO,
              "host %s: backup job started on running domain %s: its plugged disks show one "
              "point in time; until the last is unplugged, its owner cannot snapshot, migrate "
              "or back it up",
              vm_host_name(h), d->name);
    return j;
}

/* One plug less; the last ends the job (and with it libvirt's export). */
static void job_release(struct backup_job *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&table_lock);
    bool last = --j->plugs == 0;
    if (last)
        for (size_t i = 0; i < njobs; i++)
            if (jobs[i] == j) {
                jobs[i] = jobs[--njobs];
                break;
            }
    pthread_mutex_unlock(&table_lock);
    if (!last)
        return;
    virConnectPtr conn = vm_host_connection(j->host);
    virDomainPtr dom = conn ? virDomainLookupByUUIDString(conn, j->uuid) : NULL;
    /* A domain that stopped has no job left to abort. */
    if (dom && virDomainIsActive(dom) == 1 && virDomainAbortJob(dom) < 0)
        vm_notice(VM_NOTICE_WARNING, "host %s: cannot end the backup job of domain %s: %s",
                  vm_host_name(j->host), j->uuid, virGetLastErrorMessage());
    if (dom)
        virDomainFree(dom);
    if (conn)
        virConnectClose(conn);
    if (vm_host_is_local(j->host)) {
        unlink(j->socket);
        for (size_t i = 0; i < j->nscratch; i++)
            unlink(j->scratch[i]);
    }
    job_free(j);
}

static void *host_down_thread(void *arg)
{
    struct died *d = arg;
    appliance_died(d->a, d->generation, "the host's connection closed");
    free(d);
    return NULL;
}

void vm_plug_host_down(struct vm_host *h)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    for (size_t i = 0; i < nappls; i++) {
        if (appls[i].host != h)
            continue;
        unsigned generation = vm_appliance_generation(appls[i].appliance);
        struct died *d = generation ? calloc(1, sizeof *d) : NULL;
        if (!d)
            continue;
        d->a = appls[i].appliance;
        d->generation = generation;
        if (vm_spawn_detached(host_down_thread, d) < 0)
            free(d);
    }
}

int vm_backup_jobs_cleanup(virConnectPtr conn)
{
    /* A killed virtmount leaves its jobs running (and the domain's owner
     * unable to back it up): ours are those exporting on our socket names. */
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(conn, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    if (n < 0)
        return -1;
    char mark[64];
    snprintf(mark, sizeof mark, "virtmount-%.8s-", vm_instance_id());
    int ended = 0;
    for (int i = 0; i < n; i++) {
        virDomainJobInfo info;
        if (virDomainGetJobInfo(doms[i], &info) == 0 && info.type != VIR_DOMAIN_JOB_NONE) {
            char *xml = virDomainBackupGetXMLDesc(doms[i], 0);
            if (xml && strstr(xml, mark) && virDomainAbortJob(doms[i]) == 0)
                ended++;
            free(xml);
        }
        virDomainFree(doms[i]);
    }
    free(doms);
    return ended;
}

/* ---- plug and unplug ------------------------------------------------------ */

#define PLUG_CLASH 1

/* Attach P to appliance A (booting it if need be), find and mount its
 * filesystems.  -1 with an error, or PLUG_CLASH, leave nothing behind. */
static int plug_into(struct vm_plug *p, struct vm_appliance *a, const char *guest_xml,
                     const char *target)
{
    if (vm_appliance_start(a) < 0)
        return -1;
    p->appliance = a;
    if (vm_appliance_reserve_unit(a, &p->unit, &p->generation) < 0)
        return -1;
    free(p->attach_xml);
    p->attach_xml = p->job ? vm_xml_attach_nbd(p->job->socket, target, p->serial, p->unit)
                           : vm_xml_attach_disk(guest_xml, p->serial, p->unit, true);
    if (!p->attach_xml || vm_appliance_attach(a, p->attach_xml) < 0) {
        vm_appliance_release_unit(a, p->unit, p->generation);
        return -1;
    }
    int r = wait_for_link(a, p);
    guestfs_h *g = r == 0 ? vm_appliance_handle(a) : NULL;
    if (g) {
        r = probe(g, p);
        if (r == 0)
            r = mount_all(g, p);
        if (r == 0 && vm_appliance_mount_dev(a, g, p->device) == 0 &&
            asprintf(&p->image_path, "%s/disk/guestfs/%s", VM_APPLIANCE_DEVDIR, p->serial) < 0)
            p->image_path = NULL;
        if (r != 0) {
            int e = vm_error_errno();
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", vm_error_message());
            unmount_all(g, p);
            vm_error(e, "%s", msg);
        }
        vm_appliance_handle_release(a);
    } else {
        r = -1;
    }
    if (r != 0) {
        int e = vm_error_errno();
        /* What the guest's filesystem said is no errno of mkdir's. */
        if (e != ETIMEDOUT && e != ENOMEM && e != EHOSTUNREACH)
            e = EIO;
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", vm_error_message());
        vm_appliance_detach(a, p->attach_xml);
        vm_appliance_release_unit(a, p->unit, p->generation);
        reset_probe(p);
        if (r < 0)
            vm_error(e, "%s", msg);
    }
    return r;
}

static void memo_clear(struct lvm_memo *m)
{
    free(m->disk);
    free_strings(m->pv_uuids);
    free_strings(m->vgs);
    memset(m, 0, sizeof *m);
}

static struct lvm_memo *memo_find_locked(const struct vm_host *h, const char *uuid,
                                         const char *disk)
{
    for (size_t i = 0; i < nmemos; i++)
        if (memos[i].host == h && strcmp(memos[i].uuid, uuid) == 0 &&
            strcmp(memos[i].disk, disk) == 0)
            return &memos[i];
    return NULL;
}

static char **copy_strings_n(char **v, size_t n)
{
    char **c = calloc(n + 1, sizeof *c);
    for (size_t i = 0; c && i < n; i++)
        if (!(c[i] = strdup(v[i]))) {
            free_strings(c);
            return NULL;
        }
    return c;
}

/* Remember what LVM P's disk holds (nothing, if none).  Out of memory, the
 * memo is just not kept. */
static void memo_record(const struct vm_plug *p)
{
    struct lvm_memo fresh = {.host = p->host, .npvs = p->npvs, .nvgs = p->nvgs};
    snprintf(fresh.uuid, sizeof fresh.uuid, "%s", p->uuid);
    if (p->npvs) {
        fresh.disk = strdup(p->disk);
        fresh.pv_uuids = copy_strings_n(p->pv_uuids, p->npvs);
        fresh.vgs = copy_strings_n(p->vgs, p->nvgs);
    }
    bool keep = fresh.disk && fresh.pv_uuids && fresh.vgs;
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    struct lvm_memo *old = memo_find_locked(p->host, p->uuid, p->disk);
    if (old) {
        memo_clear(old);
        *old = memos[--nmemos]; /* the last entry takes its place */
    }
    struct lvm_memo *v = keep ? realloc(memos, (nmemos + 1) * sizeof *v) : NULL;
    if (v) {
        memos = v;
        memos[nmemos++] = fresh;
    } else {
        memo_clear(&fresh);
    }
}

/* Would this disk, as last plugged, clash with a drive now in an appliance
 * it could share (with isolate=domain, its domain's)? */
static bool memo_clashes(struct vm_host *h, const char *uuid, const char *disk)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    const struct lvm_memo *m = memo_find_locked(h, uuid, disk);
    for (size_t i = 0; m && i < nplugs; i++) {
        const struct vm_plug *o = plugs[i];
        const struct appliance_entry *e = entry_of_locked(o->appliance);
        if (o->host == h && e && !e->reserved &&
            (!vm_settings.isolate_domain || strcmp(e->owner, uuid) == 0) &&
            holds_lvm(o, m->pv_uuids, m->npvs, m->vgs, m->nvgs))
            return true;
    }
    return false;
}

static bool is_live(int state)
{
    return state != VIR_DOMAIN_SHUTOFF && state != VIR_DOMAIN_CRASHED;
}

int vm_plug_disk(struct vm_host *h, const char *uuid, const char *disk_name)
{
    if (vm_plug_is_plugged(h, uuid, disk_name))
        return vm_error(EEXIST, "%s is already plugged", disk_name);
    struct vm_domlist *list = vm_host_domains(h);
    if (!list)
        return -1;
    struct vm_domain *dom = vm_domlist_find_uuid(list, uuid);
    const struct vm_disk *disk = dom ? vm_domain_find_disk(dom, disk_name, NULL) : NULL;
    if (!disk) {
        vm_domlist_unref(list);
        return vm_error(ENOENT, "no disk %s in this domain (see devices/)", disk_name);
    }
    /* A running domain's qemu holds its image's write lock: read a
     * point-in-time export instead (a read-only disk holds no such lock).
     * The snapshot follows libvirt's events, which may not have arrived
     * for a domain started or stopped a moment ago: libvirt itself says. */
    bool live = is_live(dom->state);
    virConnectPtr conn = vm_host_connection(h);
    virDomainPtr vdom = conn ? virDomainLookupByUUIDString(conn, uuid) : NULL;
    int state, reason;
    if (vdom && virDomainGetState(vdom, &state, &reason, 0) == 0)
        live = is_live(state);
    if (vdom)
        virDomainFree(vdom);
    if (conn)
        virConnectClose(conn);
    struct vm_domain *domain = vm_domain_ref(dom);
    struct vm_plug *p = calloc(1, sizeof *p);
    if (!p) {
        vm_domlist_unref(list);
        return vm_error(ENOMEM, "out of memory");
    }
    p->refs = 1;
    p->host = h;
    memcpy(p->uuid, uuid, sizeof p->uuid);
    p->disk = strdup(disk_name);
    p->serial = derive_serial(h, uuid, disk_name);
    p->network = strcmp(disk->type, "network") == 0;
    CLEANUP_FREE char *guest_xml = strdup(disk->xml);
    CLEANUP_FREE char *target = strdup(disk->target);
    bool use_job = live && !disk->readonly;
    vm_domlist_unref(list);
    if (!p->disk || !p->serial || !guest_xml || !target ||
        asprintf(&p->device, "/dev/disk/guestfs/%s", p->serial) < 0) {
        plug_free(p);
        vm_domain_unref(domain);
        return vm_error(ENOMEM, "out of memory");
    }
    if (use_job && !(p->job = job_acquire(h, domain))) {
        plug_free(p);
        vm_domain_unref(domain);
        return -1;
    }
    vm_domain_unref(domain);

    /* Into the chosen appliance; a clone whose LVM names clash with a drive
     * there goes to an appliance of its own: at once when its last plug
     * says it will. */
    bool known = memo_clashes(h, uuid, disk_name);
    if (known)
        vm_notice(VM_NOTICE_INFO,
                  "host %s: %s: its LVM names, as at its last plug, clash with a drive "
                  "plugged (a cloned guest?): it gets an appliance of its own",
                  vm_host_name(h), disk_name);
    struct vm_appliance *a = appliance_take(h, uuid, known);
    int r = a ? plug_into(p, a, guest_xml, target) : -1;
    if (r == PLUG_CLASH && !known) {
        appliance_put(a);
        vm_notice(VM_NOTICE_INFO,
                  "host %s: %s: its LVM names clash with a drive already "
                  "plugged (a cloned guest?): it gets an appliance of its own",
                  vm_host_name(h), disk_name);
        a = appliance_take(h, uuid, true);
        r = a ? plug_into(p, a, guest_xml, target) : -1;
    }
    if (r != 0) {
        if (r == PLUG_CLASH)
            vm_error(EIO, "%s still clashes with another drive", disk_name);
        int e = vm_error_errno();
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", vm_error_message());
        if (a)
            appliance_put(a);
        job_release(p->job);
        plug_free(p);
        return vm_error(e, "cannot plug %s: %s", disk_name, msg);
    }

    memo_record(p);
    pthread_mutex_lock(&table_lock);
    struct vm_plug **v = realloc(plugs, (nplugs + 1) * sizeof *v);
    if (v) {
        plugs = v;
        plugs[nplugs++] = p;
    }
    pthread_mutex_unlock(&table_lock);
    if (!v) {
        vm_appliance_detach(a, p->attach_xml);
        vm_appliance_release_unit(a, p->unit, p->generation);
        appliance_put(a);
        job_release(p->job);
        plug_free(p);
        return vm_error(ENOMEM, "out of memory");
    }
    if (p->job)
        vm_notice(VM_NOTICE_INFO,
                  "host %s: plugged %s as %s (%zu filesystem(s)) from the "
                  "running domain's backup job",
                  vm_host_name(h), disk_name, p->serial, p->nfs);
    else
        vm_notice(VM_NOTICE_INFO,
                  "host %s: plugged %s as %s (%zu filesystem(s)); while it is plugged, its "
                  "domain cannot start if the disk is a file or block device (qemu locks the "
                  "image)",
                  vm_host_name(h), disk_name, p->serial, p->nfs);
    vm_host_refresh_later(h, uuid);
    return 0;
}

static int detach_and_wait(struct vm_plug *p)
{
    if (vm_appliance_detach(p->appliance, p->attach_xml) < 0)
        return -1;
    CLEANUP_FREE char *link = NULL;
    if (asprintf(&link, "%s/disk/guestfs/%s", VM_APPLIANCE_DEVDIR, p->serial) < 0)
        return vm_error(ENOMEM, "out of memory");
    for (int waited = 0; waited < UDEV_WAIT_MS; waited += UDEV_POLL_MS) {
        guestfs_h *g = vm_appliance_handle(p->appliance);
        if (!g)
            return 0; /* the appliance is gone, and the drive with it */
        guestfs_push_error_handler(g, NULL, NULL);
        bool there = vm_appliance_dev_mounted(p->appliance)
                         ? guestfs_exists(g, link) == 1
                         : guestfs_blockdev_getsize64(g, p->device) >= 0;
        guestfs_pop_error_handler(g);
        vm_appliance_handle_release(p->appliance);
        if (!there)
            return 0;
        usleep(UDEV_POLL_MS * 1000);
    }
    return vm_error(ETIMEDOUT, "%s did not leave the appliance", p->device);
}

int vm_unplug_disk(struct vm_host *h, const char *uuid, const char *disk_name)
{
    size_t index;
    struct vm_plug *p;
    pthread_mutex_lock(&table_lock);
    for (int waited = 0;; waited += 50) {
        p = find_locked(h, uuid, disk_name, &index);
        if (!p) {
            pthread_mutex_unlock(&table_lock);
            return vm_error(ENOENT, "%s is not plugged", disk_name);
        }
        if (p->opens == 0)
            break;
        if (waited >= RELEASE_WAIT_MS) {
            int opens = p->opens;
            pthread_mutex_unlock(&table_lock);
            return vm_error(EBUSY, "cannot unplug %s: %d file(s) open under it", disk_name, opens);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&table_cond, &table_lock, &ts);
    }
    /* Out of the table first: nothing new opens while it goes. */
    plugs[index] = plugs[--nplugs];
    pthread_mutex_unlock(&table_lock);

    guestfs_h *g = vm_appliance_handle(p->appliance);
    if (g) {
        unmount_all(g, p);
        vm_appliance_handle_release(p->appliance);
    }
    int r = detach_and_wait(p);
    /* A drive that may still be attached keeps its unit: no later plug collides with it. */
    if (r == 0)
        vm_appliance_release_unit(p->appliance, p->unit, p->generation);
    job_release(p->job);
    p->job = NULL;
    appliance_put(p->appliance);
    vm_plug_unref(p);
    vm_host_refresh_later(h, uuid);
    if (r < 0)
        return vm_error(EIO, "unplug %s: its filesystems are unmounted but %s", disk_name,
                        vm_error_message());
    return 0;
}

struct domain_event {
    struct vm_host *host;
    char uuid[37];
    bool started; /* else stopped */
};

static bool affected(const struct vm_plug *p, const void *arg)
{
    const struct domain_event *e = arg;
    if (p->host != e->host || strcmp(p->uuid, e->uuid) != 0)
        return false;
    /* Stopped: its backup job and export are gone.  Started: a network disk
     * is not locked, so the guest may now change what the plug shows. */
    return e->started ? p->network && !p->job : p->job != NULL;
}

static void *drop_thread(void *arg)
{
    struct domain_event *e = arg;
    size_t n;
    struct vm_plug **dropped = take_plugs(affected, e, &n);
    for (size_t i = 0; i < n; i++) {
        struct vm_plug *p = dropped[i];
        guestfs_h *g = vm_appliance_handle(p->appliance);
        if (g) {
            unmount_all(g, p);
            vm_appliance_handle_release(p->appliance);
        }
        if (detach_and_wait(p) == 0)
            vm_appliance_release_unit(p->appliance, p->unit, p->generation);
        job_release(p->job);
        p->job = NULL;
        appliance_put(p->appliance);
        vm_notice(VM_NOTICE_WARNING, "host %s: %s of domain %s dropped: the domain %s",
                  vm_host_name(p->host), p->disk, p->uuid,
                  e->started ? "started (its network disk is not locked)" : "stopped");
        vm_plug_unref(p);
    }
    if (n)
        vm_host_refresh_later(e->host, e->uuid);
    free(dropped);
    free(e);
    return NULL;
}

void vm_plug_domain_event(struct vm_host *h, const char *uuid, bool started, bool stopped)
{
    if (!started && !stopped)
        return;
    bool any = false;
    pthread_mutex_lock(&table_lock);
    for (size_t i = 0; i < nplugs && !any; i++)
        any = plugs[i]->host == h && strcmp(plugs[i]->uuid, uuid) == 0;
    pthread_mutex_unlock(&table_lock);
    if (!any)
        return;
    /* On the event loop: what follows blocks, so it gets a thread. */
    struct domain_event *e = calloc(1, sizeof *e);
    if (!e)
        return;
    e->host = h;
    snprintf(e->uuid, sizeof e->uuid, "%s", uuid);
    e->started = started;
    if (vm_spawn_detached(drop_thread, e) < 0)
        free(e);
}

void vm_plugs_shutdown(void)
{
    pthread_mutex_lock(&table_lock);
    reaper_stop = true;
    pthread_cond_broadcast(&table_cond);
    pthread_mutex_unlock(&table_lock);
    if (reaper_running)
        pthread_join(reaper, NULL);
    /* Unmounting: the appliances go with their drives, no need to detach one by one. */
    pthread_mutex_lock(&table_lock);
    struct vm_plug **all = plugs;
    size_t nall = nplugs;
    plugs = NULL;
    nplugs = 0;
    pthread_mutex_unlock(&table_lock);
    for (size_t i = 0; i < nall; i++) {
        all[i]->dropped = true;
        job_release(all[i]->job); /* a backup job would outlive us */
        all[i]->job = NULL;
        vm_plug_unref(all[i]);
    }
    free(all);
    pthread_mutex_lock(&table_lock);
    struct appliance_entry *v = appls;
    size_t n = nappls;
    appls = NULL;
    nappls = 0;
    pthread_mutex_unlock(&table_lock);
    for (size_t i = 0; i < n; i++)
        vm_appliance_free(v[i].appliance);
    free(v);
    pthread_mutex_lock(&table_lock);
    for (size_t i = 0; i < nmemos; i++)
        memo_clear(&memos[i]);
    free(memos);
    memos = NULL;
    nmemos = 0;
    pthread_mutex_unlock(&table_lock);
}

void vm_plug_status(struct vm_host *h, FILE *f)
{
    struct vm_appliance *mine[64];
    size_t nmine = 0;
    pthread_mutex_lock(&table_lock);
    for (size_t i = 0; i < nappls && nmine < 64; i++)
        if (appls[i].host == h)
            mine[nmine++] = appls[i].appliance;
    size_t count = 0;
    for (size_t i = 0; i < nplugs; i++)
        if (plugs[i]->host == h)
            count++;
    fprintf(f, "  plugged drives: %zu\n", count);
    for (size_t i = 0; i < nplugs; i++)
        if (plugs[i]->host == h)
            fprintf(f, "    %s/%s as %s\n", plugs[i]->uuid, plugs[i]->disk, plugs[i]->serial);
    pthread_mutex_unlock(&table_lock);
    for (size_t i = 0; i < nmine; i++)
        vm_appliance_status(mine[i], f);
    if (!nmine)
        fprintf(f, "  appliance: not started\n");
}

/* ---- what a plugged disk shows -------------------------------------------- */

const char *vm_plug_info(const struct vm_plug *p)
{
    return p->info ? p->info : "";
}

int64_t vm_plug_size(const struct vm_plug *p)
{
    return p->size;
}

size_t vm_plug_fs_count(const struct vm_plug *p)
{
    return p->nfs;
}

const char *vm_plug_fs_name(const struct vm_plug *p, size_t i)
{
    return p->fs[i].name;
}

int vm_plug_fs_index(const struct vm_plug *p, const char *name)
{
    for (size_t i = 0; i < p->nfs; i++)
        if (strcmp(p->fs[i].name, name) == 0)
            return (int)i;
    return vm_error(ENOENT, "no filesystem %s on this disk", name);
}

void vm_plug_open(struct vm_plug *p)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    p->opens++;
}

static bool current_locked(const struct vm_plug *p)
{
    for (size_t i = 0; i < nplugs; i++)
        if (plugs[i] == p)
            return true;
    return false;
}

bool vm_plug_current(struct vm_plug *p)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    return current_locked(p);
}

bool vm_plug_open_current(struct vm_plug *p)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    if (!current_locked(p))
        return false;
    p->opens++;
    return true;
}

void vm_plug_close(struct vm_plug *p)
{
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&table_lock);
    p->opens--;
    pthread_cond_broadcast(&table_cond);
}

/* -1 with EIO recorded when the plug was dropped. */
static int check_dropped(const struct vm_plug *p)
{
    if (__atomic_load_n(&p->dropped, __ATOMIC_ACQUIRE))
        return vm_error(EIO, "%s was dropped (its appliance or its domain stopped)", p->disk);
    return 0;
}

/* The handle, unless the plug was dropped. */
static guestfs_h *use(struct vm_plug *p)
{
    return check_dropped(p) < 0 ? NULL : vm_appliance_handle(p->appliance);
}

/* SIZE bytes at OFFSET of file or device PATH in P's appliance, VM_MAX_PREAD
 * per round trip (NOTES.md: the fastest); short at its end.  On a reader
 * when one is free (vm_appliance_reader).  WHAT names it in an error. */
static ssize_t pread_all(struct vm_plug *p, const char *path, bool device, const char *what,
                         char *buf, size_t size, int64_t offset)
{
    int slot;
    guestfs_h *g = check_dropped(p) < 0 ? NULL : vm_appliance_reader(p->appliance, &slot);
    if (!g)
        return -1;
    size_t got = 0;
    ssize_t r = 0;
    while (got < size) {
        size_t want = size - got > VM_MAX_PREAD ? VM_MAX_PREAD : size - got;
        size_t n;
        char *data = device ? guestfs_pread_device(g, path, (int)want, offset + (int64_t)got, &n)
                            : guestfs_pread(g, path, (int)want, offset + (int64_t)got, &n);
        if (!data) {
            r = gfs_error(g, what);
            break;
        }
        memcpy(buf + got, data, n);
        free(data);
        got += n;
        if (n < want)
            break;
    }
    vm_appliance_reader_release(p->appliance, slot);
    return r < 0 ? -1 : (ssize_t)got;
}

ssize_t vm_plug_image_pread(struct vm_plug *p, char *buf, size_t size, int64_t offset)
{
    if (offset >= p->size)
        return 0;
    if ((int64_t)size > p->size - offset)
        size = (size_t)(p->size - offset);
    /* Through the disk's devtmpfs node when there is one (see NOTES.md). */
    const char *path = p->image_path ? p->image_path : p->device;
    return pread_all(p, path, !p->image_path, "read of the disk image failed", buf, size, offset);
}

static char *guest_path(const struct vm_plug *p, int fs, const char *path)
{
    char *s;
    if (asprintf(&s, "%s%s%s", p->fs[fs].mountpoint, path[0] == '/' ? "" : "/",
                 strcmp(path, "/") == 0 ? "" : path) < 0)
        return vm_error(ENOMEM, "out of memory"), NULL;
    return s;
}

static void statns_to_stat(const struct guestfs_statns *s, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_dev = (dev_t)s->st_dev; /* the appliance's: tells volumes apart, not shown */
    st->st_ino = (ino_t)s->st_ino;
    st->st_mode = (mode_t)s->st_mode;
    st->st_nlink = (nlink_t)s->st_nlink;
    st->st_uid = (uid_t)s->st_uid;
    st->st_gid = (gid_t)s->st_gid;
    st->st_rdev = (dev_t)s->st_rdev;
    st->st_size = (off_t)s->st_size;
    st->st_blksize = (blksize_t)s->st_blksize;
    st->st_blocks = (blkcnt_t)s->st_blocks;
    st->st_atim.tv_sec = s->st_atime_sec;
    st->st_atim.tv_nsec = s->st_atime_nsec;
    st->st_mtim.tv_sec = s->st_mtime_sec;
    st->st_mtim.tv_nsec = s->st_mtime_nsec;
    st->st_ctim.tv_sec = s->st_ctime_sec;
    st->st_ctim.tv_nsec = s->st_ctime_nsec;
}

int vm_guest_lstat(struct vm_plug *p, int fs, const char *path, struct stat *st)
{
    CLEANUP_FREE char *gp = guest_path(p, fs, path);
    if (!gp)
        return -1;
    guestfs_h *g = use(p);
    if (!g)
        return -1;
    /* A name that is not there is how lookups probe: the caller decides what to log. */
    guestfs_push_error_handler(g, NULL, NULL);
    struct guestfs_statns *s = guestfs_lstatns(g, gp);
    guestfs_pop_error_handler(g);
    int r = s ? 0 : gfs_error(g, path);
    if (s) {
        statns_to_stat(s, st);
        guestfs_free_statns(s);
    }
    vm_appliance_handle_release(p->appliance);
    return r;
}

bool vm_xattrs_next(const struct vm_xattrs *x, size_t *pos, const char **name, const char **value,
                    uint32_t *value_len)
{
    if (!x->data || *pos >= x->len)
        return false;
    const char *p = x->data + *pos;
    size_t nlen = strlen(p);
    uint32_t vlen;
    memcpy(&vlen, p + nlen + 1, 4);
    vlen = le32toh(vlen);
    *name = p;
    *value = p + nlen + 5;
    *value_len = vlen;
    *pos += nlen + 5 + vlen;
    return true;
}

static int xattrs_add(struct vm_xattrs *x, const char *name, const char *value, uint32_t len)
{
    size_t nlen = strlen(name);
    char *d = realloc(x->data, x->len + nlen + 5 + len);
    if (!d)
        return vm_error(ENOMEM, "out of memory");
    x->data = d;
    memcpy(d + x->len, name, nlen + 1);
    uint32_t le = htole32(len);
    memcpy(d + x->len + nlen + 1, &le, 4);
    memcpy(d + x->len + nlen + 5, value, len);
    x->len += nlen + 5 + len;
    return 0;
}

int vm_guest_xattrs(struct vm_plug *p, int fs, const char *path, struct vm_xattrs *out)
{
    memset(out, 0, sizeof *out);
    CLEANUP_FREE char *gp = guest_path(p, fs, path);
    if (!gp)
        return -1;
    guestfs_h *g = use(p);
    if (!g)
        return -1;
    guestfs_push_error_handler(g, NULL, NULL);
    struct guestfs_xattr_list *l = guestfs_lgetxattrs(g, gp);
    guestfs_pop_error_handler(g);
    vm_appliance_handle_release(p->appliance);
    /* A filesystem without xattrs (vfat) answers with an error: that is "none". */
    for (uint32_t i = 0; l && i < l->len; i++)
        xattrs_add(out, l->val[i].attrname, l->val[i].attrval, l->val[i].attrval_len);
    if (l)
        guestfs_free_xattr_list(l);
    return 0;
}

int vm_guest_statvfs(struct vm_plug *p, int fs, struct statvfs *out)
{
    guestfs_h *g = use(p);
    if (!g)
        return -1;
    struct guestfs_statvfs *s = guestfs_statvfs(g, p->fs[fs].mountpoint);
    int r = s ? 0 : gfs_error(g, "statvfs");
    if (s) {
        memset(out, 0, sizeof *out);
        out->f_bsize = (unsigned long)s->bsize;
        out->f_frsize = (unsigned long)s->frsize;
        out->f_blocks = (fsblkcnt_t)s->blocks;
        out->f_bfree = (fsblkcnt_t)s->bfree;
        out->f_bavail = (fsblkcnt_t)s->bavail;
        out->f_files = (fsfilcnt_t)s->files;
        out->f_ffree = (fsfilcnt_t)s->ffree;
        out->f_favail = (fsfilcnt_t)s->favail;
        out->f_namemax = (unsigned long)s->namemax;
        guestfs_free_statvfs(s);
    }
    vm_appliance_handle_release(p->appliance);
    return r;
}

/* A directory's names are held as one block: a name costs its length and a
 * pointer, whatever the count.  The names from BLOB, LEN bytes of
 * NUL-terminated names (taken), "." and ".." left out; NULL with ENOMEM
 * recorded. */
static struct vm_names *names_from_blob(char *blob, size_t len)
{
    struct vm_names *names = calloc(1, sizeof *names);
    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        count += blob[i] == '\0';
    if (names)
        names->v = malloc((count ? count : 1) * sizeof *names->v);
    if (!names || !names->v) {
        free(names);
        free(blob);
        return vm_error(ENOMEM, "out of memory"), NULL;
    }
    names->refs = 1;
    names->blob = blob;
    for (size_t i = 0; i < len;) {
        char *name = blob + i;
        size_t n = strlen(name);
        if (n && strcmp(name, ".") && strcmp(name, ".."))
            names->v[names->n++] = name;
        i += n + 1;
    }
    return names;
}

/* The names by readdir: one plain reply, ~1.3 ms of appliance time under
 * TCG against ~3.9 ms for ls0, whose names come as a file transfer; but
 * the reply is capped at 4 MiB.  NULL with the error recorded. */
static struct vm_names *names_by_readdir(struct vm_plug *p, const char *gp, const char *path)
{
    guestfs_h *g = use(p);
    if (!g)
        return NULL;
    /* Quiet: ls0 is asked next, and says what is wrong if anything is. */
    guestfs_push_error_handler(g, NULL, NULL);
    struct guestfs_dirent_list *d = guestfs_readdir(g, gp);
    guestfs_pop_error_handler(g);
    int r = d ? 0 : gfs_error(g, path);
    vm_appliance_handle_release(p->appliance);
    if (r < 0)
        return NULL;
    size_t len = 0;
    for (uint32_t i = 0; i < d->len; i++)
        len += strlen(d->val[i].name) + 1;
    char *blob = malloc(len ? len : 1), *at = blob;
    for (uint32_t i = 0; blob && i < d->len; i++)
        at = stpcpy(at, d->val[i].name) + 1;
    guestfs_free_dirent_list(d);
    if (!blob)
        return vm_error(ENOMEM, "out of memory"), NULL;
    return names_from_blob(blob, len);
}

/* The names by ls0, streamed into a memory file: however many. */
static struct vm_names *names_by_ls0(struct vm_plug *p, const char *gp, const char *path)
{
    int fd = memfd_create("virtmount-ls0", MFD_CLOEXEC);
    if (fd < 0)
        return vm_error(errno, "memfd_create: %s", strerror(errno)), NULL;
    guestfs_h *g = use(p);
    if (!g) {
        close(fd);
        return NULL;
    }
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    int r = guestfs_ls0(g, gp, proc) < 0 ? gfs_error(g, path) : 0;
    vm_appliance_handle_release(p->appliance);
    struct stat st;
    char *blob = NULL;
    if (r == 0 && fstat(fd, &st) < 0)
        r = vm_error(errno, "cannot read the listing of %s: %s", path, strerror(errno));
    if (r == 0 && !(blob = malloc((size_t)st.st_size + 1)))
        r = vm_error(ENOMEM, "out of memory");
    if (r == 0 && pread(fd, blob, (size_t)st.st_size, 0) != st.st_size)
        r = vm_error(EIO, "cannot read the listing of %s", path);
    close(fd);
    if (r < 0) {
        free(blob);
        return NULL;
    }
    blob[st.st_size] = '\0';
    return names_from_blob(blob, (size_t)st.st_size);
}

/* Directories up to this size (st_size: about the bytes of their entries
 * on ext4, xfs and btrfs) are read with readdir, whose reply holds them
 * easily; larger ones, and any whose readdir fails, with ls0. */
#define READDIR_MAX_SIZE (256 * 1024)

struct vm_names *vm_guest_names(struct vm_plug *p, int fs, const char *path, int64_t size)
{
    CLEANUP_FREE char *gp = guest_path(p, fs, path);
    if (!gp)
        return NULL;
    struct vm_names *names = NULL;
    if (size >= 0 && size <= READDIR_MAX_SIZE)
        names = names_by_readdir(p, gp, path);
    return names ? names : names_by_ls0(p, gp, path);
}

struct vm_names *vm_names_hold(struct vm_names *names)
{
    __atomic_add_fetch(&names->refs, 1, __ATOMIC_RELAXED);
    return names;
}

void vm_names_free(struct vm_names *names)
{
    if (!names || __atomic_sub_fetch(&names->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    free(names->v);
    free(names->blob);
    free(names);
}

/* NAMES[0..N) as the NULL-terminated list the guestfs calls take (they
 * split long lists into calls of 1000 themselves); NULL: ENOMEM recorded. */
static char **name_list(char *const *names, size_t n)
{
    char **list = calloc(n + 1, sizeof *list);
    if (!list)
        return vm_error(ENOMEM, "out of memory"), NULL;
    memcpy(list, names, n * sizeof *list);
    return list;
}

int vm_guest_lstat_list(struct vm_plug *p, int fs, const char *dir, char *const *names, size_t n,
                        struct stat *out)
{
    CLEANUP_FREE char *gp = guest_path(p, fs, dir);
    CLEANUP_FREE char **list = gp ? name_list(names, n) : NULL;
    if (!list)
        return -1;
    guestfs_h *g = use(p);
    if (!g)
        return -1;
    struct guestfs_statns_list *sl = guestfs_lstatnslist(g, gp, list);
    int r = sl ? 0 : gfs_error(g, dir);
    vm_appliance_handle_release(p->appliance);
    /* A name that is gone has st_ino -1 (it cannot be, on a plugged disk): st_mode 0. */
    for (size_t i = 0; sl && i < n; i++)
        if (i < sl->len && sl->val[i].st_ino != -1)
            statns_to_stat(&sl->val[i], &out[i]);
        else
            memset(&out[i], 0, sizeof out[i]);
    if (sl)
        guestfs_free_statns_list(sl);
    return r;
}

/* Extended attributes are not part of a listing: find, rsync -a and tar never
 * ask for them, and they cost more than the attributes themselves.  They
 * come, a directory's worth at a time, when something asks for one. */
int vm_guest_xattrs_list(struct vm_plug *p, int fs, const char *dir, char *const *names, size_t n,
                         struct vm_xattrs *out, bool *ok)
{
    memset(out, 0, n * sizeof *out);
    memset(ok, 0, n * sizeof *ok);
    CLEANUP_FREE char *gp = guest_path(p, fs, dir);
    CLEANUP_FREE char **list = gp ? name_list(names, n) : NULL;
    if (!list)
        return -1;
    guestfs_h *g = use(p);
    if (!g)
        return -1;
    guestfs_push_error_handler(g, NULL, NULL);
    struct guestfs_xattr_list *xl = guestfs_lxattrlist(g, gp, list);
    guestfs_pop_error_handler(g);
    int r = xl ? 0 : gfs_error(g, dir);
    vm_appliance_handle_release(p->appliance);
    /* The list is, per file, a header (empty name, value: the count) and
     * its attributes; a header without a value: that file's could not be
     * read (a filesystem without xattrs, vfat, answers with a count of 0). */
    size_t file = 0;
    for (uint32_t i = 0; xl && i < xl->len && file < n; file++) {
        struct guestfs_xattr *h = &xl->val[i++];
        char num[16] = "";
        memcpy(num, h->attrval, h->attrval_len < 15 ? h->attrval_len : 15);
        unsigned long nattrs = h->attrname[0] ? 0 : strtoul(num, NULL, 10);
        ok[file] = !h->attrname[0] && h->attrval_len > 0;
        for (unsigned long k = 0; k < nattrs && i < xl->len; k++, i++)
            if (xattrs_add(&out[file], xl->val[i].attrname, xl->val[i].attrval,
                           xl->val[i].attrval_len) < 0)
                r = -1;
    }
    if (xl)
        guestfs_free_xattr_list(xl);
    if (r < 0)
        for (size_t i = 0; i < n; i++) {
            free(out[i].data);
            out[i] = (struct vm_xattrs){0};
            ok[i] = false;
        }
    return r;
}

ssize_t vm_guest_pread(struct vm_plug *p, int fs, const char *path, char *buf, size_t size,
                       int64_t offset)
{
    CLEANUP_FREE char *gp = guest_path(p, fs, path);
    return gp ? pread_all(p, gp, false, path, buf, size, offset) : -1;
}

char *vm_guest_readlink(struct vm_plug *p, int fs, const char *path)
{
    CLEANUP_FREE char *gp = guest_path(p, fs, path);
    if (!gp)
        return NULL;
    guestfs_h *g = use(p);
    if (!g)
        return NULL;
    char *target = guestfs_readlink(g, gp);
    if (!target)
        gfs_error(g, path);
    vm_appliance_handle_release(p->appliance);
    return target;
}
