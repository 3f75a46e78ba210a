/* Unit tests for the XML virtmount writes (lib/domxml.c): the appliance's
 * domain, the attach XML made from a guest's own <disk>, the pull-mode
 * backup job and the NBD attach.  Each case's output is compared byte for
 * byte with tests/unit/golden-xml/NAME.xml; after a deliberate change,
 * rewrite them with
 *     VIRTMOUNT_REGENERATE=1 meson test -C build --suite unit xmlgen
 * and review the diff.  Every output must also be well-formed XML.
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

#include <libxml/parser.h>

#include "internal.h"

#ifndef GOLDEN_XML_DIR
#error "GOLDEN_XML_DIR must be defined by the build"
#endif

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, mem);
    fclose(f);
    fclose(mem);
    return buf;
}

/* Compare TEXT (taken) with golden NAME.xml, or rewrite it. */
static void check_golden(const char *name, char *text)
{
    assert_non_null(text);
    xmlDocPtr doc = xmlReadMemory(text, (int)strlen(text), name, NULL,
                                  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    assert_non_null(doc); /* well-formed */
    xmlFreeDoc(doc);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.xml", GOLDEN_XML_DIR, name);
    const char *regen = getenv("VIRTMOUNT_REGENERATE");
    if (regen && strcmp(regen, "1") == 0) {
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
    } else {
        char *want = read_file(path);
        if (!want)
            fail_msg("golden file %s missing (VIRTMOUNT_REGENERATE=1 writes it)", path);
        if (strcmp(want, text) != 0) {
            fprintf(stderr, "--- %s\n%s\n+++ got\n%s\n", path, want, text);
            fail_msg("%s differs from its golden file", name);
        }
        free(want);
    }
    free(text);
}

static void test_appliance_tcg(void **state)
{
    struct vm_appliance_spec spec = {
        .name = "virtmount-appliance-0123456789abcdef-0",
        .kvm = false,
        .memory_mib = 1024,
        .vcpus = 2,
        .readers = 1,
        .kernel = "/var/lib/virtmount/appliance/0e7f/kernel",
        .initrd = "/var/lib/virtmount/appliance/0e7f/initrd",
        .root = "/var/lib/virtmount/appliance/0e7f/root",
        .root_uuid = "485da633-8944-47fa-8c17-642035a3aee6",
    };
    check_golden("appliance-tcg", vm_xml_appliance(&spec));
}

static void test_appliance_kvm_escaped(void **state)
{
    struct vm_appliance_spec spec = {
        .name = "virtmount-appliance-x-1",
        .kvm = true,
        .memory_mib = 2048,
        .vcpus = 2,
        .kernel = "/srv/a&b/kernel",
        .initrd = "/srv/a'b/initrd",
        .root = "/srv/<odd>/root",
        .root_uuid = "00000000-0000-0000-0000-000000000000",
        .channel_path = "/run/virtmount/a&b.sock",
        .readers = 1,
        .reader_paths = {"/run/virtmount/a&b.r1.sock"},
    };
    check_golden("appliance-kvm", vm_xml_appliance(&spec));
}

static void test_attach_file(void **state)
{
    const char *guest = "<disk type='file' device='disk'>"
                        "<driver name='qemu' type='qcow2' cache='none' io='native'/>"
                        "<source file='/var/lib/libvirt/images/web01.qcow2'/>"
                        "<target dev='vda' bus='virtio'/><serial>data-7f3a</serial>"
                        "<boot order='1'/><alias name='virtio-disk0'/>"
                        "<iotune><total_bytes_sec>1000</total_bytes_sec></iotune>"
                        "<address type='pci' domain='0x0000' bus='0x04' slot='0x00' "
                        "function='0x0'/></disk>";
    check_golden("attach-file", vm_xml_attach_disk(guest, "vmaa6adbf301d87fc55b689debd", 1, true));
}

static void test_attach_network_auth(void **state)
{
    const char *guest = "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
                        "<auth username='libvirt'><secret type='ceph' "
                        "uuid='2ec115d7-3a88-3ceb-bc12-0ac909a6fd87'/></auth>"
                        "<source protocol='rbd' name='vms/db01'><host name='mon1' port='6789'/>"
                        "</source><target dev='vdb' bus='virtio'/><shareable/></disk>";
    check_golden("attach-network",
                 vm_xml_attach_disk(guest, "vmbbbbbbbbbbbbbbbbbbbbbbbbd", 26, true));
}

static void test_attach_cdrom(void **state)
{
    const char *guest = "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
                        "<source file='/isos/debian.iso'/><target dev='hdc' bus='ide'/>"
                        "<readonly/><address type='drive' controller='0' bus='1' target='0' "
                        "unit='0'/></disk>";
    check_golden("attach-cdrom",
                 vm_xml_attach_disk(guest, "vmccccccccccccccccccccccccd", 255, true));
}

static void test_attach_not_a_disk(void **state)
{
    assert_null(vm_xml_attach_disk("<interface type='network'/>", "vmx", 1, true));
    assert_int_equal(vm_error_errno(), EINVAL);
    assert_null(vm_xml_attach_disk("<disk", "vmx", 1, true));
}

static void test_backup(void **state)
{
    const char *xml =
        "<domain type='kvm'><name>web01</name>"
        "<uuid>ffdd012d-ad51-494e-8f4a-5d4fbe18159c</uuid><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        "<source file='/i/web01.qcow2'/><target dev='vda' bus='virtio'/></disk>"
        "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
        "<source dev='/dev/vg/data'/><target dev='vdb' bus='virtio'/></disk>"
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<source protocol='nbd' name='x'><host name='10.0.0.1' port='10809'/></source>"
        "<target dev='vdc' bus='virtio'/></disk>"
        "<disk type='file' device='disk'><source file='/i/ro.raw'/>"
        "<target dev='vdd' bus='virtio'/><readonly/></disk>"
        "<disk type='file' device='cdrom'><source file='/i/x.iso'/>"
        "<target dev='hdc' bus='ide'/><readonly/></disk>"
        "</devices></domain>";
    struct vm_domain *d = vm_domxml_parse(xml);
    assert_non_null(d);
    check_golden("backup", vm_xml_backup(d, "/var/tmp/virtmount-01fb5ebc-ffdd012d-nbd.sock",
                                         "/var/tmp", "virtmount-01fb5ebc-ffdd012d-"));
    vm_domain_unref(d);
}

static void test_attach_nbd(void **state)
{
    check_golden("attach-nbd", vm_xml_attach_nbd("/var/tmp/virtmount-01fb5ebc-ffdd012d-nbd.sock",
                                                 "vda", "vmc331479b5b0a89b427cb5215d", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_appliance_tcg), cmocka_unit_test(test_appliance_kvm_escaped),
        cmocka_unit_test(test_attach_file),   cmocka_unit_test(test_attach_network_auth),
        cmocka_unit_test(test_attach_cdrom),  cmocka_unit_test(test_attach_not_a_disk),
        cmocka_unit_test(test_backup),        cmocka_unit_test(test_attach_nbd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
