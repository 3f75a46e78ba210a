/* libvirt XML, both ways: the only module that reads or writes it.  It reads
 * a domain's name, UUID and disks with XPath and names each disk as
 * DESIGN.md says; it writes the appliance's domain and the XML that attaches
 * a guest's disk to it.  It does not talk to libvirt and does not know the
 * tree.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <libvirt/libvirt.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include "cleanup.h"

/* The string value of XPath EXPR relative to NODE, or NULL when absent or empty. */
static char *xpath_string(xmlXPathContextPtr ctx, xmlNodePtr node, const char *expr)
{
    ctx->node = node;
    CLEANUP_XPATH_OBJ xmlXPathObjectPtr obj = xmlXPathEvalExpression(BAD_CAST expr, ctx);
    if (!obj)
        return NULL;
    if (obj->type == XPATH_STRING) {
        if (!obj->stringval || !obj->stringval[0])
            return NULL;
        return strdup((const char *)obj->stringval);
    }
    if (obj->type == XPATH_NODESET && obj->nodesetval && obj->nodesetval->nodeNr > 0) {
        xmlChar *s = xmlNodeGetContent(obj->nodesetval->nodeTab[0]);
        char *r = (s && s[0]) ? strdup((const char *)s) : NULL;
        xmlFree(s);
        return r;
    }
    return NULL;
}

static bool xpath_exists(xmlXPathContextPtr ctx, xmlNodePtr node, const char *expr)
{
    ctx->node = node;
    CLEANUP_XPATH_OBJ xmlXPathObjectPtr obj = xmlXPathEvalExpression(BAD_CAST expr, ctx);
    return obj && obj->type == XPATH_NODESET && obj->nodesetval && obj->nodesetval->nodeNr > 0;
}

static char *or_empty(char *s)
{
    return s ? s : strdup("");
}

/* A readable form of a disk's source, whatever its type. */
static char *disk_source(xmlXPathContextPtr ctx, xmlNodePtr disk, const char *type)
{
    if (strcmp(type, "file") == 0)
        return xpath_string(ctx, disk, "string(source/@file)");
    if (strcmp(type, "block") == 0)
        return xpath_string(ctx, disk, "string(source/@dev)");
    if (strcmp(type, "dir") == 0)
        return xpath_string(ctx, disk, "string(source/@dir)");
    if (strcmp(type, "volume") == 0) {
        CLEANUP_FREE char *pool = xpath_string(ctx, disk, "string(source/@pool)");
        CLEANUP_FREE char *vol = xpath_string(ctx, disk, "string(source/@volume)");
        if (!pool && !vol)
            return NULL;
        char *s;
        if (asprintf(&s, "%s/%s", pool ? pool : "", vol ? vol : "") < 0)
            return NULL;
        return s;
    }
    if (strcmp(type, "network") == 0) {
        CLEANUP_FREE char *proto = xpath_string(ctx, disk, "string(source/@protocol)");
        CLEANUP_FREE char *name = xpath_string(ctx, disk, "string(source/@name)");
        CLEANUP_FREE char *host = xpath_string(ctx, disk, "string(source/host[1]/@name)");
        CLEANUP_FREE char *port = xpath_string(ctx, disk, "string(source/host[1]/@port)");
        CLEANUP_FREE char *sock = xpath_string(ctx, disk, "string(source/host[1]/@socket)");
        char *s;
        int r;
        if (sock)
            r = asprintf(&s, "%s+unix:///%s?socket=%s", proto ? proto : "", name ? name : "", sock);
        else
            r = asprintf(&s, "%s://%s%s%s/%s", proto ? proto : "", host ? host : "",
                         port ? ":" : "", port ? port : "", name ? name : "");
        return r < 0 ? NULL : s;
    }
    if (strcmp(type, "nvme") == 0) {
        CLEANUP_FREE char *dom = xpath_string(ctx, disk, "string(source/address/@domain)");
        CLEANUP_FREE char *bus = xpath_string(ctx, disk, "string(source/address/@bus)");
        CLEANUP_FREE char *slot = xpath_string(ctx, disk, "string(source/address/@slot)");
        CLEANUP_FREE char *fn = xpath_string(ctx, disk, "string(source/address/@function)");
        CLEANUP_FREE char *ns = xpath_string(ctx, disk, "string(source/@namespace)");
        char *s;
        if (asprintf(&s, "nvme://%s:%s:%s.%s/%s", dom ? dom : "", bus ? bus : "", slot ? slot : "",
                     fn ? fn : "", ns ? ns : "") < 0)
            return NULL;
        return s;
    }
    if (strcmp(type, "vhostuser") == 0)
        return xpath_string(ctx, disk, "string(source/@path)");
    return NULL;
}

