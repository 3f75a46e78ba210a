/* Unit tests for fs/options.c, the command line: virtmount's own options
 * (-f, -d, --help, --version, -o host=, statedir=, config=, allow_other),
 * what it refuses (-o ro, no mountpoint, two mountpoints, a bad host), and
 * what it leaves in fuse_args for libfuse (unknown options, subtype, and
 * default_permissions with allow_other).  fs/options.c is compiled into this
 * program as is; nothing is mounted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "fs.h"

#define ARGV(...)  ((char *[]){"virtmount", __VA_ARGS__, NULL})
#define ARGC(argv) ((int)(sizeof(argv) / sizeof(char *)) - 1)

/* options_parse of "virtmount" and the arguments given, into o and args (below). */
#define PARSE(...) options_parse(ARGC(ARGV(__VA_ARGS__)), ARGV(__VA_ARGS__), &o, &args)

/* What a test parses into: globals, so that teardown frees them even when an assertion fails. */
static struct options o;
static struct fuse_args args;

static void cleanup(struct options *opts, struct fuse_args *fargs)
{
    fuse_opt_free_args(fargs);
    options_free(opts);
    memset(opts, 0, sizeof *opts);
}

static int teardown(void **state)
{
    cleanup(&o, &args);
    return 0;
}

/* True when ARG is one of FA's arguments. */
static bool has_arg(const struct fuse_args *fa, const char *arg)
{
    for (int i = 0; i < fa->argc; i++)
        if (strcmp(fa->argv[i], arg) == 0)
            return true;
    return false;
}

/* True when OPT is in one of FA's -o lists ("-o a,b" or "-oa,b"). */
static bool has_mount_option(const struct fuse_args *fa, const char *opt)
{
    for (int i = 1; i < fa->argc; i++) {
        const char *list;
        if (strcmp(fa->argv[i], "-o") == 0 && i + 1 < fa->argc)
            list = fa->argv[++i];
        else if (strncmp(fa->argv[i], "-o", 2) == 0)
            list = fa->argv[i] + 2;
        else
            continue;
        size_t len = strlen(opt);
        for (const char *p = list; p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
            if (strncmp(p, opt, len) == 0 && (p[len] == ',' || p[len] == '\0'))
                return true;
    }
    return false;
}

static void expect_failure(int r, int errnum, const char *in_message)
{
    assert_int_equal(r, -1);
    assert_int_equal(vm_error_errno(), errnum);
    if (!strstr(vm_error_message(), in_message))
        fail_msg("error message '%s' lacks '%s'", vm_error_message(), in_message);
    cleanup(&o, &args);
}

static void test_mountpoint_only(void **state)
{
    assert_int_equal(PARSE("/mnt/virt"), 0);
    assert_string_equal(o.mountpoint, "/mnt/virt");
    assert_string_equal(o.statedir, VIRTMOUNT_STATEDIR);
    assert_null(o.config);
    assert_int_equal(o.hosts.nhosts, 0);
    assert_false(o.foreground);
    assert_false(o.debug);
    assert_false(o.allow_other);
    assert_false(o.show_help);
    assert_false(o.show_version);
    /* The mountpoint is ours, not libfuse's; the subtype is always set. */
    assert_string_equal(args.argv[0], "virtmount");
    assert_false(has_arg(&args, "/mnt/virt"));
    assert_true(has_mount_option(&args, "subtype=virtmount"));
    assert_true(has_mount_option(&args, "fsname=virtmount"));
    assert_false(has_mount_option(&args, "default_permissions"));
    cleanup(&o, &args);
}

/* A guest's device nodes and setuid files never act on this machine:
 * nodev and nosuid are always given, dev and suid refused. */
static void test_nodev_nosuid(void **state)
{
    assert_int_equal(PARSE("/mnt/virt"), 0);
    assert_true(has_mount_option(&args, "nodev"));
    assert_true(has_mount_option(&args, "nosuid"));
    cleanup(&o, &args);
    assert_int_equal(PARSE("-o", "dev", "/mnt/virt"), -1);
    assert_int_equal(vm_error_errno(), EINVAL);
    assert_non_null(strstr(vm_error_message(), "-o dev is not supported"));
    cleanup(&o, &args);
    assert_int_equal(PARSE("-o", "allow_other,suid", "/mnt/virt"), -1);
    assert_non_null(strstr(vm_error_message(), "-o suid is not supported"));
    cleanup(&o, &args);
}

static void test_foreground(void **state)
{
    assert_int_equal(PARSE("-f", "/mnt/virt"), 0);
    assert_true(o.foreground);
    assert_false(o.debug);
    assert_string_equal(o.mountpoint, "/mnt/virt");
    assert_false(has_arg(&args, "-f"));
    cleanup(&o, &args);
}

static void test_debug(void **state)
{
    assert_int_equal(PARSE("/mnt/virt", "-d"), 0);
    assert_true(o.debug);
    assert_true(o.foreground);
    /* libfuse traces requests with -d. */
    assert_true(has_arg(&args, "-d"));
    cleanup(&o, &args);

    assert_int_equal(PARSE("-o", "debug", "/mnt/virt"), 0);
    assert_true(o.debug);
    assert_true(o.foreground);
    assert_true(has_mount_option(&args, "debug"));
    cleanup(&o, &args);
}

static void test_help(void **state)
{
    char *spellings[] = {"--help", "-h"};
    for (size_t i = 0; i < 2; i++) {
        /* No mountpoint needed. */
        assert_int_equal(PARSE(spellings[i]), 0);
        assert_true(o.show_help);
        assert_false(o.show_version);
        assert_null(o.mountpoint);
        cleanup(&o, &args);
    }
}

static void test_version(void **state)
{
    char *spellings[] = {"--version", "-V"};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(PARSE(spellings[i]), 0);
        assert_true(o.show_version);
        assert_false(o.show_help);
        cleanup(&o, &args);
    }
}

