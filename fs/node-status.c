/* /.status: per host, the connection in use and whether it is up, and why
 * not, its plugs and appliances; then what was read ahead (prefetch.c). */
#include "fs.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
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
    FILE *f = open_memstream(buf, len);
    if (!f)
        return vm_error(ENOMEM, "out of memory");
    for (size_t i = 0; i < nhosts; i++) {
        vm_host_status(hosts[i], f);
        vm_plug_status(hosts[i], f);
    }
    struct prefetch_stats ps;
    prefetch_get_stats(&ps);
    fprintf(f, "read ahead: %" PRIu64 " files, %" PRIu64 " KiB; %" PRIu64 " of them opened since\n",
            ps.files, ps.bytes / 1024, ps.opened);
    if (fclose(f) != 0) {
        free(*buf);
        return vm_error(ENOMEM, "out of memory");
    }
    return 0;
}

const struct node_ops node_status_ops = {
    .getattr = status_getattr,
    .content = status_content,
};
