/* /.status: per host, the connection in use and whether it is up, and why not. */
#include "fs.h"

#include <errno.h>
#include <stdlib.h>

static int status_getattr(const struct node *n, struct stat *st)
{
    node_fill_file(st, time(NULL));
    return 0;
}

static int status_content(const struct node *n, char **buf, size_t *len)
{
    size_t nhosts;
    struct vm_host **hosts = inode_hosts(&nhosts);
    *buf = NULL;
    *len = 0;
    for (size_t i = 0; i < nhosts; i++)
        if (vm_host_status(hosts[i], buf, len) < 0 || vm_plug_status(hosts[i], buf, len) < 0) {
            free(*buf);
            return -1;
        }
    if (!*buf && !(*buf = calloc(1, 1)))
        return vm_error(ENOMEM, "out of memory");
    return 0;
}

const struct node_ops node_status_ops = {
    .getattr = status_getattr,
    .content = status_content,
};
