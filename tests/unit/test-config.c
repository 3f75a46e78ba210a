/* Unit tests for lib/config.c, the list of hosts to mount: the text of
 * -o host=NAME=URI (good specs, malformed ones, illegal names, duplicates),
 * the config file syntax (comments, blank lines, whitespace, unknown
 * directives and missing or extra words, errors naming the line), and
 * reading the file itself (missing, optional, real).  No connection is ever
 * opened.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static void assert_host(const struct vm_config *c, size_t i, const char *name, const char *uri)
{
    assert_true(i < c->nhosts);
    assert_string_equal(c->hosts[i].name, name);
    assert_string_equal(c->hosts[i].uri, uri);
}

/* The config under test: a global, so that teardown frees it even when an assertion fails. */
static struct vm_config config;

static int clear_config(void **state)
{
    vm_config_clear(&config);
    return 0;
}

/* The error recorded last has ERRNUM and a message containing every string given. */
static void assert_error(int errnum, ...)
{
    assert_int_equal(vm_error_errno(), errnum);
    const char *m = vm_error_message();
    va_list ap;
    va_start(ap, errnum);
    for (const char *s; (s = va_arg(ap, const char *));)
        if (!strstr(m, s))
            fail_msg("error message '%s' lacks '%s'", m, s);
    va_end(ap);
}

/* ---- vm_config_add_host_spec ---- */

static void test_spec_good(void **state)
{
    struct vm_config *c = &config;
    assert_int_equal(vm_config_add_host_spec(c, "a=qemu:///system"), 0);
    assert_int_equal(vm_config_add_host_spec(c, "lab2=qemu+tcp://127.0.0.1:16509/system"), 0);
    /* Only the first '=' separates: the URI may hold more, and a query. */
    assert_int_equal(
        vm_config_add_host_spec(c, "far=qemu+ssh://root@far.example.org/system?keyfile=/k=1"), 0);
    assert_int_equal(vm_config_add_host_spec(c, "with space=test:///default"), 0);
    assert_int_equal(c->nhosts, 4);
    assert_host(c, 0, "a", "qemu:///system");
    assert_host(c, 1, "lab2", "qemu+tcp://127.0.0.1:16509/system");
    assert_host(c, 2, "far", "qemu+ssh://root@far.example.org/system?keyfile=/k=1");
    assert_host(c, 3, "with space", "test:///default");
    vm_config_clear(c);
    assert_int_equal(c->nhosts, 0);
    assert_null(c->hosts);
}

static void expect_spec_error(const char *spec, int errnum, const char *in_message)
{
    struct vm_config *c = &config;
    vm_config_clear(c);
    assert_int_equal(vm_config_add_host_spec(c, "first=qemu:///system"), 0);
    vm_error_clear();
    errno = 0;
    if (vm_config_add_host_spec(c, spec) != -1)
        fail_msg("host spec '%s' was accepted", spec);
    assert_int_equal(errno, errnum);
    assert_error(errnum, in_message, NULL);
    /* Nothing half-added. */
    assert_int_equal(c->nhosts, 1);
    assert_host(c, 0, "first", "qemu:///system");
    vm_config_clear(c);
}

static void test_spec_malformed(void **state)
{
    expect_spec_error("=qemu:///system", EINVAL, "NAME=URI");
    expect_spec_error("name=", EINVAL, "NAME=URI");
    expect_spec_error("noequals", EINVAL, "NAME=URI");
    expect_spec_error("", EINVAL, "NAME=URI");
    expect_spec_error("=", EINVAL, "NAME=URI");
}

static void test_spec_illegal_name(void **state)
{
    expect_spec_error(".hidden=qemu:///system", EINVAL, ".hidden");
    expect_spec_error(".=qemu:///system", EINVAL, "not a legal file name");
    expect_spec_error("..=qemu:///system", EINVAL, "not a legal file name");
    expect_spec_error("a/b=qemu:///system", EINVAL, "a/b");
    expect_spec_error("tab\there=qemu:///system", EINVAL, "not a legal file name");
}

static void test_spec_duplicate(void **state)
{
    expect_spec_error("first=qemu+tcp://other/system", EEXIST, "first");
}