static char *node_to_string(xmlDocPtr doc, xmlNodePtr node)
{
    xmlBufferPtr buf = xmlBufferCreate();
    if (!buf)
        return NULL;
    char *s = NULL;
    if (xmlNodeDump(buf, doc, node, 0, 0) >= 0)
        s = strdup((const char *)xmlBufferContent(buf));
    xmlBufferFree(buf);
    return s;
}

static void disk_clear(struct vm_disk *d)
{
    free(d->name);
    free(d->target);
    free(d->bus);
    free(d->device);
    free(d->type);
    free(d->source);
    free(d->format);
    free(d->serial);
    free(d->xml);
}

bool vm_name_is_legal(const char *s)
{
    if (!s || !*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return false;
    if (strlen(s) > 255)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p == '/' || *p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

void vm_disks_assign_names(struct vm_disk *disks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct vm_disk *d = &disks[i];
        bool use_serial = d->serial && vm_name_is_legal(d->serial);
        for (size_t j = 0; use_serial && j < n; j++) {
            if (j == i)
                continue;
            /* Another disk with the same serial, or whose target is this serial. */
            if ((disks[j].serial && strcmp(disks[j].serial, d->serial) == 0) ||
                strcmp(disks[j].target, d->serial) == 0)
                use_serial = false;
        }
        free(d->name);
        d->name = strdup(use_serial ? d->serial : d->target);
    }
}

static int parse_disk(xmlDocPtr doc, xmlXPathContextPtr ctx, xmlNodePtr node, struct vm_disk *d,
                      bool *keep)
{
    memset(d, 0, sizeof *d);
    *keep = false;
    d->device = xpath_string(ctx, node, "string(@device)");
    if (!d->device)
        d->device = strdup("disk");
    d->type = xpath_string(ctx, node, "string(@type)");
    if (!d->type)
        d->type = strdup("file");
    d->target = xpath_string(ctx, node, "string(target/@dev)");
    if (!d->target) {
        disk_clear(d);
        return 0; /* libvirt requires a target; ignore what has none */
    }
    d->source = disk_source(ctx, node, d->type);
    bool removable = strcmp(d->device, "cdrom") == 0 || strcmp(d->device, "floppy") == 0;
    if (removable && !d->source) {
        disk_clear(d);
        return 0; /* no media */
    }
    d->source = or_empty(d->source);
    d->bus = or_empty(xpath_string(ctx, node, "string(target/@bus)"));
    d->format = or_empty(xpath_string(ctx, node, "string(driver/@type)"));
    d->serial = xpath_string(ctx, node, "string(serial)");
    d->readonly = xpath_exists(ctx, node, "readonly");
    d->shareable = xpath_exists(ctx, node, "shareable");
    d->xml = node_to_string(doc, node);
    if (!d->device || !d->type || !d->source || !d->bus || !d->format || !d->xml) {
        disk_clear(d);
        return vm_error(ENOMEM, "out of memory");
    }
    *keep = true;
    return 0;
}

struct vm_domain *vm_domxml_parse(const char *xml)
{
    if (!xml)
        return vm_error(EINVAL, "no domain XML"), NULL;
    CLEANUP_XML_DOC xmlDocPtr doc =
        xmlReadMemory(xml, (int)strlen(xml), "domain.xml", NULL,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return vm_error(EINVAL, "domain XML is not well-formed"), NULL;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (!root || strcmp((const char *)root->name, "domain") != 0)
        return vm_error(EINVAL, "XML is not a <domain>"), NULL;
    CLEANUP_XPATH_CTX xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    if (!ctx)
        return vm_error(ENOMEM, "out of memory"), NULL;

    struct vm_domain *dom = calloc(1, sizeof *dom);
    if (!dom)
        return vm_error(ENOMEM, "out of memory"), NULL;
    dom->refcount = 1;
    dom->name = xpath_string(ctx, root, "string(name)");
    CLEANUP_FREE char *uuid = xpath_string(ctx, root, "string(uuid)");
    if (!dom->name || !uuid || strlen(uuid) >= sizeof dom->uuid) {
        vm_domain_unref(dom);
        return vm_error(EINVAL, "domain XML lacks a name or UUID"), NULL;
    }
    strcpy(dom->uuid, uuid);
    dom->xml = strdup(xml);

    ctx->node = root;
    CLEANUP_XPATH_OBJ xmlXPathObjectPtr disks =
        xmlXPathEvalExpression(BAD_CAST "devices/disk", ctx);
    size_t n = (disks && disks->nodesetval) ? (size_t)disks->nodesetval->nodeNr : 0;
    dom->disks = calloc(n ? n : 1, sizeof *dom->disks);
    dom->sizes = calloc(n ? n : 1, sizeof *dom->sizes);
    dom->size_errors = calloc(n ? n : 1, sizeof *dom->size_errors);
    if (!dom->xml || !dom->disks || !dom->sizes || !dom->size_errors) {
        vm_domain_unref(dom);
        return vm_error(ENOMEM, "out of memory"), NULL;
    }
    for (size_t i = 0; i < n; i++) {
        bool keep;
        if (parse_disk(doc, ctx, disks->nodesetval->nodeTab[i], &dom->disks[dom->ndisks], &keep) <
            0) {
            vm_domain_unref(dom);
            return NULL;
        }
        if (keep)
            dom->sizes[dom->ndisks++] = -1;
    }
    vm_disks_assign_names(dom->disks, dom->ndisks);
    for (size_t i = 0; i < dom->ndisks; i++)
        if (!dom->disks[i].name) {
            vm_domain_unref(dom);
            return vm_error(ENOMEM, "out of memory"), NULL;
        }
    return dom;
}

struct vm_domain *vm_domain_ref(struct vm_domain *d)
{
    if (d)
        __atomic_add_fetch(&d->refcount, 1, __ATOMIC_RELAXED);
    return d;
}

void vm_domain_unref(struct vm_domain *d)
{
    if (!d || __atomic_sub_fetch(&d->refcount, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    for (size_t i = 0; i < d->ndisks; i++) {
        disk_clear(&d->disks[i]);
        if (d->size_errors)
            free(d->size_errors[i]);
    }
    free(d->disks);
    free(d->sizes);
    free(d->size_errors);
    free(d->name);
    free(d->xml);
    free(d);
}

const struct vm_disk *vm_domain_find_disk(const struct vm_domain *d, const char *name,
                                          size_t *index)
{
    for (size_t i = 0; i < d->ndisks; i++)
        if (strcmp(d->disks[i].name, name) == 0) {
            if (index)
                *index = i;
            return &d->disks[i];
        }
    return NULL;
}

const char *vm_domain_state_name(int state)
{
    switch (state) {
    case VIR_DOMAIN_RUNNING:
        return "running";
    case VIR_DOMAIN_BLOCKED:
        return "idle";
    case VIR_DOMAIN_PAUSED:
        return "paused";
    case VIR_DOMAIN_SHUTDOWN:
        return "in shutdown";
    case VIR_DOMAIN_SHUTOFF:
        return "shut off";
    case VIR_DOMAIN_CRASHED:
        return "crashed";
    case VIR_DOMAIN_PMSUSPENDED:
        return "pmsuspended";
    default:
        return "no state";
    }
}

/* ---- XML virtmount writes --------------------------------------------- */

/* libvirt's name for scsi unit N of the appliance (sda is the root).  Never
 * handed to the appliance: inside it, drives are reached by serial only. */
static void target_name(unsigned unit, char out[8])
{
    char tmp[8];
    int n = 0;
    unsigned u = unit;
    do {
        tmp[n++] = (char)('a' + u % 26);
        u = u / 26;
    } while (u-- > 0 && n < 5);
    out[0] = 's';
    out[1] = 'd';
    for (int i = 0; i < n; i++)
        out[2 + i] = tmp[n - 1 - i];
    out[2 + n] = '\0';
}

static void escape_into(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            fputs("&amp;", f);
            break;
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '\'':
            fputs("&apos;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            fputc(*s, f);
        }
    }
}

char *vm_xml_appliance(const struct vm_appliance_spec *a)
{
    char *xml = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&xml, &len);
    if (!f)
        return vm_error(ENOMEM, "out of memory"), NULL;
    fprintf(f, "<domain type='%s'>\n  <name>", a->kvm ? "kvm" : "qemu");
    escape_into(f, a->name);
    fprintf(f, "</name>\n  <memory unit='MiB'>%u</memory>\n  <vcpu>%u</vcpu>\n", a->memory_mib,
            a->vcpus);
    fputs("  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n    <kernel>", f);
    escape_into(f, a->kernel);
    fputs("</kernel>\n    <initrd>", f);
    escape_into(f, a->initrd);
    /* The command line libguestfs itself gives its appliance. */
    fprintf(f,
            "</initrd>\n    <cmdline>panic=1 console=ttyS0 edd=off udevtimeout=6000 "
            "udev.event-timeout=6000 no_timer_check printk.time=1 cgroup_disable=memory "
            "usbcore.nousb cryptomgr.notests tsc=reliable 8250.nr_uarts=1 root=UUID=%s "
            "selinux=0 TERM=xterm</cmdline>\n  </os>\n",
            a->root_uuid);
    /* TCG's translation cache grows to 1 GiB with every program the
     * appliance runs and never shrinks: bound it. */
    if (a->kvm)
        fputs("  <features><acpi/><apic/></features>\n", f);
    else
        fputs("  <features><acpi/><apic/><tcg><tb-cache unit='MiB'>256</tb-cache></tcg>"
              "</features>\n",
              f);
    /* Under TCG, the features that make a real CPU copy fastest make an
     * emulated one copy slowest.  With ERMS the appliance's kernel copies
     * every read to and from user space with rep movsb, which TCG runs a
     * byte at a time, and with AVX2 glibc's memcpy uses 256-bit registers
     * TCG emulates in helpers.  Without them (rep movsq, SSE2) a 256 MiB
     * guest file is read at ~110 MiB/s instead of ~50, measured. */
    if (a->kvm)
        fputs("  <cpu mode='host-passthrough'/>\n", f);
    else
        fputs("  <cpu mode='maximum'>\n"
              "    <feature policy='disable' name='la57'/>\n"
              "    <feature policy='disable' name='erms'/>\n"
              "    <feature policy='disable' name='avx'/>\n"
              "    <feature policy='disable' name='avx2'/>\n"
              "  </cpu>\n",
              f);
    fputs("  <clock offset='utc'>\n"
          "    <timer name='rtc' tickpolicy='catchup'/>\n"
          "    <timer name='pit' tickpolicy='delay'/>\n"
          "    <timer name='hpet' present='no'/>\n"
          "  </clock>\n"
          "  <on_poweroff>destroy</on_poweroff>\n"
          "  <on_reboot>destroy</on_reboot>\n"
          "  <on_crash>destroy</on_crash>\n"
          "  <devices>\n"
          "    <controller type='scsi' index='0' model='virtio-scsi'/>\n"
          "    <controller type='usb' model='none'/>\n"
          "    <disk type='file' device='disk'>\n"
          "      <driver name='qemu' type='raw' cache='unsafe'/>\n"
          "      <source file='",
          f);
    escape_into(f, a->root);
    fputs("'/>\n"
          "      <target dev='sda' bus='scsi'/>\n"
          "      <transient shareBacking='yes'/>\n"
          "      <address type='drive' controller='0' bus='0' target='0' unit='0'/>\n"
          "    </disk>\n"
          "    <serial type='pty'><target port='0'/></serial>\n"
          "    <console type='pty'><target type='serial' port='0'/></console>\n"
          "    <channel type='unix'>\n",
          f);
    /* Where libvirt chooses the socket's path (remote hosts need it to), it
     * may choose one too long for a unix socket under the embedded driver's
     * root: the caller may name a short one. */
    if (a->channel_path) {
        fputs("      <source mode='bind' path='", f);
        escape_into(f, a->channel_path);
        fputs("'/>\n", f);
    }
    fputs("      <target type='virtio' name='org.libguestfs.channel.0'/>\n"
          "    </channel>\n",
          f);
    for (unsigned i = 0; i < a->readers && i < VM_APPLIANCE_READERS; i++) {
        fputs("    <channel type='unix'>\n", f);
        if (a->reader_paths[i]) {
            fputs("      <source mode='bind' path='", f);
            escape_into(f, a->reader_paths[i]);
            fputs("'/>\n", f);
        }
        fprintf(f,
                "      <target type='virtio' name='org.virtmount.reader.%u'/>\n"
                "    </channel>\n",
                i + 1);
    }
    fputs("    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\n"
          "    <memballoon model='none'/>\n"
          "  </devices>\n"
          "</domain>\n",
          f);
    if (fclose(f) != 0) {
        free(xml);
        return vm_error(ENOMEM, "out of memory"), NULL;
    }
    return xml;
}

/* Children of a guest's <disk> that describe its place in the guest, not its storage. */
static const char *const dropped_children[] = {
    "target",   "address",   "alias",  "boot",          "iotune",  "serial",
    "readonly", "shareable", "wwn",    "vendor",        "product", "geometry",
    "blockio",  "transient", "mirror", "backenddomain", NULL,
};

char *vm_xml_attach_disk(const char *guest_disk_xml, const char *serial, unsigned unit,
                         bool readonly)
{
    CLEANUP_XML_DOC xmlDocPtr doc = xmlReadMemory(
        guest_disk_xml, (int)strlen(guest_disk_xml), "disk.xml", NULL,
        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_NOBLANKS);
    xmlNodePtr disk = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!disk || strcmp((const char *)disk->name, "disk") != 0)
        return vm_error(EINVAL, "not a <disk> element"), NULL;
    xmlSetProp(disk, BAD_CAST "device", BAD_CAST "disk");
    for (xmlNodePtr c = disk->children, next; c; c = next) {
        next = c->next;
        bool drop = c->type != XML_ELEMENT_NODE;
        for (size_t i = 0; !drop && dropped_children[i]; i++)
            drop = strcmp((const char *)c->name, dropped_children[i]) == 0;
        if (drop) {
            xmlUnlinkNode(c);
            xmlFreeNode(c);
        }
    }
    char dev[8], unit_text[16];
    target_name(unit, dev);
    snprintf(unit_text, sizeof unit_text, "%u", unit);
    xmlNodePtr t = xmlNewChild(disk, NULL, BAD_CAST "target", NULL);
    xmlSetProp(t, BAD_CAST "dev", BAD_CAST dev);
    xmlSetProp(t, BAD_CAST "bus", BAD_CAST "scsi");
    xmlNewTextChild(disk, NULL, BAD_CAST "serial", BAD_CAST serial);
    if (readonly)
        xmlNewChild(disk, NULL, BAD_CAST "readonly", NULL);
    xmlNodePtr a = xmlNewChild(disk, NULL, BAD_CAST "address", NULL);
    xmlSetProp(a, BAD_CAST "type", BAD_CAST "drive");
    xmlSetProp(a, BAD_CAST "controller", BAD_CAST "0");
    xmlSetProp(a, BAD_CAST "bus", BAD_CAST "0");
    xmlSetProp(a, BAD_CAST "target", BAD_CAST "0");
    xmlSetProp(a, BAD_CAST "unit", BAD_CAST unit_text);
    return node_to_string(doc, disk);
}

char *vm_xml_backup(const struct vm_domain *d, const char *socket, const char *scratch_dir,
                    const char *scratch_prefix)
{
    char *xml = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&xml, &len);
    if (!f)
        return vm_error(ENOMEM, "out of memory"), NULL;
    fputs("<domainbackup mode='pull'>\n  <server transport='unix' socket='", f);
    escape_into(f, socket);
    fputs("'/>\n  <disks>\n", f);
    for (size_t i = 0; i < d->ndisks; i++) {
        const struct vm_disk *k = &d->disks[i];
        fputs("    <disk name='", f);
        escape_into(f, k->target);
        /* libvirt skips read-only and empty disks: say so rather than fail. */
        if (k->readonly || !*k->source || strcmp(k->device, "disk") != 0) {
            fputs("' backup='no'/>\n", f);
            continue;
        }
        /* libvirt would make a scratch file itself only beside a file disk,
         * and 9.0 fails at that ("argument key 'filename' must not have null
         * value"): name every one. */
        fputs("' backup='yes' type='file'>\n      <scratch file='", f);
        escape_into(f, scratch_dir);
        fputc('/', f);
        escape_into(f, scratch_prefix);
        escape_into(f, k->target);
        fputs(".qcow2'/>\n    </disk>\n", f);
    }
    fputs("  </disks>\n</domainbackup>\n", f);
    if (fclose(f) != 0) {
        free(xml);
        return vm_error(ENOMEM, "out of memory"), NULL;
    }
    return xml;
}

char *vm_xml_attach_nbd(const char *socket, const char *export_name, const char *serial,
                        unsigned unit)
{
    char dev[8];
    target_name(unit, dev);
    char *xml = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&xml, &len);
    if (!f)
        return vm_error(ENOMEM, "out of memory"), NULL;
    fputs("<disk type='network' device='disk'>\n"
          "  <driver name='qemu' type='raw'/>\n"
          "  <source protocol='nbd' name='",
          f);
    escape_into(f, export_name);
    fputs("'>\n    <host transport='unix' socket='", f);
    escape_into(f, socket);
    fprintf(f, "'/>\n  </source>\n  <target dev='%s' bus='scsi'/>\n  <serial>", dev);
    escape_into(f, serial);
    fprintf(f,
            "</serial>\n  <readonly/>\n"
            "  <address type='drive' controller='0' bus='0' target='0' unit='%u'/>\n"
            "</disk>\n",
            unit);
    if (fclose(f) != 0) {
        free(xml);
        return vm_error(ENOMEM, "out of memory"), NULL;
    }
    return xml;
}
