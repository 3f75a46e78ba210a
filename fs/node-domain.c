/* A domain's directory (domain.xml, state, devices/, disks/) and its two files. */
#include "fs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { FILE_XML, FILE_STATE, NFILES };
static const char *const file_names[NFILES] = {"domain.xml", "state"};

static int domain_getattr(const struct node *n, struct stat *st)
{
    struct resolved r;
    if (node_resolve(n, &r) < 0)
        return -1;
    node_fill_dir(st, 0555, 2, r.domain->read_at);
    resolved_release(&r);
    return 0;
}

static int domain_lookup(const struct node *dir, const char *name, struct node_id *child)
{
    for (int i = 0; i < NFILES; i++)
        if (strcmp(name, file_names[i]) == 0) {
            *child = node_child(dir, NODE_DOMAIN_FILE, NULL, i);
            return 0;
        }
    if (strcmp(name, "devices") == 0)
        *child = node_child(dir, NODE_DEVICES, NULL, 0);
    else if (strcmp(name, "disks") == 0)
        *child = node_child(dir, NODE_DISKS, NULL, 0);
    else
        return vm_error(ENOENT, "no %s in a domain's directory", name);
    return 0;
}

static int domain_readdir(const struct node *dir, struct dir_list *list)
{
    for (int i = 0; i < NFILES; i++) {
        struct node_id id = node_child(dir, NODE_DOMAIN_FILE, NULL, i);
        if (dir_list_add(list, &id, file_names[i]) < 0)
            return -1;
    }
    struct node_id devices = node_child(dir, NODE_DEVICES, NULL, 0);
    struct node_id disks = node_child(dir, NODE_DISKS, NULL, 0);
    if (dir_list_add(list, &devices, "devices") < 0 || dir_list_add(list, &disks, "disks") < 0)
        return -1;
    return 0;
}

const struct node_ops node_domain_ops = {
    .is_dir = true,
    .getattr = domain_getattr,
    .lookup = domain_lookup,
    .readdir = domain_readdir,
};

static int domain_file_getattr(const struct node *n, struct stat *st)
{
    struct resolved r;
    if (node_resolve(n, &r) < 0)
        return -1;
    node_fill_file(st, r.domain->read_at);
    resolved_release(&r);
    return 0;
}

static int domain_file_content(const struct node *n, char **buf, size_t *len)
{
    struct resolved r;
    if (node_resolve(n, &r) < 0)
        return -1;
    int ret;
    if (n->file == FILE_XML)
        ret = asprintf(buf, "%s", r.domain->xml);
    else
        ret = asprintf(buf, "%s\n", vm_domain_state_name(r.domain->state));
    resolved_release(&r);
    if (ret < 0)
        return vm_error(ENOMEM, "out of memory");
    *len = (size_t)ret;
    return 0;
}

const struct node_ops node_domain_file_ops = {
    .getattr = domain_file_getattr,
    .content = domain_file_content,
};
