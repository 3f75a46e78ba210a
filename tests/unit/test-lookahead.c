/* Unit tests for fs/lookahead.c: lookups in a guest directory answered
 * from its kept listing.  fs/lookahead.c is compiled in as is; the plug and
 * the appliance are stood in for by the functions it calls (below),
 * which count the round trips a real appliance would get.
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

#define N 10000

/* ---- stand-ins ---- */

static char plug_a, plug_b;     /* two plugs: the same disk before and after a replug */
static struct vm_plug *plugged; /* the plug the directory is under */
static size_t calls, stated;    /* lstatnslist round trips, entries asked for */
static size_t largest;          /* the most entries in one */
static const char *unreadable;  /* a name whose attributes the appliance cannot read */

void vm_plug_unref(struct vm_plug *p)
{
}

static size_t cache_limit = 256u << 20;

size_t inode_cache_limit(void)
{
    return cache_limit;
}

struct vm_names *vm_names_hold(struct vm_names *names)
{
    names->refs++;
    return names;
}

void vm_names_free(struct vm_names *names)
{
    if (names && --names->refs == 0) {
        free(names->v);
        free(names->blob);
        free(names);
    }
}

/* Entry "n%05u" I has guest inode number (I * 7919) % N + 100: an order unlike the listing's. */
static uint64_t ino_of(unsigned i)
{
    return (uint64_t)i * 7919 % N + 100;
}

int vm_guest_lstat_list(struct vm_plug *p, int fs, const char *dir, char *const *names, size_t n,
                        struct stat *out)
{
    calls++;
    stated += n;
    largest = n > largest ? n : largest;
    for (size_t i = 0; i < n; i++) {
        unsigned e;
        assert_int_equal(sscanf(names[i], "n%05u", &e), 1);
        memset(&out[i], 0, sizeof out[i]);
        if (unreadable && strcmp(names[i], unreadable) == 0)
            continue;
        out[i].st_ino = ino_of(e);
        out[i].st_mode = S_IFREG | 0644;
        out[i].st_size = e;
    }
    return 0;
}

/* ---- the tests ---- */

static struct node dir = {.ino = 42, .path = "/flat"};
static struct vm_names *listing;

static int setup(void **state)
{
    listing = calloc(1, sizeof *listing);
    listing->blob = malloc(N * 7);
    listing->v = malloc(N * sizeof *listing->v);
    listing->refs = 1;
    for (unsigned i = 0; i < N; i++) {
        listing->v[i] = listing->blob + i * 7;
        sprintf(listing->v[i], "n%05u", i);
    }
    listing->n = N;
    plugged = (struct vm_plug *)&plug_a;
    calls = stated = largest = 0;
    unreadable = NULL;
    lookahead_keep(&dir, plugged, listing);
    return 0;
}

static int teardown(void **state)
{
    lookahead_clear();
    vm_names_free(listing);
    return 0;
}

static int lookup(unsigned i, struct stat *st)
{
    char name[16];
    snprintf(name, sizeof name, "n%05u", i);
    return lookahead_stat(&dir, plugged, 0, name, st);
}

/* ls -l, rsync: every entry in the listing's order, in windows that grow to 1000. */
static void test_listing_order(void **state)
{
    struct stat st;
    for (unsigned i = 0; i < N; i++) {
        assert_int_equal(lookup(i, &st), 1);
        assert_int_equal(st.st_ino, ino_of(i));
        assert_int_equal(st.st_size, i);
    }
    print_message("listing order: %zu round trips, %zu entries asked for\n", calls, stated);
    assert_int_equal(stated, N); /* each entry asked for once */
    assert_int_equal(largest, 1000);
    assert_int_equal(calls, 4 + (N - 960) / 1000 + 1); /* 64, 128, 256, 512, then 1000s */
}

/* find: gnulib's fts stats a directory of more than 10 000 entries in
 * d_ino order; the inode numbers READDIR saw (lookahead_note) give it. */
