/* The command line: virtmount's own options, and what is left for libfuse.
 * Parsing only: nothing here opens a connection or touches the state dir.
 */
#include "fs.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "config.h"

enum {
    KEY_HELP,
    KEY_VERSION,
    KEY_FOREGROUND,
    KEY_DEBUG,
    KEY_HOST,
    KEY_RO,
    KEY_DEV_SUID,
    KEY_ALLOW_OTHER,
    KEY_ACCEL,
    KEY_MAX_DRIVES,
    KEY_APPLIANCE_IDLE,
    KEY_APPLIANCE,
    KEY_APPLIANCES,
    KEY_ISOLATE,
    KEY_CACHE,
};

#define OPT(t, p)                                                                                  \
    {                                                                                              \
        t, offsetof(struct options, p), 1                                                          \
    }
static const struct fuse_opt option_spec[] = {
    OPT("config=%s", config),
    OPT("statedir=%s", statedir),
    FUSE_OPT_KEY("host=", KEY_HOST),
    FUSE_OPT_KEY("ro", KEY_RO),
    FUSE_OPT_KEY("dev", KEY_DEV_SUID),
    FUSE_OPT_KEY("suid", KEY_DEV_SUID),
    FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
    FUSE_OPT_KEY("accel=", KEY_ACCEL),
    FUSE_OPT_KEY("max_drives=", KEY_MAX_DRIVES),
    FUSE_OPT_KEY("appliance_idle=", KEY_APPLIANCE_IDLE),
    FUSE_OPT_KEY("appliance=", KEY_APPLIANCE),
    FUSE_OPT_KEY("appliances=", KEY_APPLIANCES),
    FUSE_OPT_KEY("isolate=", KEY_ISOLATE),
    FUSE_OPT_KEY("cache_mb=", KEY_CACHE),
    FUSE_OPT_KEY("-h", KEY_HELP),
    FUSE_OPT_KEY("--help", KEY_HELP),
    FUSE_OPT_KEY("-V", KEY_VERSION),
    FUSE_OPT_KEY("--version", KEY_VERSION),
    FUSE_OPT_KEY("-f", KEY_FOREGROUND),
    FUSE_OPT_KEY("-d", KEY_DEBUG),
    FUSE_OPT_KEY("debug", KEY_DEBUG),
    FUSE_OPT_END,
};

/* An unsigned number in [MIN, MAX] from the text after '=' in ARG. */
static int parse_number(struct options *o, const char *arg, unsigned min, unsigned max,
                        unsigned *out)
{
    const char *value = strchr(arg, '=') + 1;
    char *end;
    errno = 0;
    unsigned long v = strtoul(value, &end, 10);
    if (errno || end == value || *end || *value == '-' || v < min || v > max) {
        if (!o->parse_failed)
            vm_error(EINVAL, "-o %s: expected a number from %u to %u", arg, min, max);
        o->parse_failed = true;
        return 0;
    }
    *out = (unsigned)v;
    return 0;
}

static int parse_choice(struct options *o, const char *arg, const char *const *choices, int *out)
{
    const char *value = strchr(arg, '=') + 1;
    for (int i = 0; choices[i]; i++)
        if (strcmp(value, choices[i]) == 0) {
            *out = i;
            return 0;
        }
    if (!o->parse_failed) {
        char list[128] = "";
        for (int i = 0; choices[i]; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
                     choices[i]);
        vm_error(EINVAL, "-o %s: expected one of %s", arg, list);
    }
    o->parse_failed = true;
    return 0;
}

