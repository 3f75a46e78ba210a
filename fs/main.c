/* virtmount's entry point: options, the state dir, daemonizing, logging,
 * the hosts, and the FUSE session with its multi-threaded loop.  The only
 * place that decides what is logged and where.
 */
#include "fs.h"

#include <errno.h>
#include <malloc.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "config.h"

static bool log_to_stderr = true;
static bool log_debug;
static time_t mount_time;

time_t fs_mount_time(void)
{
    return mount_time;
}

void fs_log(int priority, const char *fmt, ...)
{
    if (priority == LOG_DEBUG && !log_debug)
        return;
    va_list ap;
    va_start(ap, fmt);
    if (log_to_stderr) {
        char line[2048];
        vsnprintf(line, sizeof line, fmt, ap);
        fprintf(stderr, "virtmount: %s\n", line);
    } else {
        vsyslog(priority, fmt, ap);
    }
    va_end(ap);
}

static void lib_notice(int level, const char *message)
{
    fs_log(level == 0 ? LOG_INFO : LOG_WARNING, "%s", message);
}

/* mkdir -p for the state dir, then its absolute path (libvirt's embed root must be one). */
static char *prepare_statedir(const char *dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return vm_error(ENAMETOOLONG, "state dir path too long"), NULL;
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(path, 0755) < 0 && errno != EEXIST)
                return vm_error(errno, "cannot create %s: %s", path, strerror(errno)), NULL;
            *p = '/';
        }
    /* 0755: a system libvirtd may run the appliance's qemu as another user,
     * which must reach the appliance's files; the registry itself is 0600. */
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return vm_error(errno, "cannot create state dir %s: %s", path, strerror(errno)), NULL;
    char *abs = realpath(path, NULL);
    if (!abs)
        return vm_error(errno, "state dir %s: %s", path, strerror(errno)), NULL;
    return abs;
}

static int fail(const char *what)
{
    fprintf(stderr, "virtmount: %s%s%s\n", what ? what : "", what ? ": " : "", vm_error_message());
    return 1;
}

