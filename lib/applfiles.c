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
    if (asprintf(&s,
                 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
                 u[12], u[13], u[14], u[15]) < 0)
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
        asprintf(&out->initrd, "%s/initrd", dir) < 0 ||
        asprintf(&out->root, "%s/root", dir) < 0) {
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
