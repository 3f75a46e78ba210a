/* The settings every lib/ module reads: set once by fs/main.c from the
 * options before any thread starts, read-only afterwards.
 */
#include "virtmount.h"

struct vm_settings vm_settings = {
    .statedir = "/var/lib/virtmount",
    .accel = VM_ACCEL_AUTO,
    .max_drives = 254,
    .appliance_idle = 300,
    .appliance_eager = false,
    .appliance_memory = 1024,
    .appliances = 1,
    .isolate_domain = false,
};