static void test_add_host(void **state)
{
    struct vm_config *c = &config;
    assert_int_equal(vm_config_add_host(c, "h", "qemu:///system"), 0);
    assert_int_equal(vm_config_add_host(c, "h", "qemu:///system"), -1);
    assert_error(EEXIST, "'h'", NULL);
    assert_int_equal(vm_config_add_host(c, "g", ""), -1);
    assert_error(EINVAL, "no URI", NULL);
    assert_int_equal(vm_config_add_host(c, "g", NULL), -1);
    assert_error(EINVAL, "no URI", NULL);
    assert_int_equal(c->nhosts, 1);
    vm_config_clear(c);
    vm_config_clear(c); /* twice is harmless */
}

/* ---- vm_config_parse ---- */

static void test_parse_good(void **state)
{
    struct vm_config *c = &config;
    const char *text = "# virtmount hosts\n"
                       "\n"
                       "host localhost qemu:///system\n"
                       "   \t \n"
                       "  # an indented comment\n"
                       "\thost   lab2\t qemu+tcp://lab2.example.org:16509/system   \n"
                       "host far qemu+ssh://root@far/system?keyfile=/k # trailing comment\n"
                       "host last test:///default"; /* no final newline */
    assert_int_equal(vm_config_parse(c, text, "test.conf"), 0);
    assert_int_equal(c->nhosts, 4);
    assert_host(c, 0, "localhost", "qemu:///system");
    assert_host(c, 1, "lab2", "qemu+tcp://lab2.example.org:16509/system");
    assert_host(c, 2, "far", "qemu+ssh://root@far/system?keyfile=/k");
    assert_host(c, 3, "last", "test:///default");
    vm_config_clear(c);
}

static void test_parse_empty(void **state)
{
    struct vm_config *c = &config;
    assert_int_equal(vm_config_parse(c, "", "empty.conf"), 0);
    assert_int_equal(vm_config_parse(c, "\n\n# nothing\n", "empty.conf"), 0);
    assert_int_equal(c->nhosts, 0);
    vm_config_clear(c);
}

static void expect_parse_error(const char *text, int errnum, const char *where, const char *what)
{
    vm_config_clear(&config);
    vm_error_clear();
    assert_int_equal(vm_config_parse(&config, text, "test.conf"), -1);
    assert_error(errnum, where, what, NULL);
    vm_config_clear(&config);
}

static void test_parse_unknown_directive(void **state)
{
    expect_parse_error("# hosts\n\nhost a qemu:///system\nhots b qemu:///system\n", EINVAL,
                       "test.conf:4:", "unknown directive 'hots'");
}

static void test_parse_missing_uri(void **state)
{
    expect_parse_error("host lonely\n", EINVAL, "test.conf:1:", "expected 'host NAME URI'");
    expect_parse_error("\nhost\n", EINVAL, "test.conf:2:", "expected 'host NAME URI'");
}

static void test_parse_trailing_words(void **state)
{
    expect_parse_error("host a qemu:///system\n\n\nhost b qemu:///system extra\n", EINVAL,
                       "test.conf:4:", "expected 'host NAME URI'");
}

static void test_parse_bad_name(void **state)
{
    expect_parse_error("host .dot qemu:///system\n", EINVAL, "test.conf:1:", "'.dot'");
    expect_parse_error("host a/b qemu:///system\n", EINVAL, "test.conf:1:", "'a/b'");
}

static void test_parse_duplicate(void **state)
{
    /* The message keeps both the line and why the host was refused. */
    expect_parse_error("host a qemu:///system\n# again:\nhost a qemu+tcp://x/system\n", EEXIST,
                       "test.conf:3: ", "host 'a' is configured twice");
}

static void test_parse_adds_to_existing(void **state)
{
    struct vm_config *c = &config;
    assert_int_equal(vm_config_add_host_spec(c, "cli=qemu:///system"), 0);
    assert_int_equal(vm_config_parse(c, "host file test:///default\n", "test.conf"), 0);
    assert_int_equal(c->nhosts, 2);
    assert_host(c, 0, "cli", "qemu:///system");
    assert_host(c, 1, "file", "test:///default");
    /* A host given on the command line and in the file is a conflict. */
    assert_int_equal(vm_config_parse(c, "host cli test:///default\n", "test.conf"), -1);
    assert_error(EEXIST, "test.conf:1: ", "'cli'", NULL);
    vm_config_clear(c);
}

/* ---- vm_config_read_file ---- */

struct fixture {
    char dir[4096];
    char file[4200];
};

static int make_dir(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/virtmount-test-config-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->file, sizeof f->file, "%s/virtmount.conf", f->dir);
    *state = f;
    return 0;
}

