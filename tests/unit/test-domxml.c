/* Unit tests for lib/domxml.c: a domain's XML becomes a struct vm_domain with
 * the disks virtmount shows and the names DESIGN.md promises (serial when
 * legal and unique, else target; CD-ROMs and floppies without media left
 * out).  Most cases are golden files: tests/unit/golden/NAME.xml is a domain
 * as `virsh dumpxml` prints it and NAME.txt the expected dump of the parsed
 * struct (or of the error), compared byte for byte.  After a deliberate
 * change of the parser's output, rewrite the .txt files with
 *     VIRTMOUNT_REGENERATE=1 meson test -C build --suite unit domxml
 * and review the diff before committing.  The rest tests the naming rules,
 * disk lookup, state names and reference counting directly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvirt/libvirt.h>

#include "internal.h"

#ifndef GOLDEN_DIR
#error "GOLDEN_DIR must be defined by the build"
#endif

/* Every golden case; a .xml in GOLDEN_DIR missing here fails test_golden_all_listed. */
static const char *const golden_cases[] = {
    "file",              /* file sources; a serial with a space; readonly, shareable */
    "block",             /* block devices, a shareable lun */
    "volume",            /* pool/volume sources */
    "network-nbd",       /* nbd over tcp (with and without port and name) and over unix */
    "network-multihost", /* rbd and gluster with several hosts, iscsi with one */
    "removable",         /* CD-ROMs and floppies with and without media */
    "serial-illegal",    /* serials that cannot be file names: '/', ".", "..", control chars */
    "serial-duplicate",  /* two disks with one serial both fall back to their targets */
    "serial-is-target",  /* a serial that is another disk's target */
    "no-target",         /* disks without a target are ignored */
    "other-types",       /* nvme, vhostuser, dir; defaults for missing attributes */
    "no-disks",          /* a domain with no disk at all */
    "malformed",         /* not well-formed XML: EINVAL */
    "not-domain",        /* another libvirt object: EINVAL */
    "no-uuid",           /* a domain without a UUID: EINVAL */
};
#define NGOLDEN (sizeof golden_cases / sizeof golden_cases[0])

static bool regenerate(void)
{
    const char *e = getenv("VIRTMOUNT_REGENERATE");
    return e && strcmp(e, "1") == 0;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    assert_non_null(mem);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        assert_int_equal(fwrite(buf, 1, n, mem), n);
    assert_false(ferror(f));
    fclose(f);
    assert_int_equal(fclose(mem), 0);
    return text;
}

/* S quoted, with backslash, quote and non-printable bytes escaped: the dump stays one line. */
static void put_string(FILE *out, const char *label, const char *s)
{
    fprintf(out, "  %s: ", label);
    if (!s) {
        fputs("NULL\n", out);
        return;
    }
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\\' || *p == '"')
            fprintf(out, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(out, "\\x%02x", *p);
        else
            fputc(*p, out);
    }
    fputs("\"\n", out);
}

static const char *errno_name(int e)
{
    switch (e) {
    case EINVAL:
        return "EINVAL";
    case ENOMEM:
        return "ENOMEM";
    default:
        return "other";
    }
}

/* The plain text form of what vm_domxml_parse made of XML. */
static char *dump_parse(const char *xml)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    assert_non_null(out);
    vm_error_clear();
    struct vm_domain *d = vm_domxml_parse(xml);
    if (!d) {
        fprintf(out, "error: %s: %s\n", errno_name(vm_error_errno()), vm_error_message());
    } else {
        fprintf(out, "name: %s\nuuid: %s\ndisks: %zu\n", d->name, d->uuid, d->ndisks);
        for (size_t i = 0; i < d->ndisks; i++) {
            const struct vm_disk *k = &d->disks[i];
            fprintf(out, "disk %zu\n", i);
            put_string(out, "name", k->name);
            put_string(out, "target", k->target);
            put_string(out, "bus", k->bus);
            put_string(out, "device", k->device);
            put_string(out, "type", k->type);
            put_string(out, "source", k->source);
            put_string(out, "format", k->format);
            put_string(out, "serial", k->serial);
            fprintf(out, "  readonly: %s\n", k->readonly ? "yes" : "no");
            fprintf(out, "  shareable: %s\n", k->shareable ? "yes" : "no");
        }
        vm_domain_unref(d);
    }
    assert_int_equal(fclose(out), 0);
    return text;
}

