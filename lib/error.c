/* The thread-local error every lib/ function records before returning -1 or
 * NULL: an errno and a message that keeps the libvirt or libguestfs text.
 * It never prints: only fs/main.c decides what is logged.
 */
#include "virtmount.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <libvirt/virterror.h>

static __thread int error_errno;
static __thread char error_message[1024];

static void record(int errnum, const char *suffix, const char *fmt, va_list ap)
{
    /* Format aside first: an argument may be vm_error_message() itself. */
    char message[sizeof error_message];
    int n = vsnprintf(message, sizeof message, fmt, ap);
    if (n >= 0 && suffix && (size_t)n < sizeof message)
        snprintf(message + n, sizeof message - (size_t)n, ": %s", suffix);
    memcpy(error_message, message, sizeof message);
    error_errno = errnum ? errnum : EIO;
}

int vm_error(int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(errnum, NULL, fmt, ap);
    va_end(ap);
    errno = error_errno;
    return -1;
}

int vm_error_libvirt(int errnum, const char *fmt, ...)
{
    /* Copy first: formatting may not touch libvirt, but be safe. */
    char libvirt_message[512];
    const char *m = virGetLastErrorMessage();
    snprintf(libvirt_message, sizeof libvirt_message, "%s", m ? m : "unknown libvirt error");
    va_list ap;
    va_start(ap, fmt);
    record(errnum, libvirt_message, fmt, ap);
    va_end(ap);
    errno = error_errno;
    return -1;
}

int vm_error_errno(void)
{
    return error_errno ? error_errno : EIO;
}

const char *vm_error_message(void)
{
    return error_message;
}

void vm_error_clear(void)
{
    error_errno = 0;
    error_message[0] = '\0';
}
