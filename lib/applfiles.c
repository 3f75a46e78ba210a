/* Where everything the appliance domain uses comes from: the fixed
 * appliance (kernel, initrd, root) built once per generation into the state
 * dir by appliance/virtmount-build-appliance, the root filesystem's UUID for
 * the kernel command line, and the helper programs (connector, recipe).
 *
 * A generation is named by a hash of what the appliance is made of
 * (libguestfs's supermin.d, the kernels in /boot, our recipe): when any of
 * them changes, a new one is built beside the old, so a running appliance
 * never has its files changed under it.  This is the one module to teach to
 * ship these files to a remote host.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <guestfs.h>

#include "cleanup.h"
#include "config.h"

extern char **environ;

static uint64_t fnv(uint64_t h, const void *data, size_t len)
{
    for (const unsigned char *p = data; len--; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static uint64_t hash_stat_of(uint64_t h, const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0) {
        h = fnv(h, path, strlen(path));
        h = fnv(h, &st.st_size, sizeof st.st_size);
        h = fnv(h, &st.st_mtime, sizeof st.st_mtime);
    }
    return h;
}

static uint64_t hash_dir(uint64_t h, const char *dir, const char *prefix)
{
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        if (strncmp(names[i]->d_name, prefix, strlen(prefix)) == 0) {
            char path[PATH_MAX];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
            h = hash_stat_of(h, path);
        }
        free(names[i]);
    }
    if (n >= 0)
        free(names);
    return h;
}

char *vm_helper_path(const char *name)
{
    /* In a build tree, the helpers sit in ../appliance beside fs/virtmount. */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *path;
        if (asprintf(&path, "%s/../appliance/%s", dirname(exe), name) < 0)
            return vm_error(ENOMEM, "out of memory"), NULL;
        if (access(path, X_OK) == 0)
            return path;
        free(path);
    }
    char *path;
    if (asprintf(&path, "%s/%s", VIRTMOUNT_LIBEXECDIR, name) < 0)
        return vm_error(ENOMEM, "out of memory"), NULL;
    if (access(path, X_OK) < 0) {
        vm_error(EIO, "helper program %s not found (is virtmount installed?)", path);
        free(path);
        return NULL;
    }
    return path;
}

/* The UUID of the ext2 filesystem in ROOT, read from its superblock. */
static char *root_uuid(const char *root)
{
    int fd = open(root, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vm_error(errno, "cannot open %s: %s", root, strerror(errno)), NULL;
    unsigned char sb[1024];
    ssize_t n = pread(fd, sb, sizeof sb, 1024);
    close(fd);
    if (n != (ssize_t)sizeof sb || sb[0x38] != 0x53 || sb[0x39] != 0xef)
        return vm_error(EINVAL, "%s is not an ext2 filesystem", root), NULL;
    const unsigned char *u = sb + 0x68;
    char *s;
    if (asprintf(&s, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
                 u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
                 u[14], u[15]) < 0)
        return vm_error(ENOMEM, "out of memory"), NULL;
    return s;
}

static int run_recipe(const char *outdir, char **error_text)
{
    CLEANUP_FREE char *recipe = vm_helper_path("virtmount-build-appliance");
    if (!recipe)
        return -1;
    CLEANUP_FREE char *log = NULL;
    if (asprintf(&log, "%s.log", outdir) < 0)
        return vm_error(ENOMEM, "out of memory");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    char *argv[] = {recipe, (char *)outdir, NULL};
    pid_t pid;
    int e = posix_spawn(&pid, recipe, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e)
        return vm_error(e, "cannot run %s: %s", recipe, strerror(e));
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        unlink(log);
        return 0;
    }
    /* The last line of the recipe's output says why. */
    char tail[512] = "";
    FILE *f = fopen(log, "re");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (line[0] != '\n')
                snprintf(tail, sizeof tail, "%s", line);
        fclose(f);
    }
    tail[strcspn(tail, "\n")] = '\0';
    *error_text = strdup(tail);
    return vm_error(EIO, "building the appliance failed: %s (log: %s)", tail, log);
}

