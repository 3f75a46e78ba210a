/* disks/: the disks of a domain plugged into an appliance.  Empty until the
 * appliance exists; mkdir here is where plugging will start.
 */
#include "fs.h"

#include <errno.h>

static int disks_getattr(const struct node *n, struct stat *st)
{
    struct resolved r;
    if (node_resolve(n, &r) < 0)
        return -1;
    /* Writable by its owner: mkdir/rmdir here plug and unplug. */
    node_fill_dir(st, 0755, 0, r.domain->read_at);
    resolved_release(&r);
    return 0;
}

static int disks_lookup(const struct node *dir, const char *name, struct node_id *child)
{
    return vm_error(ENOENT, "%s is not plugged", name);
}

static int disks_readdir(const struct node *dir, struct dir_list *list)
{
    return 0;
}

const struct node_ops node_disks_ops = {
    .is_dir = true,
    .getattr = disks_getattr,
    .lookup = disks_lookup,
    .readdir = disks_readdir,
};
