/* devices/: every disk of a domain by name, each a directory of small files
 * (target, bus, source, format, size, readonly, plugged).
 */
#include "fs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <inttypes.h>
#include <string.h>

enum { F_TARGET, F_BUS, F_SOURCE, F_FORMAT, F_SIZE, F_READONLY, F_PLUGGED, NFILES };
static const char *const file_names[NFILES] = {"target", "bus",      "source", "format",
                                               "size",   "readonly", "plugged"};

static int devices_getattr(const struct node *n, struct stat *st)
{
    struct resolved r;
    if (node_resolve(n, &r) < 0)
        return -1;
    node_fill_dir(st, 0555, r.domain->ndisks, r.domain->read_at);
    resolved_release(&r);
    return 0;
}

static int devices_lookup(const struct node *dir, const char *name, struct node_id *child)
{
    struct resolved r;
    if (node_resolve(dir, &r) < 0)
        return -1;
    bool found = vm_domain_find_disk(r.domain, name, NULL) != NULL;
    resolved_release(&r);
    if (!found)
        return vm_error(ENOENT, "no disk %s", name);
    *child = node_child(dir, NODE_DEVICE, name, 0);
    return 0;
}

static int devices_readdir(const struct node *dir, struct dir_list *list)
{
    struct resolved r;
    if (node_resolve(dir, &r) < 0)
        return -1;
    int ret = 0;
    for (size_t i = 0; i < r.domain->ndisks && ret == 0; i++) {
        struct node_id id = node_child(dir, NODE_DEVICE, r.domain->disks[i].name, 0);
        ret = dir_list_add(list, &id, r.domain->disks[i].name);
    }
    resolved_release(&r);
    return ret;
}

const struct node_ops node_devices_ops = {
    .is_dir = true,
    .getattr = devices_getattr,
    .lookup = devices_lookup,
    .readdir = devices_readdir,
};

static int device_getattr(const struct node *n, struct stat *st)
{
    struct resolved r;
    if (node_resolve(n, &r) < 0)
        return -1;
    node_fill_dir(st, 0555, 0, r.domain->read_at);
    resolved_release(&r);
    return 0;
}

static int device_lookup(const struct node *dir, const char *name, struct node_id *child)
{
    for (int i = 0; i < NFILES; i++)
        if (strcmp(name, file_names[i]) == 0) {
            *child = node_child(dir, NODE_DEVICE_FILE, NULL, i);
            return 0;
        }
    return vm_error(ENOENT, "no %s in a device's directory", name);
}

static int device_readdir(const struct node *dir, struct dir_list *list)
{
    for (int i = 0; i < NFILES; i++) {
        struct node_id id = node_child(dir, NODE_DEVICE_FILE, NULL, i);
        if (dir_list_add(list, &id, file_names[i]) < 0)
            return -1;
    }
    return 0;
}

const struct node_ops node_device_ops = {
    .is_dir = true,
    .getattr = device_getattr,
    .lookup = device_lookup,
    .readdir = device_readdir,
};

static int device_file_getattr(const struct node *n, struct stat *st)
{
    struct resolved r;
    if (node_resolve(n, &r) < 0)
        return -1;
    node_fill_file(st, r.domain->read_at);
    resolved_release(&r);
    return 0;
}

static int device_file_content(const struct node *n, char **buf, size_t *len)
{
    struct resolved r;
    if (node_resolve(n, &r) < 0)
        return -1;
    const struct vm_disk *d = r.disk;
    int ret;
    switch (n->file) {
    case F_TARGET:
        ret = asprintf(buf, "%s\n", d->target);
        break;
    case F_BUS:
        ret = asprintf(buf, "%s\n", d->bus);
        break;
    case F_SOURCE:
        ret = asprintf(buf, "%s\n", d->source);
        break;
    case F_FORMAT:
        ret = asprintf(buf, "%s\n", d->format);
        break;
    case F_SIZE:
        if (r.domain->sizes[r.disk_index] < 0) {
            vm_error(EIO, "size of disk %s of %s unknown: %s", d->name, r.domain->name,
                     r.domain->size_errors[r.disk_index] ? r.domain->size_errors[r.disk_index]
                                                         : "libvirt gave none");
            resolved_release(&r);
            return -1;
        }
        ret = asprintf(buf, "%" PRId64 "\n", r.domain->sizes[r.disk_index]);
        break;
    case F_READONLY:
        ret = asprintf(buf, "%d\n", d->readonly ? 1 : 0);
        break;
    default:
        ret = asprintf(buf, "%d\n", vm_plug_is_plugged(n->host, n->uuid, d->name) ? 1 : 0);
        break;
    }
    resolved_release(&r);
    if (ret < 0)
        return vm_error(ENOMEM, "out of memory");
    *len = (size_t)ret;
    return 0;
}

const struct node_ops node_device_file_ops = {
    .getattr = device_file_getattr,
    .content = device_file_content,
};
