/* Unit tests for fs/prefetch.c: a directory's small files read ahead of
 * their opens.  fs/prefetch.c is compiled in as is, with its threads; the
 * node table, the appliance and the kernel's page cache are stood in for
 * (struct prefetch_io and the store function below), which record what a
 * real appliance would be asked for.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "fs.h"

#define MAX_FILES 1000

/* ---- stand-ins ---- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static size_t nfiles;                     /* in the directory */
static char fetched[MAX_FILES];           /* how often each was read from the "appliance" */
static char stored[MAX_FILES];            /* how often each went to the "page cache" */
static unsigned order[MAX_FILES], norder; /* files in the order their fetches began */
static volatile useconds_t fetch_delay;
static int failing = -1; /* a file the appliance cannot read */
static int in_flight;    /* fetches begun and not returned */
static int dirs_open;

static size_t siblings(const struct node *n, off_t max_size, struct prefetch_entry **out)
{
    *out = calloc(nfiles, sizeof **out);
    /* Unordered, as the node table gives them: backwards. */
    for (size_t i = 0; i < nfiles; i++) {
        size_t f = nfiles - 1 - i;
        (*out)[i].ino = 1000 + f;
        (*out)[i].size = 100 + (off_t)f;
        asprintf(&(*out)[i].name, "f%03zu", f);
    }
    return nfiles;
}

static volatile bool unplugged; /* the directory's disk is not plugged */
static volatile int plug_gen;   /* counts its plugs */

/* The context: the plug it was taken under. */
static void *dir_open(const struct node *n)
{
    int *gen = malloc(sizeof *gen);
    *gen = plug_gen;
    __atomic_add_fetch(&dirs_open, 1, __ATOMIC_SEQ_CST);
    return gen;
}

static void dir_close(void *d)
{
    free(d);
    __atomic_sub_fetch(&dirs_open, 1, __ATOMIC_SEQ_CST);
}

static bool current(void *d)
{
    return !unplugged && *(int *)d == plug_gen;
}

static int holds; /* holds not released */

static bool hold(void *d)
{
    if (!current(d))
        return false;
    __atomic_add_fetch(&holds, 1, __ATOMIC_SEQ_CST);
    return true;
}

static void release(void *d)
{
    __atomic_sub_fetch(&holds, 1, __ATOMIC_SEQ_CST);
}

static ssize_t fetch(void *d, const char *name, char *buf, size_t size)
{
    unsigned f;
    assert_int_equal(sscanf(name, "f%03u", &f), 1);
    assert_int_equal(size, 100 + f);
    pthread_mutex_lock(&mu);
    fetched[f]++;
    order[norder++] = f;
    pthread_mutex_unlock(&mu);
    assert_true(__atomic_load_n(&holds, __ATOMIC_SEQ_CST) > 0); /* always held */
    __atomic_add_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
    if (fetch_delay)
        usleep(fetch_delay);
    __atomic_sub_fetch(&in_flight, 1, __ATOMIC_SEQ_CST);
    if ((int)f == failing)
        return vm_error(EIO, "cannot read %s", name);
    memset(buf, 'a', size);
    return (ssize_t)size;
}

static void store(fuse_ino_t ino, const char *buf, size_t size)
{
    assert_true(ino >= 1000 && ino < 1000 + nfiles);
    assert_int_equal(size, 100 + (ino - 1000));
    pthread_mutex_lock(&mu);
    stored[ino - 1000]++;
    pthread_mutex_unlock(&mu);
}

static const struct prefetch_io io = {.siblings = siblings,
                                      .dir_open = dir_open,
                                      .fetch = fetch,
                                      .current = current,
                                      .hold = hold,
                                      .release = release,
                                      .dir_close = dir_close};

/* ---- helpers ---- */

static size_t count(const char *v)
{
    pthread_mutex_lock(&mu);
    size_t c = 0;
    for (size_t i = 0; i < MAX_FILES; i++)
        c += (size_t)v[i];
    pthread_mutex_unlock(&mu);
    return c;
}

/* Wait until the fetches stop coming: none in flight, and no new one in
 * 20 ms (or 20 s). */
static void settle(void)
{
    size_t last = (size_t)-1;
    for (int i = 0; i < 1000; i++) {
        usleep(20000);
        size_t now = count(fetched);
        if (now == last && !__atomic_load_n(&in_flight, __ATOMIC_SEQ_CST))
            return;
        last = now;
    }
}

static void open_file(fuse_ino_t dir, unsigned f)
{
    char path[32];
    snprintf(path, sizeof path, "/d/f%03u", f);
    struct node n = {.ino = 1000 + f, .parent = dir, .path = path};
    prefetch_open(&n, &io);
}

static int setup(void **state)
{
    memset(fetched, 0, sizeof fetched);
    memset(stored, 0, sizeof stored);
    unplugged = false;
    norder = 0;
    nfiles = 100;
    fetch_delay = 0;
    failing = -1;
    prefetch_init(store);
    return 0;
}

static int teardown(void **state)
{
    prefetch_stop();
    assert_int_equal(dirs_open, 0); /* every scan's directory let go */
    assert_int_equal(holds, 0);
    return 0;
}

/* ---- the tests ---- */

