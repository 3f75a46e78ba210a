/* lib/'s private declarations, in sections named after the .c files.
 * fs/ includes only virtmount.h; unit tests may include this.
 */
#ifndef VIRTMOUNT_INTERNAL_H
#define VIRTMOUNT_INTERNAL_H

#include "virtmount.h"

/* ---- domxml.c ---- */

/** Give each of N disks its name: serial when legal and unique, else target. */
void vm_disks_assign_names(struct vm_disk *disks, size_t n);

/* ---- host.c ---- */

/** The qemu.conf virtmount writes for its embedded driver when none exists. */
extern const char vm_embed_qemu_conf[];

#endif
