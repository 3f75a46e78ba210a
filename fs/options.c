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
    KEY_ALLOW_OTHER,
};

#define OPT(t, p) {t, offsetof(struct options, p), 1}
static const struct fuse_opt option_spec[] = {
    OPT("config=%s", config),
    OPT("statedir=%s", statedir),
    FUSE_OPT_KEY("host=", KEY_HOST),
    FUSE_OPT_KEY("ro", KEY_RO),
    FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
    FUSE_OPT_KEY("-h", KEY_HELP),
    FUSE_OPT_KEY("--help", KEY_HELP),
    FUSE_OPT_KEY("-V", KEY_VERSION),
    FUSE_OPT_KEY("--version", KEY_VERSION),
    FUSE_OPT_KEY("-f", KEY_FOREGROUND),
    FUSE_OPT_KEY("-d", KEY_DEBUG),
    FUSE_OPT_KEY("debug", KEY_DEBUG),
    FUSE_OPT_END,
};

static int process(void *data, const char *arg, int key, struct fuse_args *outargs)
{
    struct options *o = data;
    switch (key) {
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
    if (fuse_opt_add_arg(fuse_args, "-osubtype=virtmount,fsname=virtmount") < 0 ||
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
           "\n"
           "With no host configured, localhost is qemu:///system when a libvirt daemon\n"
           "answers there, else libvirt's embedded driver rooted in STATEDIR/embed.\n"
           "See virtmount(1).\n",
           progname, VIRTMOUNT_CONFIG, VIRTMOUNT_STATEDIR);
}