/* cat of one file: nothing read ahead. */
static void test_one_file(void **state)
{
    open_file(7, 5);
    open_file(7, 5);
    settle();
    assert_int_equal(count(fetched), 0);
}

/* The second file opened starts the scan: every other file is read once,
 * stored, and in name order from the one opened. */
static void test_scan_reads_rest_once(void **state)
{
    open_file(7, 50);
    open_file(7, 51);
    settle();
    assert_int_equal(count(fetched), 98);
    assert_int_equal(count(stored), 98);
    assert_int_equal(fetched[50] + fetched[51], 0);
    for (size_t i = 0; i < nfiles; i++)
        assert_true(fetched[i] <= 1);
    /* Two threads take them in order (their records may cross): the first
     * recorded is 52 or 53, and the wrap to 0 comes well after 60. */
    assert_true(order[0] == 52 || order[0] == 53);
    size_t at60 = 0, at0 = 0;
    for (size_t i = 0; i < norder; i++) {
        if (order[i] == 60)
            at60 = i;
        if (order[i] == 0)
            at0 = i;
    }
    assert_true(at60 < 20 && at0 > 40);
    /* The opens that follow find their files fetched: none is read again. */
    for (unsigned f = 52; f < 100; f++)
        open_file(7, f);
    settle();
    assert_int_equal(count(fetched), 98);
}

/* An open of a file being fetched waits for it rather than reading it again. */
static void test_open_waits_for_fetch(void **state)
{
    fetch_delay = 100000;
    open_file(7, 0);
    open_file(7, 1);
    usleep(20000); /* the threads have begun 2 and 3 */
    open_file(7, 2);
    pthread_mutex_lock(&mu);
    char s2 = stored[2];
    pthread_mutex_unlock(&mu);
    assert_int_equal(s2, 1); /* back only once it was stored */
    fetch_delay = 0;
    settle();
    assert_int_equal(fetched[2], 1);
}

/* Files not fetched yet when opened are left to the kernel's own read. */
static void test_open_before_fetch_takes_it(void **state)
{
    fetch_delay = 50000;
    open_file(7, 0);
    open_file(7, 1);
    for (unsigned f = 90; f < 100; f++)
        open_file(7, f); /* far ahead of the threads */
    fetch_delay = 0;
    settle();
    for (unsigned f = 90; f < 100; f++)
        assert_int_equal(fetched[f], 0);
    assert_int_equal(count(fetched), 88);
}

/* At most 256 files are fetched ahead of the opens; opens make room. */
static void test_ahead_bound(void **state)
{
    nfiles = 1000;
    open_file(7, 0);
    open_file(7, 1);
    settle();
    assert_int_equal(count(fetched), 256);
    for (unsigned f = 2; f < 12; f++)
        open_file(7, f);
    settle();
    assert_int_equal(count(fetched), 266);
}

/* A file the appliance cannot read ends the scan (a plug gone fails them
 * all); later opens do not wait. */
static void test_failure_ends_scan(void **state)
{
    failing = 10;
    fetch_delay = 10000;
    open_file(7, 0);
    open_file(7, 1);
    settle();
    assert_true(count(fetched) <= 12); /* 2 to 11, and one begun beside */
    assert_int_equal(stored[10], 0);
    for (unsigned f = 2; f < 100; f++)
        open_file(7, f);
    settle();
    assert_true(count(fetched) <= 12);
}

/* Directories are followed apart: one open in each starts nothing. */
static void test_directories_apart(void **state)
{
    for (fuse_ino_t d = 1; d <= 6; d++)
        open_file(d, (unsigned)d);
    settle();
    assert_int_equal(count(fetched), 0);
    open_file(6, 7); /* a second file in the newest */
    settle();
    assert_int_equal(count(fetched), 98);
}

/* Unplugged while files are being read ahead: each fetch is held from its
 * read to its store (an unplug waits for it), none begins after; a replug's
 * opens start afresh. */
static void test_unplug(void **state)
{
    fetch_delay = 20000;
    open_file(7, 0);
    open_file(7, 1);
    usleep(30000);
    unplugged = true;
    settle();
    size_t n = count(fetched);
    assert_true(n >= 2 && n <= 8);
    assert_int_equal(count(stored), n); /* each fetch that began was stored */
    unplugged = false;                  /* plugged again: a new view, a new scan */
    plug_gen++;
    fetch_delay = 0;
    memset(fetched, 0, sizeof fetched);
    open_file(7, 50);
    settle();
    assert_int_equal(count(fetched), 0);
    open_file(7, 51);
    settle();
    assert_int_equal(count(fetched), 98);
}

/* A reader going through directory after directory: once an open found its
 * file read ahead, the first open in the next directory starts its scan. */
static void test_streaming(void **state)
{
    open_file(7, 0);
    open_file(7, 1);
    settle();
    open_file(7, 2); /* read ahead: a hit */
    memset(fetched, 0, sizeof fetched);
    open_file(8, 0);
    settle();
    assert_int_equal(count(fetched), 99);
    assert_int_equal(fetched[0], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_reads_rest_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_waits_for_fetch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_before_fetch_takes_it, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ahead_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_ends_scan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_directories_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unplug, setup, teardown),
        cmocka_unit_test_setup_teardown(test_streaming, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