int main(int argc, char **argv)
{
    /* Nodes are made by FUSE's worker threads and freed by whichever
     * thread gets the kernel's FORGET: with an arena per thread, what one
     * frees another cannot reuse, and RSS overshoots the cache limit. */
    mallopt(M_ARENA_MAX, 2);
    struct options o;
    struct fuse_args args;
    if (options_parse(argc, argv, &o, &args) < 0) {
        fail(NULL);
        fuse_opt_free_args(&args);
        options_free(&o);
        return 1;
    }
    if (o.show_help || o.show_version) {
        if (o.show_help)
            options_usage(argv[0]);
        else
            printf("virtmount %s\n", PACKAGE_VERSION);
        fuse_opt_free_args(&args);
        options_free(&o);
        return 0;
    }
    log_debug = o.debug;

    int status = 1;
    struct vm_ino_registry *registry = NULL;
    struct fuse_session *se = NULL;
    struct vm_host **hosts = NULL;
    size_t nhosts = 0;
    bool mounted = false, loop_started = false;

    if (vm_config_read_file(&o.hosts, o.config ? o.config : VIRTMOUNT_CONFIG, o.config != NULL) <
        0) {
        fail(NULL);
        goto out;
    }
    char *statedir = prepare_statedir(o.statedir);
    if (!statedir) {
        fail(NULL);
        goto out;
    }
    free(o.statedir);
    o.statedir = statedir;
    vm_settings.statedir = o.statedir;
    vm_settings.accel = o.accel;
    vm_settings.max_drives = o.max_drives;
    vm_settings.appliance_idle = o.appliance_idle;
    vm_settings.appliance_eager = o.appliance_eager;
    vm_settings.appliances = o.appliances;
    vm_settings.isolate_domain = o.isolate_domain;
    vm_settings.notice = lib_notice;
    registry = vm_ino_open(o.statedir);
    if (!registry) {
        fail(NULL);
        goto out;
    }

    se = fuse_session_new(&args, &fs_ops, sizeof fs_ops, NULL);
    if (!se)
        goto out; /* libfuse printed why */
    if (fuse_set_signal_handlers(se) < 0)
        goto out;
    if (fuse_session_mount(se, o.mountpoint) < 0)
        goto out;
    mounted = true;
    mount_time = time(NULL);

    /* Detach before any thread starts: fork keeps only the calling thread. */
    if (!o.foreground) {
        log_to_stderr = false;
        openlog("virtmount", LOG_PID, LOG_DAEMON);
    }
    if (fuse_daemonize(o.foreground) < 0)
        goto out;

    /* libvirt logs warnings to stderr on its own; what matters reaches us as errors. */
    setenv("LIBVIRT_LOG_OUTPUTS", o.debug ? "3:stderr" : "4:file:/dev/null", 0);
    if (vm_event_loop_start() < 0) {
        fs_log(LOG_ERR, "%s", vm_error_message());
        goto out;
    }
    loop_started = true;

    /* Before any host starts: its first change notice looks nodes up. */
    size_t nconfigured = o.hosts.nhosts ? o.hosts.nhosts : 1;
    hosts = calloc(nconfigured, sizeof *hosts);
    if (!hosts) {
        fs_log(LOG_ERR, "out of memory");
        goto out;
    }
    inode_set_cache_limit((size_t)o.cache_mb << 20);
    inode_table_init(registry, hosts, 0);
    if (o.hosts.nhosts == 0) {
        enum vm_host_kind kind;
        char *uri = vm_host_choose_local_uri(o.statedir, &kind);
        if (!uri) {
            fs_log(LOG_ERR, "cannot set up localhost: %s", vm_error_message());
            goto out;
        }
        fs_log(LOG_NOTICE, "no host configured: localhost is %s (%s)", uri,
               kind == VM_HOST_SYSTEM ? "a libvirt daemon answers there"
                                      : "no daemon answers at qemu:///system: embedded driver");
        if ((hosts[0] = vm_host_new("localhost", uri, kind,
                                    &(struct vm_host_listener){fs_host_changed, NULL})))
            nhosts = 1;
        free(uri);
    } else {
        for (size_t i = 0; i < o.hosts.nhosts; i++) {
            hosts[i] = vm_host_new(o.hosts.hosts[i].name, o.hosts.hosts[i].uri, VM_HOST_CONFIGURED,
                                   &(struct vm_host_listener){fs_host_changed, NULL});
            if (!hosts[i])
                break;
            nhosts++;
        }
    }
    inode_table_init(registry, hosts, nhosts);
    if (nhosts == 0 || (o.hosts.nhosts && nhosts < o.hosts.nhosts)) {
        fs_log(LOG_ERR, "cannot start hosts: %s", vm_error_message());
        goto out;
    }
    /* A listing right after mount should see the domains, not "connecting". */
    /* The hosts connect in parallel: ten seconds for all of them. */
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (size_t i = 0; i < nhosts; i++) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long spent = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (spent < 10000)
            vm_host_wait_ready(hosts[i], (int)(10000 - spent));
    }
    fs_set_session(se);
    prefetch_init(fs_store_pages);
    if (o.appliance_eager)
        for (size_t i = 0; i < nhosts; i++)
            vm_plug_start_eager(hosts[i]);

    struct fuse_loop_config *loop = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(loop, 16);
    fuse_loop_cfg_set_idle_threads(loop, 4);
    /* libfuse returns the signal's number when SIGTERM or SIGINT ended the
     * loop: that is a clean unmount too. */
    status = fuse_session_loop_mt(se, loop) < 0 ? 1 : 0;
    fuse_loop_cfg_destroy(loop);
    fs_log(LOG_NOTICE, "unmounting %s", o.mountpoint);

out:
    prefetch_stop();
    fs_set_session(NULL);
    lookahead_clear();
    /* No appliance, qemu or connector outlives the mount. */
    vm_plugs_shutdown();
    for (size_t i = 0; i < nhosts; i++)
        vm_host_free(hosts[i]);
    free(hosts);
    if (loop_started)
        vm_event_loop_stop();
    inode_table_free();
    if (se) {
        if (mounted)
            fuse_session_unmount(se);
        fuse_remove_signal_handlers(se);
        fuse_session_destroy(se);
    }
    vm_ino_close(registry);
    fuse_opt_free_args(&args);
    options_free(&o);
    return status;
}
