/* A host's directory: one subdirectory per domain, by name.  When the host
 * is down, listing and lookups fail with EHOSTUNREACH and .status says why.
 */
#include "fs.h"

#include <errno.h>
#include <string.h>

static struct node_id domain_id(struct vm_host *h, const struct vm_domain *d)
{
    struct node_id id = {.kind = NODE_DOMAIN, .host = h};
    memcpy(id.uuid, d->uuid, sizeof id.uuid);
    return id;
}

static int host_getattr(const struct node *n, struct stat *st)
{
    struct vm_domlist *list = vm_host_domains(n->host);
    node_fill_dir(st, 0555, list ? list->n : 0, list ? list->read_at : fs_mount_time());
    vm_domlist_unref(list);
    return 0; /* a down host's directory still exists; only its content is unreachable */
}

static int host_lookup(const struct node *dir, const char *name, struct node_id *child)
{
    struct vm_domlist *list = vm_host_domains(dir->host);
    if (!list)
        return -1;
    struct vm_domain *d = vm_domlist_find(list, name);
    int r = d ? 0 : vm_error(ENOENT, "no domain %s on %s", name, vm_host_name(dir->host));
    if (d)
        *child = domain_id(dir->host, d);
    vm_domlist_unref(list);
    return r;
}

static int host_readdir(const struct node *dir, struct dir_list *out)
{
    struct vm_domlist *list = vm_host_domains(dir->host);
    if (!list)
        return -1;
    int r = 0;
    for (size_t i = 0; i < list->n && r == 0; i++) {
        struct node_id id = domain_id(dir->host, list->v[i]);
        r = dir_list_add(out, &id, list->v[i]->name);
    }
    vm_domlist_unref(list);
    return r;
}

const struct node_ops node_host_ops = {
    .is_dir = true,
    .getattr = host_getattr,
    .lookup = host_lookup,
    .readdir = host_readdir,
};
