/* The root: one directory per configured host, and .status. */
#include "fs.h"

#include <errno.h>
#include <string.h>

static int root_getattr(const struct node *n, struct stat *st)
{
    size_t nhosts;
    inode_hosts(&nhosts);
    node_fill_dir(st, 0555, nhosts, fs_mount_time());
    return 0;
}

static int root_lookup(const struct node *dir, const char *name, struct node_id *child)
{
    if (strcmp(name, ".status") == 0) {
        *child = (struct node_id){.kind = NODE_STATUS};
        return 0;
    }
    size_t nhosts;
    struct vm_host **hosts = inode_hosts(&nhosts);
    for (size_t i = 0; i < nhosts; i++)
        if (strcmp(vm_host_name(hosts[i]), name) == 0) {
            *child = (struct node_id){.kind = NODE_HOST, .host = hosts[i]};
            return 0;
        }
    return vm_error(ENOENT, "no host %s", name);
}

static int root_readdir(const struct node *dir, struct dir_list *list)
{
    if (dir_list_add(list, &(struct node_id){.kind = NODE_STATUS}, ".status") < 0)
        return -1;
    size_t nhosts;
    struct vm_host **hosts = inode_hosts(&nhosts);
    for (size_t i = 0; i < nhosts; i++)
        if (dir_list_add(list, &(struct node_id){.kind = NODE_HOST, .host = hosts[i]},
                         vm_host_name(hosts[i])) < 0)
            return -1;
    return 0;
}

const struct node_ops node_root_ops = {
    .is_dir = true,
    .getattr = root_getattr,
    .lookup = root_lookup,
    .readdir = root_readdir,
};
