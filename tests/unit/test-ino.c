/* Unit tests for lib/ino.c, the inode registry: numbers start at 2 and are
 * never 0 or 1, one key always gets one number and two keys two numbers,
 * keys are arbitrary bytes, and the numbers survive close and reopen of the
 * state dir, a torn last record (cut off, without reusing a surviving
 * number), and growth to many keys.  A second open of a locked registry and
 * a file that is not a registry are refused.  Each test works in a fresh
 * temporary directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* The registry under test: a global, so that teardown closes it even when an assertion fails. */
static struct vm_ino_registry *r;

static void close_registry(void)
{
    vm_ino_close(r);
    r = NULL;
}

static int teardown(void **state)
{
    close_registry();
    return 0;
}

struct fixture {
    char dir[4096];
    char file[4200];
};

static int make_dir(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/virtmount-test-ino-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->file, sizeof f->file, "%s/inodes", f->dir);
    *state = f;
    return 0;
}

static int remove_dir(void **state)
{
    struct fixture *f = *state;
    close_registry();
    unlink(f->file);
    int rc = rmdir(f->dir);
    free(f);
    return rc; /* a file left behind fails the test */
}

static uint64_t get_str(const char *key)
{
    return vm_ino_get(r, key, strlen(key));
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static void test_numbers_start_at_2(void **state)
{
    struct fixture *f = *state;
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    assert_int_equal(get_str("localhost"), 2);
    assert_int_equal(get_str("localhost/web01"), 3);
    assert_int_equal(get_str("localhost/db01"), 4);
    close_registry();
}

static void test_same_key_same_number(void **state)
{
    struct fixture *f = *state;
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    uint64_t a = get_str("host/uuid/devices/vda");
    uint64_t b = get_str("host/uuid/devices/vdb");
    assert_int_not_equal(a, b);
    off_t size = file_size(f->file);
    assert_int_equal(get_str("host/uuid/devices/vda"), a);
    assert_int_equal(get_str("host/uuid/devices/vdb"), b);
    /* A key seen before is not written again. */
    assert_int_equal(file_size(f->file), size);
    close_registry();
}

static void test_keys_are_bytes(void **state)
{
    struct fixture *f = *state;
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    const char with_nul[] = {'a', '\0', 'b'};
    const char other_nul[] = {'a', '\0', 'c'};
    const unsigned char high[] = {0xff, 0x00, 0x80, 0x01};
    uint64_t ino[6];
    ino[0] = vm_ino_get(r, "a", 1);
    ino[1] = vm_ino_get(r, with_nul, sizeof with_nul);
    ino[2] = vm_ino_get(r, other_nul, sizeof other_nul);
    ino[3] = vm_ino_get(r, with_nul, 2); /* "a\0": a prefix is another key */
    ino[4] = vm_ino_get(r, high, sizeof high);
    ino[5] = vm_ino_get(r, "", 0);
    for (int i = 0; i < 6; i++) {
        assert_true(ino[i] >= 2);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(ino[i], ino[j]);
    }
    assert_int_equal(vm_ino_get(r, with_nul, sizeof with_nul), ino[1]);
    assert_int_equal(vm_ino_get(r, high, sizeof high), ino[4]);
    assert_int_equal(vm_ino_get(r, "x", 0), ino[5]);
    close_registry();

    /* And the same bytes come back from the file. */
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    assert_int_equal(vm_ino_get(r, with_nul, sizeof with_nul), ino[1]);
    assert_int_equal(vm_ino_get(r, other_nul, sizeof other_nul), ino[2]);
    assert_int_equal(vm_ino_get(r, with_nul, 2), ino[3]);
    assert_int_equal(vm_ino_get(r, high, sizeof high), ino[4]);
    assert_int_equal(vm_ino_get(r, "", 0), ino[5]);
    close_registry();
}

static void test_key_too_long(void **state)
{
    r = vm_ino_open(NULL);
    assert_non_null(r);
    static char key[64 * 1024 + 1];
    size_t len = sizeof key;
    assert_int_equal(vm_ino_get(r, key, len), 0);
    assert_int_equal(vm_error_errno(), ENAMETOOLONG);
    /* The longest key allowed works. */
    assert_true(vm_ino_get(r, key, len - 1) >= 2);
    close_registry();
}

static void test_persists_across_reopen(void **state)
{
    struct fixture *f = *state;
    char key[64];
    uint64_t ino[50];
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof key, "localhost/dom%d", i);
        ino[i] = get_str(key);
    }
    close_registry();

    r = vm_ino_open(f->dir);
    assert_non_null(r);
    /* Asked in another order: the numbers come from the file, not from the order. */
    for (int i = 49; i >= 0; i--) {
        snprintf(key, sizeof key, "localhost/dom%d", i);
        assert_int_equal(get_str(key), ino[i]);
    }
    /* A new key gets a new number, after every old one. */
    uint64_t fresh = get_str("localhost/new");
    for (int i = 0; i < 50; i++)
        assert_true(fresh > ino[i]);
    close_registry();

    r = vm_ino_open(f->dir);
    assert_non_null(r);
    assert_int_equal(get_str("localhost/new"), fresh);
    assert_int_equal(get_str("localhost/dom0"), ino[0]);
    close_registry();
}