/* Fail naming the first line where EXPECTED and ACTUAL differ (cmocka truncates long messages). */
static void report_difference(const char *path, const char *expected, const char *actual)
{
    int line = 1;
    const char *e = expected, *a = actual;
    for (;;) {
        size_t elen = strcspn(e, "\n"), alen = strcspn(a, "\n");
        if (elen != alen || memcmp(e, a, elen) != 0 || !e[elen] != !a[alen])
            fail_msg("%s:%d: expected '%.*s', the parser gives '%.*s' (after a deliberate change: "
                     "VIRTMOUNT_REGENERATE=1)",
                     path, line, (int)elen, e, (int)alen, a);
        if (!e[elen])
            break;
        e += elen + 1;
        a += alen + 1;
        line++;
    }
    fail_msg("%s differs from what the parser gives", path);
}

/* One golden case's buffers, freed by teardown even when an assertion fails. */
struct golden {
    const char *name;
    char *xml, *actual, *expected;
};

static int golden_free(void **state)
{
    struct golden *g = *state;
    free(g->xml);
    free(g->actual);
    free(g->expected);
    g->xml = g->actual = g->expected = NULL;
    return 0;
}

static void test_golden(void **state)
{
    struct golden *g = *state;
    char xml_path[4096], txt_path[4096];
    snprintf(xml_path, sizeof xml_path, "%s/%s.xml", GOLDEN_DIR, g->name);
    snprintf(txt_path, sizeof txt_path, "%s/%s.txt", GOLDEN_DIR, g->name);

    g->xml = read_file(xml_path);
    if (!g->xml)
        fail_msg("cannot read %s: %s", xml_path, strerror(errno));
    g->actual = dump_parse(g->xml);

    if (regenerate()) {
        FILE *f = fopen(txt_path, "we");
        if (!f)
            fail_msg("cannot write %s: %s", txt_path, strerror(errno));
        fputs(g->actual, f);
        assert_int_equal(fclose(f), 0);
        print_message("regenerated %s\n", txt_path);
        return;
    }
    g->expected = read_file(txt_path);
    if (!g->expected)
        fail_msg("cannot read %s: %s (VIRTMOUNT_REGENERATE=1 writes it)", txt_path,
                 strerror(errno));
    if (strcmp(g->expected, g->actual) != 0)
        report_difference(txt_path, g->expected, g->actual);
}