static int process(void *data, const char *arg, int key, struct fuse_args *outargs)
{
    struct options *o = data;
    static const char *const accels[] = {"auto", "kvm", "tcg", NULL};
    static const char *const appliance_modes[] = {"lazy", "eager", NULL};
    static const char *const isolations[] = {"none", "domain", NULL};
    int choice;
    switch (key) {
    case KEY_CACHE:
        return parse_number(o, arg, 1, 1 << 20, &o->cache_mb);
    case KEY_APPLIANCES:
        return parse_number(o, arg, 1, 64, &o->appliances);
    case KEY_ISOLATE:
        if (parse_choice(o, arg, isolations, &choice) == 0 && !o->parse_failed)
            o->isolate_domain = choice == 1;
        return 0;
    case KEY_ACCEL:
        if (parse_choice(o, arg, accels, &choice) == 0 && !o->parse_failed)
            o->accel = (enum vm_accel)choice;
        return 0;
    case KEY_MAX_DRIVES:
        return parse_number(o, arg, 1, 254, &o->max_drives);
    case KEY_APPLIANCE_IDLE:
        return parse_number(o, arg, 0, 365 * 24 * 3600, &o->appliance_idle);
    case KEY_APPLIANCE:
        if (parse_choice(o, arg, appliance_modes, &choice) == 0 && !o->parse_failed)
            o->appliance_eager = choice == 1;
        return 0;
    case KEY_HELP:
        o->show_help = true;
        return 0;
    case KEY_VERSION:
        o->show_version = true;
        return 0;
    case KEY_FOREGROUND:
        o->foreground = true;
        return 0;
    case KEY_DEBUG:
        o->debug = o->foreground = true;
        return 1; /* libfuse prints its own request trace */
    case KEY_HOST:
        if (!o->parse_failed && vm_config_add_host_spec(&o->hosts, arg + strlen("host=")) < 0)
            o->parse_failed = true;
        return 0;
    case KEY_RO:
        if (!o->parse_failed) {
            vm_error(EINVAL, "-o ro is not supported: virtmount is read-only by default, and a "
                             "read-only kernel mount would refuse mkdir in disks/ (plugging)");
            o->parse_failed = true;
        }
        return 0;
    case KEY_DEV_SUID:
        if (!o->parse_failed) {
            vm_error(EINVAL,
                     "-o %s is not supported: a guest's device nodes and setuid files "
                     "must not act on this machine (virtmount mounts nodev,nosuid)",
                     arg);
            o->parse_failed = true;
        }
        return 0;
    case KEY_ALLOW_OTHER:
        o->allow_other = true;
        return 1;
    case FUSE_OPT_KEY_NONOPT:
        if (!o->mountpoint) {
            o->mountpoint = strdup(arg);
            return 0;
        }
        if (!o->parse_failed) {
            vm_error(EINVAL, "unexpected argument '%s' (one mountpoint only)", arg);
            o->parse_failed = true;
        }
        return 0;
    default:
        return 1;
    }
}

int options_parse(int argc, char **argv, struct options *o, struct fuse_args *fuse_args)
{
    memset(o, 0, sizeof *o);
    o->accel = VM_ACCEL_AUTO;
    o->max_drives = 254;
    o->appliance_idle = 300;
    o->appliances = 1;
    o->cache_mb = 256;
    *fuse_args = (struct fuse_args)FUSE_ARGS_INIT(argc, argv);
    if (fuse_opt_parse(fuse_args, o, option_spec, process) < 0) {
        if (!o->parse_failed)
            vm_error(EINVAL, "invalid options");
        return -1;
    }
    if (o->parse_failed)
        return -1;
    if (o->show_help || o->show_version)
        return 0;
    if (!o->mountpoint)
        return vm_error(EINVAL, "no mountpoint given (see --help)");
    if (!o->statedir && !(o->statedir = strdup(VIRTMOUNT_STATEDIR)))
        return vm_error(ENOMEM, "out of memory");
    if (fuse_opt_add_arg(fuse_args, "-osubtype=virtmount,fsname=virtmount,nodev,nosuid") < 0 ||
        (o->allow_other && fuse_opt_add_arg(fuse_args, "-odefault_permissions") < 0))
        return vm_error(ENOMEM, "out of memory");
    return 0;
}

void options_free(struct options *o)
{
    free(o->mountpoint);
    free(o->config);
    free(o->statedir);
    vm_config_clear(&o->hosts);
}

void options_usage(const char *progname)
{
    printf("usage: %s [options] MOUNTPOINT\n"
           "\n"
           "Shows the libvirt guests of one or more hosts, and their disks, as files.\n"
           "\n"
           "options:\n"
           "    -h, --help             print this help and exit\n"
           "    -V, --version          print the version and exit\n"
           "    -f                     stay in the foreground, log to stderr\n"
           "    -d                     debug: foreground, and trace every request\n"
           "    -o opt[,opt...]        mount options:\n"
           "\n"
           "    -o host=NAME=URI       show the libvirt host at URI as NAME (repeatable)\n"
           "    -o config=FILE         read hosts from FILE (default %s)\n"
           "    -o statedir=DIR        keep state in DIR (default %s)\n"
           "    -o allow_other         let other users in (with default_permissions)\n"
           "    -o accel=auto|kvm|tcg  how appliances run (default auto: KVM where it works)\n"
           "    -o max_drives=N        drives per appliance, 1 to 254 (default 254)\n"
           "    -o appliance_idle=SECONDS\n"
           "                           stop an appliance with nothing plugged after this long\n"
           "                           (default 300; 0: keep it until unmount)\n"
           "    -o appliance=lazy|eager\n"
           "                           boot each host's appliance at the first plug (lazy,\n"
           "                           the default) or at mount (eager)\n"
           "    -o appliances=N        up to N appliances per host share the drives, least\n"
           "                           loaded first, so they are read in parallel (default 1)\n"
           "    -o isolate=none|domain each domain's drives in an appliance of its own\n"
           "                           (default none)\n"
           "    -o cache_mb=N          memory for what is known of guest files, in MiB\n"
           "                           (default 256); past it the coldest are forgotten\n"
           "\n"
           "With no host configured, localhost is qemu:///system when a libvirt daemon\n"
           "answers there, else libvirt's embedded driver rooted in STATEDIR/embed.\n"
           "See virtmount(1).\n",
           progname, VIRTMOUNT_CONFIG, VIRTMOUNT_STATEDIR);
}