static int remove_dir(void **state)
{
    struct fixture *f = *state;
    unlink(f->file);
    int r = rmdir(f->dir);
    free(f);
    vm_config_clear(&config);
    return r;
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "we");
    assert_non_null(fp);
    assert_true(fputs(text, fp) >= 0);
    assert_int_equal(fclose(fp), 0);
}

static void test_read_missing_file(void **state)
{
    struct fixture *f = *state;
    struct vm_config *c = &config;
    assert_int_equal(vm_config_read_file(c, f->file, false), 0);
    assert_int_equal(c->nhosts, 0);

    vm_error_clear();
    assert_int_equal(vm_config_read_file(c, f->file, true), -1);
    assert_error(ENOENT, f->file, NULL);
    assert_int_equal(c->nhosts, 0);
    vm_config_clear(c);
}

static void test_read_real_file(void **state)
{
    struct fixture *f = *state;
    write_file(f->file,
               "# test\nhost localhost qemu:///system\nhost lab2 qemu+tcp://lab2/system\n");
    struct vm_config *c = &config;
    assert_int_equal(vm_config_read_file(c, f->file, true), 0);
    assert_int_equal(c->nhosts, 2);
    assert_host(c, 0, "localhost", "qemu:///system");
    assert_host(c, 1, "lab2", "qemu+tcp://lab2/system");
    vm_config_clear(c);
}

static void test_read_empty_file(void **state)
{
    struct fixture *f = *state;
    write_file(f->file, "");
    struct vm_config *c = &config;
    assert_int_equal(vm_config_read_file(c, f->file, true), 0);
    assert_int_equal(c->nhosts, 0);
    vm_config_clear(c);
}

static void test_read_file_error_names_file_and_line(void **state)
{
    struct fixture *f = *state;
    write_file(f->file, "host a qemu:///system\nbogus\n");
    struct vm_config *c = &config;
    char where[4300];
    snprintf(where, sizeof where, "%s:2:", f->file);
    assert_int_equal(vm_config_read_file(c, f->file, false), -1);
    assert_error(EINVAL, where, "'bogus'", NULL);
    vm_config_clear(c);
}

static void test_read_large_file(void **state)
{
    /* Longer than one read buffer: lines split across reads are whole again. */
    struct fixture *f = *state;
    FILE *fp = fopen(f->file, "we");
    assert_non_null(fp);
    for (int i = 0; i < 500; i++)
        fprintf(fp, "host host%03d qemu+tcp://host%03d.example.org:16509/system\n", i, i);
    assert_int_equal(fclose(fp), 0);
    struct vm_config *c = &config;
    assert_int_equal(vm_config_read_file(c, f->file, true), 0);
    assert_int_equal(c->nhosts, 500);
    assert_host(c, 0, "host000", "qemu+tcp://host000.example.org:16509/system");
    assert_host(c, 499, "host499", "qemu+tcp://host499.example.org:16509/system");
    vm_config_clear(c);
}

static void test_read_directory(void **state)
{
    struct fixture *f = *state;
    struct vm_config *c = &config;
    assert_int_equal(vm_config_read_file(c, f->dir, false), -1);
    assert_true(vm_error_message()[0] != '\0');
    assert_int_equal(c->nhosts, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_spec_good, clear_config),
        cmocka_unit_test_teardown(test_spec_malformed, clear_config),
        cmocka_unit_test_teardown(test_spec_illegal_name, clear_config),
        cmocka_unit_test_teardown(test_spec_duplicate, clear_config),
        cmocka_unit_test_teardown(test_add_host, clear_config),
        cmocka_unit_test_teardown(test_parse_good, clear_config),
        cmocka_unit_test_teardown(test_parse_empty, clear_config),
        cmocka_unit_test_teardown(test_parse_unknown_directive, clear_config),
        cmocka_unit_test_teardown(test_parse_missing_uri, clear_config),
        cmocka_unit_test_teardown(test_parse_trailing_words, clear_config),
        cmocka_unit_test_teardown(test_parse_bad_name, clear_config),
        cmocka_unit_test_teardown(test_parse_duplicate, clear_config),
        cmocka_unit_test_teardown(test_parse_adds_to_existing, clear_config),
        cmocka_unit_test_setup_teardown(test_read_missing_file, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_read_real_file, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_read_empty_file, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_read_file_error_names_file_and_line, make_dir,
                                        remove_dir),
        cmocka_unit_test_setup_teardown(test_read_large_file, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_read_directory, make_dir, remove_dir),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