int vm_appliance_files_get(struct vm_appliance_files *out)
{
    const char *statedir = vm_settings.statedir;
    uint64_t h = 14695981039346656037ULL;
    const char *v = PACKAGE_VERSION;
    h = fnv(h, v, strlen(v));
    h = hash_dir(h, "/usr/lib/x86_64-linux-gnu/guestfs/supermin.d", "");
    h = hash_dir(h, "/boot", "vmlinuz-");
    CLEANUP_FREE char *recipe = vm_helper_path("virtmount-build-appliance");
    if (recipe)
        h = hash_stat_of(h, recipe);

    CLEANUP_FREE char *base = NULL, *dir = NULL, *lockpath = NULL, *root = NULL;
    if (asprintf(&base, "%s/appliance", statedir) < 0 ||
        asprintf(&dir, "%s/%016llx", base, (unsigned long long)h) < 0 ||
        asprintf(&lockpath, "%s/lock", base) < 0 || asprintf(&root, "%s/root", dir) < 0)
        return vm_error(ENOMEM, "out of memory");
    /* World-traversable: a system libvirtd may run qemu as another user. */
    if (mkdir(base, 0755) < 0 && errno != EEXIST)
        return vm_error(errno, "cannot create %s: %s", base, strerror(errno));

    /* One builder at a time, across threads and processes. */
    int lock = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0)
        return vm_error(errno, "cannot open %s: %s", lockpath, strerror(errno));
    flock(lock, LOCK_EX);
    int r = 0;
    if (access(root, R_OK) < 0) {
        CLEANUP_FREE char *tmp = NULL, *cmd = NULL, *err = NULL;
        if (asprintf(&tmp, "%s.tmp", dir) < 0) {
            r = vm_error(ENOMEM, "out of memory");
        } else {
            if (asprintf(&cmd, "rm -rf '%s'", tmp) > 0 && system(cmd) != 0) {
                /* nothing to remove */
            }
            r = run_recipe(tmp, &err);
            if (r == 0 && rename(tmp, dir) < 0)
                r = vm_error(errno, "cannot rename %s: %s", tmp, strerror(errno));
        }
    }
    close(lock);
    if (r < 0)
        return -1;

    memset(out, 0, sizeof *out);
    if (asprintf(&out->dir, "%s", dir) < 0 || asprintf(&out->kernel, "%s/kernel", dir) < 0 ||
        asprintf(&out->initrd, "%s/initrd", dir) < 0 || asprintf(&out->root, "%s/root", dir) < 0) {
        vm_appliance_files_clear(out);
        return vm_error(ENOMEM, "out of memory");
    }
    out->root_uuid = root_uuid(out->root);
    if (!out->root_uuid) {
        vm_appliance_files_clear(out);
        return -1;
    }
    return 0;
}

void vm_appliance_files_clear(struct vm_appliance_files *f)
{
    free(f->dir);
    free(f->kernel);
    free(f->initrd);
    free(f->root);
    free(f->root_uuid);
    memset(f, 0, sizeof *f);
}

void vm_appliance_files_forget_overlay(const struct vm_appliance_files *f, const char *name)
{
    /* libvirt writes a <transient/> disk's overlay as ROOT.TRANSIENT-DOMAIN
     * and refuses to start while one exists: a killed run may have left it. */
    CLEANUP_FREE char *overlay = NULL;
    if (asprintf(&overlay, "%s.TRANSIENT-%s", f->root, name) > 0)
        unlink(overlay);
}

/* ---- shipping the appliance to a remote host ---------------------------- */

#define POOL_NAME "virtmount"
#define POOL_PATH "/var/lib/libvirt/virtmount"

struct source {
    int fd;
};