static void test_file_format(void **state)
{
    struct fixture *f = *state;
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    /* A new registry is its magic alone. */
    assert_int_equal(file_size(f->file), 7);
    assert_int_equal(get_str("abc"), 2);
    close_registry();

    /* The magic, then inode 2 as a u64 and the key length as a u32, little-endian, and the key. */
    const char expected[] = "VMINO1\n"
                            "\x02\0\0\0\0\0\0\0"
                            "\x03\0\0\0"
                            "abc";
    unsigned char buf[64];
    int fd = open(f->file, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    assert_int_equal(n, sizeof expected - 1);
    assert_memory_equal(buf, expected, sizeof expected - 1);
}

static void truncate_by(const char *path, off_t bytes)
{
    off_t size = file_size(path);
    assert_true(size > bytes);
    assert_int_equal(truncate(path, size - bytes), 0);
}

static void test_torn_record_is_cut(void **state)
{
    struct fixture *f = *state;
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    uint64_t a = get_str("first");
    uint64_t b = get_str("second");
    off_t whole = file_size(f->file);
    get_str("third-key");
    close_registry();

    /* A crash in the middle of the last append: part of its key is missing. */
    truncate_by(f->file, 3);
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    assert_int_equal(file_size(f->file), whole);
    assert_int_equal(get_str("first"), a);
    assert_int_equal(get_str("second"), b);
    /* The torn key was never handed out: it is a new key, numbered after the survivors. */
    uint64_t c2 = get_str("third-key");
    assert_int_not_equal(c2, a);
    assert_int_not_equal(c2, b);
    assert_true(c2 > b);
    uint64_t d = get_str("fourth");
    assert_true(d != a && d != b && d != c2);
    close_registry();

    /* What was appended after the repair is read back whole. */
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    assert_int_equal(get_str("first"), a);
    assert_int_equal(get_str("second"), b);
    assert_int_equal(get_str("third-key"), c2);
    assert_int_equal(get_str("fourth"), d);
    close_registry();
}

static void test_torn_header_is_cut(void **state)
{
    struct fixture *f = *state;
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    uint64_t a = get_str("kept");
    off_t whole = file_size(f->file);
    get_str("lost");
    close_registry();

    /* Only 5 of the 12 bytes of the last record's number and length made it. */
    truncate_by(f->file, 12 + 4 - 5);
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    assert_int_equal(file_size(f->file), whole);
    assert_int_equal(get_str("kept"), a);
    assert_true(get_str("new") > a);
    close_registry();
}

static void test_second_open_is_busy(void **state)
{
    struct fixture *f = *state;
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    uint64_t a = get_str("key");

    vm_error_clear();
    assert_null(vm_ino_open(f->dir));
    assert_int_equal(vm_error_errno(), EBUSY);
    assert_non_null(strstr(vm_error_message(), f->dir));

    /* The failed open did not disturb the first. */
    assert_int_equal(get_str("key"), a);
    assert_true(get_str("key2") > a);
    close_registry();

    /* Closing releases the lock. */
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    assert_int_equal(get_str("key"), a);
    close_registry();
}

static void test_bad_magic(void **state)
{
    struct fixture *f = *state;
    int fd = open(f->file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    const char junk[] = "this is not an inode registry\n";
    assert_int_equal(write(fd, junk, sizeof junk - 1), sizeof junk - 1);
    close(fd);

    vm_error_clear();
    assert_null(vm_ino_open(f->dir));
    assert_int_equal(vm_error_errno(), EINVAL);
    /* Refused, not "repaired": the file is left as it was. */
    assert_int_equal(file_size(f->file), sizeof junk - 1);
}

static void test_missing_dir(void **state)
{
    struct fixture *f = *state;
    char path[4300];
    snprintf(path, sizeof path, "%s/does-not-exist", f->dir);
    vm_error_clear();
    assert_null(vm_ino_open(path));
    assert_int_equal(vm_error_errno(), ENOENT);
}

static void test_in_memory(void **state)
{
    r = vm_ino_open(NULL);
    assert_non_null(r);
    assert_int_equal(get_str("a"), 2);
    assert_int_equal(get_str("b"), 3);
    assert_int_equal(get_str("a"), 2);
    close_registry();
    /* Nothing kept: a new one starts over. */
    r = vm_ino_open(NULL);
    assert_non_null(r);
    assert_int_equal(get_str("b"), 2);
    close_registry();
    vm_ino_close(NULL);
}

#define MANY 100000

static void check_many(bool first_time)
{
    char key[64];
    for (uint64_t i = 0; i < MANY; i++) {
        snprintf(key, sizeof key, "localhost/%016llx/devices/disk%llu", (unsigned long long)i,
                 (unsigned long long)i);
        uint64_t ino = get_str(key);
        /* Keys are new in order, so their numbers are 2, 3, 4, ...: distinct by construction. */
        if (ino != i + 2)
            fail_msg("%s key %llu: inode %llu, expected %llu", first_time ? "new" : "known",
                     (unsigned long long)i, (unsigned long long)ino, (unsigned long long)(i + 2));
    }
}

static void test_many_keys(void **state)
{
    struct fixture *f = *state;
    r = vm_ino_open(f->dir);
    assert_non_null(r);
    check_many(true);
    check_many(false); /* after every growth, each key still found */
    close_registry();

    r = vm_ino_open(f->dir);
    assert_non_null(r);
    check_many(false);
    assert_int_equal(get_str("one more"), MANY + 2);
    close_registry();
}

static void test_many_keys_in_memory(void **state)
{
    r = vm_ino_open(NULL);
    assert_non_null(r);
    check_many(true);
    check_many(false);
    close_registry();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_numbers_start_at_2, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_same_key_same_number, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_keys_are_bytes, make_dir, remove_dir),
        cmocka_unit_test_teardown(test_key_too_long, teardown),
        cmocka_unit_test_setup_teardown(test_persists_across_reopen, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_file_format, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_torn_record_is_cut, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_torn_header_is_cut, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_second_open_is_busy, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_bad_magic, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_missing_dir, make_dir, remove_dir),
        cmocka_unit_test_teardown(test_in_memory, teardown),
        cmocka_unit_test_setup_teardown(test_many_keys, make_dir, remove_dir),
        cmocka_unit_test_teardown(test_many_keys_in_memory, teardown),
    };
    return cmocka_run_group_tests_name("ino", tests, NULL, NULL);
}