static void test_hosts(void **state)
{
    assert_int_equal(PARSE("-o", "host=a=qemu:///system,host=b=qemu+tcp://127.0.0.1:16509/system",
                           "-o", "host=c=qemu+ssh://root@c/system?keyfile=/k", "/mnt/virt"),
                     0);
    assert_int_equal(o.hosts.nhosts, 3);
    assert_string_equal(o.hosts.hosts[0].name, "a");
    assert_string_equal(o.hosts.hosts[0].uri, "qemu:///system");
    assert_string_equal(o.hosts.hosts[1].name, "b");
    assert_string_equal(o.hosts.hosts[1].uri, "qemu+tcp://127.0.0.1:16509/system");
    assert_string_equal(o.hosts.hosts[2].name, "c");
    assert_string_equal(o.hosts.hosts[2].uri, "qemu+ssh://root@c/system?keyfile=/k");
    /* Ours only: libfuse would refuse an unknown host= at mount. */
    for (int i = 0; i < args.argc; i++)
        assert_null(strstr(args.argv[i], "host="));
    cleanup(&o, &args);
}

static void test_statedir_and_config(void **state)
{
    assert_int_equal(PARSE("-o", "statedir=/x,config=/y", "/mnt/virt"), 0);
    assert_string_equal(o.statedir, "/x");
    assert_string_equal(o.config, "/y");
    assert_false(has_mount_option(&args, "statedir=/x"));
    assert_false(has_mount_option(&args, "config=/y"));
    cleanup(&o, &args);

    /* Given twice, the last wins (and the first is not leaked). */
    assert_int_equal(PARSE("-o", "statedir=/x", "-o", "statedir=/z", "/mnt/virt"), 0);
    assert_string_equal(o.statedir, "/z");
    cleanup(&o, &args);
}

static void test_allow_other(void **state)
{
    assert_int_equal(PARSE("-o", "allow_other", "/mnt/virt"), 0);
    assert_true(o.allow_other);
    /* libfuse still needs allow_other; the kernel checks permissions for us. */
    assert_true(has_mount_option(&args, "allow_other"));
    assert_true(has_mount_option(&args, "default_permissions"));
    cleanup(&o, &args);
}

static void test_unknown_options_left_for_libfuse(void **state)
{
    assert_int_equal(PARSE("-o", "max_read=131072,host=a=test:///default,clone_fd", "/mnt/virt",
                           "--unknown-flag"),
                     0);
    assert_true(has_mount_option(&args, "max_read=131072"));
    assert_true(has_mount_option(&args, "clone_fd"));
    assert_true(has_arg(&args, "--unknown-flag"));
    assert_int_equal(o.hosts.nhosts, 1);
    cleanup(&o, &args);
}

static void test_ro_refused(void **state)
{
    int r = PARSE("-o", "ro", "/mnt/virt");
    expect_failure(r, EINVAL, "read-only");
    r = PARSE("-o", "allow_other,ro", "/mnt/virt");
    expect_failure(r, EINVAL, "-o ro");
}

static void test_no_mountpoint(void **state)
{
    int r = PARSE("-f");
    expect_failure(r, EINVAL, "mountpoint");
    char *only_name[] = {"virtmount", NULL};
    r = options_parse(1, only_name, &o, &args);
    expect_failure(r, EINVAL, "mountpoint");
}

static void test_two_mountpoints(void **state)
{
    int r = PARSE("/mnt/a", "/mnt/b");
    expect_failure(r, EINVAL, "/mnt/b");
}

static void test_bad_host(void **state)
{
    int r = PARSE("-o", "host=noequals", "/mnt/virt");
    expect_failure(r, EINVAL, "NAME=URI");
    r = PARSE("-o", "host=.x=qemu:///system", "/mnt/virt");
    expect_failure(r, EINVAL, ".x");
    r = PARSE("-o", "host=a=qemu:///system,host=a=test:///default", "/mnt/virt");
    expect_failure(r, EEXIST, "'a'");
}

static void test_first_error_kept(void **state)
{
    /* Several mistakes: the message is about the first. */
    int r = PARSE("-o", "host=bad,ro", "/mnt/a", "/mnt/b");
    expect_failure(r, EINVAL, "host=bad");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_mountpoint_only, teardown),
        cmocka_unit_test_teardown(test_nodev_nosuid, teardown),
        cmocka_unit_test_teardown(test_foreground, teardown),
        cmocka_unit_test_teardown(test_debug, teardown),
        cmocka_unit_test_teardown(test_help, teardown),
        cmocka_unit_test_teardown(test_version, teardown),
        cmocka_unit_test_teardown(test_hosts, teardown),
        cmocka_unit_test_teardown(test_statedir_and_config, teardown),
        cmocka_unit_test_teardown(test_allow_other, teardown),
        cmocka_unit_test_teardown(test_unknown_options_left_for_libfuse, teardown),
        cmocka_unit_test_teardown(test_ro_refused, teardown),
        cmocka_unit_test_teardown(test_no_mountpoint, teardown),
        cmocka_unit_test_teardown(test_two_mountpoints, teardown),
        cmocka_unit_test_teardown(test_bad_host, teardown),
        cmocka_unit_test_teardown(test_first_error_kept, teardown),
    };
    return cmocka_run_group_tests_name("options", tests, NULL, NULL);
}