static int source_read(virStreamPtr st, char *data, size_t nbytes, void *opaque)
{
    struct source *s = opaque;
    return (int)read(s->fd, data, nbytes);
}

/* Where the next hole or data run starts: the root is 4 GiB and mostly holes. */
static int source_hole(virStreamPtr st, int *in_data, long long *length, void *opaque)
{
    struct source *s = opaque;
    off_t cur = lseek(s->fd, 0, SEEK_CUR);
    off_t data = lseek(s->fd, cur, SEEK_DATA);
    if (data < 0 && errno == ENXIO) { /* a hole to the end */
        *in_data = 0;
        *length = lseek(s->fd, 0, SEEK_END) - cur;
        lseek(s->fd, cur, SEEK_SET);
        return 0;
    }
    if (data < 0)
        return -1;
    if (data > cur) {
        *in_data = 0;
        *length = data - cur;
    } else {
        off_t hole = lseek(s->fd, cur, SEEK_HOLE);
        if (hole < 0)
            return -1;
        *in_data = 1;
        *length = hole - cur;
    }
    lseek(s->fd, cur, SEEK_SET);
    return 0;
}

static int source_skip(virStreamPtr st, long long length, void *opaque)
{
    struct source *s = opaque;
    return lseek(s->fd, length, SEEK_CUR) < 0 ? -1 : 0;
}

static virStoragePoolPtr our_pool(virConnectPtr conn)
{
    virStoragePoolPtr pool = virStoragePoolLookupByName(conn, POOL_NAME);
    if (!pool) {
        const char *xml = "<pool type='dir'><name>" POOL_NAME "</name>"
                          "<target><path>" POOL_PATH "</path></target></pool>";
        pool = virStoragePoolDefineXML(conn, xml, 0);
        if (!pool)
            return vm_error_libvirt(EIO, "cannot define storage pool " POOL_NAME), NULL;
        if (virStoragePoolBuild(pool, 0) < 0) {
            vm_error_libvirt(EIO, "cannot build storage pool " POOL_NAME " at " POOL_PATH);
            virStoragePoolFree(pool);
            return NULL;
        }
        virStoragePoolSetAutostart(pool, 1);
    }
    if (virStoragePoolIsActive(pool) != 1 && virStoragePoolCreate(pool, 0) < 0) {
        vm_error_libvirt(EIO, "cannot start storage pool " POOL_NAME);
        virStoragePoolFree(pool);
        return NULL;
    }
    virStoragePoolRefresh(pool, 0);
    return pool;
}

