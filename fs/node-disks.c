/* disks/: the disks of a domain plugged into an appliance.  mkdir plugs a
 * disk of devices/ and returns once its filesystems can be listed; rmdir
 * unplugs it.
 */
#include "fs.h"

#include <errno.h>
#include <string.h>

static int disks_getattr(const struct node *n, struct stat *st)
{
    struct resolved r;
    if (node_resolve(n, &r) < 0)
        return -1;
    size_t nplugged = 0;
    char **names = vm_plug_names(n->host, n->uuid, &nplugged);
    for (size_t i = 0; names && names[i]; i++)
        free(names[i]);
    free(names);
    /* Writable by its owner: mkdir/rmdir here plug and unplug. */
    node_fill_dir(st, 0755, nplugged, r.domain->read_at);
    resolved_release(&r);
    return 0;
}

static int disks_lookup(const struct node *dir, const char *name, struct node_id *child)
{
    if (!vm_plug_is_plugged(dir->host, dir->uuid, name))
        return vm_error(ENOENT, "%s is not plugged", name);
    *child = node_child(dir, NODE_PLUGGED, name, 0);
    return 0;
}

static int disks_readdir(const struct node *dir, struct dir_list *list)
{
    size_t n = 0;
    char **names = vm_plug_names(dir->host, dir->uuid, &n);
    if (!names)
        return vm_error(ENOMEM, "out of memory");
    int r = 0;
    for (size_t i = 0; i < n; i++) {
        struct node_id id = node_child(dir, NODE_PLUGGED, names[i], 0);
        if (r == 0 && names[i])
            r = dir_list_add(list, &id, names[i]);
        free(names[i]);
    }
    free(names);
    return r;
}

static int disks_mkdir(const struct node *dir, const char *name)
{
    return vm_plug_disk(dir->host, dir->uuid, name);
}

static int disks_rmdir(const struct node *dir, const char *name)
{
    return vm_unplug_disk(dir->host, dir->uuid, name);
}

const struct node_ops node_disks_ops = {
    .is_dir = true,
    .getattr = disks_getattr,
    .lookup = disks_lookup,
    .readdir = disks_readdir,
    .mkdir = disks_mkdir,
    .rmdir = disks_rmdir,
};