/* A golden file nobody runs is a test that cannot fail. */
static void test_golden_all_listed(void **state)
{
    DIR *dir = opendir(GOLDEN_DIR);
    assert_non_null(dir);
    size_t nxml = 0;
    char stray[256] = "";
    struct dirent *e;
    while (!stray[0] && (e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        size_t len = strlen(e->d_name);
        const char *dot = strrchr(e->d_name, '.');
        bool listed = false;
        if (dot && (strcmp(dot, ".xml") == 0 || strcmp(dot, ".txt") == 0))
            for (size_t i = 0; i < NGOLDEN; i++)
                if (strlen(golden_cases[i]) == len - 4 &&
                    strncmp(golden_cases[i], e->d_name, len - 4) == 0)
                    listed = true;
        if (!listed)
            snprintf(stray, sizeof stray, "%s", e->d_name);
        else if (strcmp(dot, ".xml") == 0)
            nxml++;
    }
    closedir(dir);
    if (stray[0])
        fail_msg("%s/%s belongs to no case in golden_cases[]", GOLDEN_DIR, stray);
    assert_int_equal(nxml, NGOLDEN);
}

/* ---- beyond the dump ---- */

static const char two_disks[] = "<domain type='kvm'>\n"
                                "  <name>pair</name>\n"
                                "  <uuid>11111111-2222-4333-8444-555555555555</uuid>\n"
                                "  <devices>\n"
                                "    <disk type='file' device='disk'>\n"
                                "      <driver name='qemu' type='qcow2'/>\n"
                                "      <source file='/img/a.qcow2'/>\n"
                                "      <target dev='vda' bus='virtio'/>\n"
                                "    </disk>\n"
                                "    <disk type='file' device='disk'>\n"
                                "      <driver name='qemu' type='raw'/>\n"
                                "      <source file='/img/b.raw'/>\n"
                                "      <target dev='vdb' bus='virtio'/>\n"
                                "      <serial>data</serial>\n"
                                "    </disk>\n"
                                "  </devices>\n"
                                "</domain>\n";

/* Setup and teardown for the tests of a parsed two_disks. */
static int parse_two_disks(void **state)
{
    *state = vm_domxml_parse(two_disks);
    return *state ? 0 : -1;
}

/* Drops the test's reference: with one too many or too few, LeakSanitizer or ASan complains. */
static int unref_domain(void **state)
{
    vm_domain_unref(*state);
    return 0;
}

static void test_parse_fills_the_rest(void **state)
{
    struct vm_domain *d = *state;
    assert_int_equal(d->refcount, 1);
    assert_int_equal(d->state, 0);
    assert_string_equal(d->xml, two_disks);
    assert_int_equal(d->ndisks, 2);
    for (size_t i = 0; i < d->ndisks; i++) {
        assert_int_equal(d->sizes[i], -1);
        assert_null(d->size_errors[i]);
        /* The element alone, reusable as hotplug XML. */
        assert_true(strncmp(d->disks[i].xml, "<disk type=\"file\" device=\"disk\">", 32) == 0);
        assert_non_null(strstr(d->disks[i].xml, d->disks[i].target));
        assert_null(strstr(d->disks[i].xml, "<domain"));
        assert_null(strstr(d->disks[i].xml, "</devices>"));
    }
    assert_non_null(strstr(d->disks[0].xml, "/img/a.qcow2"));
    assert_null(strstr(d->disks[0].xml, "/img/b.raw"));
    assert_non_null(strstr(d->disks[1].xml, "<serial>data</serial>"));
}

static void expect_einval(const char *xml)
{
    vm_error_clear();
    errno = 0;
    assert_null(vm_domxml_parse(xml));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(vm_error_errno(), EINVAL);
    assert_true(vm_error_message()[0] != '\0');
}

static void test_parse_rejects_bad_input(void **state)
{
    expect_einval(NULL);
    expect_einval("");
    expect_einval("not xml at all");
    expect_einval("<domain><name>x</name>");
    expect_einval("<pool type='dir'><name>default</name></pool>");
    expect_einval("<domain><uuid>11111111-2222-4333-8444-555555555555</uuid></domain>");
    expect_einval("<domain><name>x</name><uuid>11111111-2222-4333-8444-555555555555-and-more"
                  "</uuid></domain>");
}

/* ---- vm_name_is_legal ---- */

static void test_name_is_legal(void **state)
{
    assert_true(vm_name_is_legal("vda"));
    assert_true(vm_name_is_legal("data-7f3a"));
    assert_true(vm_name_is_legal("with space"));
    assert_true(vm_name_is_legal(".hidden"));
    assert_true(vm_name_is_legal("..."));
    assert_true(vm_name_is_legal("caf\xc3\xa9"));

    assert_false(vm_name_is_legal(NULL));
    assert_false(vm_name_is_legal(""));
    assert_false(vm_name_is_legal("."));
    assert_false(vm_name_is_legal(".."));
    assert_false(vm_name_is_legal("a/b"));
    assert_false(vm_name_is_legal("/"));
    assert_false(vm_name_is_legal("tab\there"));
    assert_false(vm_name_is_legal("new\nline"));
    assert_false(vm_name_is_legal("\x01"));
    assert_false(vm_name_is_legal("del\x7f"));

    char longest[256], too_long[257];
    memset(longest, 'x', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0';
    memset(too_long, 'x', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    assert_true(vm_name_is_legal(longest));
    assert_false(vm_name_is_legal(too_long));
}

/* ---- vm_disks_assign_names ---- */

/* The disks of an assign test: global, so that teardown frees them even when an assertion fails. */
static struct vm_disk disks[4];

static void clear_disks(void)
{
    for (size_t i = 0; i < 4; i++) {
        free(disks[i].name);
        free(disks[i].target);
        free(disks[i].serial);
    }
    memset(disks, 0, sizeof disks);
}

static int teardown_disks(void **state)
{
    clear_disks();
    return 0;
}

/* Give disks[0..N) these targets and serials, and names. */
static void assign(size_t n, const char *const *targets, const char *const *serials)
{
    clear_disks();
    for (size_t i = 0; i < n; i++) {
        disks[i].target = strdup(targets[i]);
        disks[i].serial = serials[i] ? strdup(serials[i]) : NULL;
        assert_non_null(disks[i].target);
    }
    vm_disks_assign_names(disks, n);
}

static void test_assign_names_serial_or_target(void **state)
{
    assign(3, (const char *const[]){"vda", "vdb", "vdc"},
           (const char *const[]){NULL, "data", "a/b"});
    assert_string_equal(disks[0].name, "vda");
    assert_string_equal(disks[1].name, "data");
    assert_string_equal(disks[2].name, "vdc");
}

static void test_assign_names_duplicate_serials(void **state)
{
    assign(3, (const char *const[]){"vda", "vdb", "vdc"},
           (const char *const[]){"same", "same", "other"});
    assert_string_equal(disks[0].name, "vda");
    assert_string_equal(disks[1].name, "vdb");
    assert_string_equal(disks[2].name, "other");
}

static void test_assign_names_serial_is_other_target(void **state)
{
    /* Named "vdb", the first disk would hide the second one. */
    assign(2, (const char *const[]){"vda", "vdb"}, (const char *const[]){"vdb", NULL});
    assert_string_equal(disks[0].name, "vda");
    assert_string_equal(disks[1].name, "vdb");

    /* A serial equal to the disk's own target is no clash. */
    assign(2, (const char *const[]){"vda", "vdb"}, (const char *const[]){"vda", "x"});
    assert_string_equal(disks[0].name, "vda");
    assert_string_equal(disks[1].name, "x");
}

static void test_assign_names_replaces_old_name(void **state)
{
    clear_disks();
    disks[0].target = strdup("sda");
    disks[0].serial = strdup("boot");
    disks[0].name = strdup("stale");
    vm_disks_assign_names(disks, 1);
    assert_string_equal(disks[0].name, "boot");
}

static void test_assign_names_are_unique(void **state)
{
    /* Every combination of a few serials over four disks: names never clash. */
    const char *const targets[] = {"vda", "vdb", "vdc", "vdd"};
    const char *const choices[] = {NULL, "vda", "vdb", "x", "y", "a/b", "."};
    const size_t nchoices = sizeof choices / sizeof choices[0];
    size_t combos = 1;
    for (int i = 0; i < 4; i++)
        combos *= nchoices;
    for (size_t c = 0; c < combos; c++) {
        const char *serials[4];
        size_t v = c;
        for (int i = 0; i < 4; i++, v /= nchoices)
            serials[i] = choices[v % nchoices];
        assign(4, targets, serials);
        for (int i = 0; i < 4; i++) {
            assert_true(vm_name_is_legal(disks[i].name));
            for (int j = 0; j < i; j++)
                if (strcmp(disks[i].name, disks[j].name) == 0)
                    fail_msg("combination %zu: disks %d and %d are both named %s", c, j, i,
                             disks[i].name);
        }
    }
}

/* ---- vm_domain_find_disk ---- */

static void test_find_disk(void **state)
{
    struct vm_domain *d = *state;
    size_t index = 99;
    const struct vm_disk *k = vm_domain_find_disk(d, "vda", &index);
    assert_ptr_equal(k, &d->disks[0]);
    assert_int_equal(index, 0);
    k = vm_domain_find_disk(d, "data", &index);
    assert_ptr_equal(k, &d->disks[1]);
    assert_int_equal(index, 1);
    assert_non_null(vm_domain_find_disk(d, "data", NULL));

    /* A disk named by its serial is not found by its target. */
    index = 99;
    assert_null(vm_domain_find_disk(d, "vdb", &index));
    assert_int_equal(index, 99);
    assert_null(vm_domain_find_disk(d, "", NULL));
    assert_null(vm_domain_find_disk(d, "VDA", NULL));
}

/* ---- vm_domain_state_name ---- */

static void test_state_names(void **state)
{
    assert_string_equal(vm_domain_state_name(VIR_DOMAIN_NOSTATE), "no state");
    assert_string_equal(vm_domain_state_name(VIR_DOMAIN_RUNNING), "running");
    assert_string_equal(vm_domain_state_name(VIR_DOMAIN_BLOCKED), "idle");
    assert_string_equal(vm_domain_state_name(VIR_DOMAIN_PAUSED), "paused");
    assert_string_equal(vm_domain_state_name(VIR_DOMAIN_SHUTDOWN), "in shutdown");
    assert_string_equal(vm_domain_state_name(VIR_DOMAIN_SHUTOFF), "shut off");
    assert_string_equal(vm_domain_state_name(VIR_DOMAIN_CRASHED), "crashed");
    assert_string_equal(vm_domain_state_name(VIR_DOMAIN_PMSUSPENDED), "pmsuspended");
    assert_string_equal(vm_domain_state_name(-1), "no state");
    assert_string_equal(vm_domain_state_name(1000), "no state");
}

/* ---- vm_domain_ref / vm_domain_unref ---- */

static void test_ref_unref(void **state)
{
    struct vm_domain *d = *state;
    assert_ptr_equal(vm_domain_ref(d), d);
    assert_ptr_equal(vm_domain_ref(d), d);
    assert_int_equal(d->refcount, 3);
    vm_domain_unref(d);
    vm_domain_unref(d);
    assert_int_equal(d->refcount, 1);
    /* Still usable with one reference left. */
    assert_string_equal(d->name, "pair");
    assert_string_equal(d->disks[1].name, "data");
    /* Teardown drops the last reference: LeakSanitizer sees a leak if it does not free. */

    assert_null(vm_domain_ref(NULL));
    vm_domain_unref(NULL);
}

static void test_unref_frees_size_errors(void **state)
{
    struct vm_domain *d = *state;
    /* host.c fills these; the domain owns them. */
    d->sizes[0] = 1 << 20;
    d->size_errors[1] = strdup("permission denied");
    assert_non_null(d->size_errors[1]);
    /* Teardown's unref must free it, or LeakSanitizer reports it. */
}

int main(void)
{
    struct CMUnitTest golden[NGOLDEN];
    struct golden states[NGOLDEN];
    char names[NGOLDEN][64];
    for (size_t i = 0; i < NGOLDEN; i++) {
        snprintf(names[i], sizeof names[i], "golden/%s", golden_cases[i]);
        states[i] = (struct golden){.name = golden_cases[i]};
        golden[i] = (struct CMUnitTest){
            .name = names[i],
            .test_func = test_golden,
            .teardown_func = golden_free,
            .initial_state = &states[i],
        };
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_all_listed),
        cmocka_unit_test_setup_teardown(test_parse_fills_the_rest, parse_two_disks, unref_domain),
        cmocka_unit_test(test_parse_rejects_bad_input),
        cmocka_unit_test(test_name_is_legal),
        cmocka_unit_test_teardown(test_assign_names_serial_or_target, teardown_disks),
        cmocka_unit_test_teardown(test_assign_names_duplicate_serials, teardown_disks),
        cmocka_unit_test_teardown(test_assign_names_serial_is_other_target, teardown_disks),
        cmocka_unit_test_teardown(test_assign_names_replaces_old_name, teardown_disks),
        cmocka_unit_test_teardown(test_assign_names_are_unique, teardown_disks),
        cmocka_unit_test_setup_teardown(test_find_disk, parse_two_disks, unref_domain),
        cmocka_unit_test(test_state_names),
        cmocka_unit_test_setup_teardown(test_ref_unref, parse_two_disks, unref_domain),
        cmocka_unit_test_setup_teardown(test_unref_frees_size_errors, parse_two_disks,
                                        unref_domain),
    };
    int failed = cmocka_run_group_tests_name("domxml golden files", golden, NULL, NULL);
    failed += cmocka_run_group_tests_name("domxml", tests, NULL, NULL);
    return failed ? 1 : 0;
}