static int upload(virConnectPtr conn, virStoragePoolPtr pool, const char *name, const char *local)
{
    int fd = open(local, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vm_error(errno, "cannot open %s: %s", local, strerror(errno));
    struct stat st;
    fstat(fd, &st);
    /* A partial upload of an earlier run goes first. */
    virStorageVolPtr old = virStorageVolLookupByName(pool, name);
    if (old) {
        virStorageVolDelete(old, 0);
        virStorageVolFree(old);
    }
    CLEANUP_FREE char *xml = NULL;
    if (asprintf(&xml,
                 "<volume><name>%s</name><capacity unit='bytes'>%lld</capacity>"
                 "<allocation>0</allocation><target><format type='raw'/></target></volume>",
                 name, (long long)st.st_size) < 0) {
        close(fd);
        return vm_error(ENOMEM, "out of memory");
    }
    virStorageVolPtr vol = virStorageVolCreateXML(pool, xml, 0);
    virStreamPtr stream = vol ? virStreamNew(conn, 0) : NULL;
    struct source src = {fd};
    int r = -1;
    if (!vol)
        vm_error_libvirt(EIO, "cannot create volume %s", name);
    else if (!stream)
        vm_error_libvirt(EIO, "cannot create a stream");
    else if (virStorageVolUpload(vol, stream, 0, (unsigned long long)st.st_size,
                                 VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM) < 0)
        vm_error_libvirt(EIO, "cannot upload %s", name);
    else if (virStreamSparseSendAll(stream, source_read, source_hole, source_skip, &src) < 0) {
        vm_error_libvirt(EIO, "upload of %s failed", name);
        virStreamAbort(stream);
    } else if (virStreamFinish(stream) < 0)
        vm_error_libvirt(EIO, "upload of %s failed", name);
    else
        r = 0;
    if (stream)
        virStreamFree(stream);
    if (vol) {
        if (r < 0)
            virStorageVolDelete(vol, 0);
        virStorageVolFree(vol);
    }
    close(fd);
    return r;
}

static char *volume_path(virStoragePoolPtr pool, const char *name)
{
    virStorageVolPtr vol = virStorageVolLookupByName(pool, name);
    if (!vol)
        return NULL;
    char *path = virStorageVolGetPath(vol);
    virStorageVolFree(vol);
    return path;
}

int vm_appliance_files_ship(virConnectPtr conn, const struct vm_appliance_files *local,
                            const char *domain_name, struct vm_appliance_files *remote)
{
    memset(remote, 0, sizeof *remote);
    const char *generation = strrchr(local->dir, '/') + 1;
    virStoragePoolPtr pool = our_pool(conn);
    if (!pool)
        return -1;
    static const char *const parts[] = {"kernel", "initrd", "root"};
    const char *paths[] = {local->kernel, local->initrd, local->root};
    char *names[3] = {NULL}, *done = NULL;
    int r = 0;
    for (int i = 0; i < 3 && r == 0; i++)
        if (asprintf(&names[i], "%s-%s", generation, parts[i]) < 0)
            r = vm_error(ENOMEM, "out of memory");
    if (r == 0 && asprintf(&done, "%s-complete", generation) < 0)
        r = vm_error(ENOMEM, "out of memory");
    /* Once per generation: a marker volume says the three arrived whole. */
    virStorageVolPtr marker = r == 0 ? virStorageVolLookupByName(pool, done) : NULL;
    if (marker) {
        virStorageVolFree(marker);
    } else if (r == 0) {
        CLEANUP_FREE char *uri = virConnectGetURI(conn);
        vm_notice(VM_NOTICE_INFO, "shipping the appliance (generation %s) to %s", generation,
                  uri ? uri : "the remote host");
        for (int i = 0; i < 3 && r == 0; i++)
            r = upload(conn, pool, names[i], paths[i]);
        if (r == 0) {
            CLEANUP_FREE char *xml = NULL;
            if (asprintf(&xml, "<volume><name>%s</name><capacity>0</capacity></volume>", done) < 0)
                r = vm_error(ENOMEM, "out of memory");
            virStorageVolPtr m = r == 0 ? virStorageVolCreateXML(pool, xml, 0) : NULL;
            if (m)
                virStorageVolFree(m);
        }
    }
    if (r == 0) {
        /* libvirt refuses to start while a killed run's transient overlay is there. */
        CLEANUP_FREE char *overlay = NULL;
        if (asprintf(&overlay, "%s.TRANSIENT-%s", names[2], domain_name) > 0) {
            virStorageVolPtr o = virStorageVolLookupByName(pool, overlay);
            if (o) {
                virStorageVolDelete(o, 0);
                virStorageVolFree(o);
            }
        }
        remote->kernel = volume_path(pool, names[0]);
        remote->initrd = volume_path(pool, names[1]);
        remote->root = volume_path(pool, names[2]);
        remote->root_uuid = strdup(local->root_uuid);
        remote->dir = strdup(local->dir);
        if (!remote->kernel || !remote->initrd || !remote->root || !remote->root_uuid ||
            !remote->dir) {
            vm_error_libvirt(EIO, "the shipped appliance's volumes cannot be found");
            vm_appliance_files_clear(remote);
            r = -1;
        }
    }
    for (int i = 0; i < 3; i++)
        free(names[i]);
    free(done);
    virStoragePoolFree(pool);
    return r;
}