static void test_inode_order(void **state)
{
    struct stat st[1000];
    for (unsigned first = 0; first < N; first += 1000) {
        for (unsigned i = 0; i < 1000; i++) {
            st[i].st_ino = ino_of(first + i);
            st[i].st_mode = S_IFREG | 0644;
        }
        lookahead_note(&dir, plugged, listing->v + first, 1000, st);
    }
    /* N + 1 entries would make fts sort: here, the order itself shows it. */
    unsigned *by_ino = calloc(N, sizeof *by_ino);
    for (unsigned i = 0; i < N; i++)
        by_ino[ino_of(i) - 100] = i;
    calls = stated = 0;
    for (unsigned k = 0; k < N; k++) {
        struct stat one;
        assert_int_equal(lookup(by_ino[k], &one), 1);
        assert_int_equal(one.st_ino, k + 100);
    }
    free(by_ino);
    print_message("inode order: %zu round trips, %zu entries asked for\n", calls, stated);
    /* A first short window in the listing's order, then runs in inode order. */
    assert_true(stated <= N + 2 * 64);
    assert_true(calls <= 2 + 4 + N / 1000 + 1);
}

/* The last READDIR window answers without a round trip (ls -l stats a batch right after reading
 * it). */
static void test_readdir_window(void **state)
{
    struct stat st[1000], one;
    for (unsigned i = 0; i < 1000; i++) {
        memset(&st[i], 0, sizeof st[i]);
        st[i].st_ino = ino_of(5000 + i);
        st[i].st_mode = S_IFREG | 0600;
    }
    lookahead_note(&dir, plugged, listing->v + 5000, 1000, st);
    for (unsigned i = 5000; i < 6000; i++) {
        assert_int_equal(lookup(i, &one), 1);
        assert_int_equal(one.st_mode, S_IFREG | 0600);
    }
    assert_int_equal(calls, 0);
}

/* A name the listing does not have is not there: ENOENT, no round trip. */
static void test_absent(void **state)
{
    struct stat st;
    assert_int_equal(lookahead_stat(&dir, plugged, 0, ".hidden", &st), -1);
    assert_int_equal(vm_error_errno(), ENOENT);
    assert_int_equal(lookup(N, &st), -1);
    assert_int_equal(calls, 0);
}

/* Another directory, or the same after a replug (a new point in time): not answered here. */
static void test_other_views(void **state)
{
    struct stat st;
    struct node other = {.ino = 43, .path = "/other"};
    assert_int_equal(lookahead_stat(&other, plugged, 0, "n00001", &st), 0);
    plugged = (struct vm_plug *)&plug_b;
    assert_int_equal(lookup(1, &st), 0);
    plugged = (struct vm_plug *)&plug_a; /* and the old listing is gone for good */
    assert_int_equal(lookup(1, &st), 0);
    assert_int_equal(calls, 0);
}

/* The newest listing is kept whatever its size; older ones within a quarter of the cache. */
static void test_kept_within(void **state)
{
    struct stat st;
    struct vm_names small = {.n = 1, .v = (char *[]){"n00007"}, .blob = "n00007", .refs = 1};
    struct node other = {.ino = 43, .path = "/other"};
    cache_limit = 4u << 20; /* a quarter holds one of N entries, not two */
    lookahead_keep(&other, plugged, &small);
    assert_int_equal(lookahead_stat(&other, plugged, 0, "n00008", &st), -1); /* kept */
    lookahead_keep(&dir, plugged, listing);
    assert_int_equal(lookahead_stat(&other, plugged, 0, "n00008", &st), -1); /* still */
    struct node third = {.ino = 44, .path = "/third"};
    lookahead_keep(&third, plugged, listing);
    assert_int_equal(lookahead_stat(&dir, plugged, 0, "n99999", &st), 0); /* let go */
    assert_int_equal(lookahead_stat(&third, plugged, 0, "n99999", &st), -1);
    /* What they hold is counted (in cache_mb, with the nodes), and given back. */
    assert_true(lookahead_memory() > N * 24 && lookahead_memory() <= 1u << 20);
    lookahead_clear();
    assert_int_equal(lookahead_memory(), 0);
    cache_limit = 256u << 20;
}

/* An entry the appliance could not stat is left to a lookup of its own (for its error). */
static void test_unreadable(void **state)
{
    struct stat st;
    unreadable = "n00003";
    assert_int_equal(lookup(0, &st), 1);
    assert_int_equal(lookup(3, &st), 0);
    assert_int_equal(lookup(4, &st), 1);
    assert_int_equal(calls, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_listing_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inode_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readdir_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_views, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unreadable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kept_within, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
