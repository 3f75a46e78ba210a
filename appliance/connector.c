/* virtmount-connector: the "qemu" that libguestfs's direct backend runs.
 *
 * libguestfs 1.48 can no longer attach a handle to an appliance it did not
 * start, but it runs whatever set_hv() names.  This program stands in for
 * qemu: probes (-help, -version, the QMP query) go to the real qemu; at the
 * real launch, recognised by `-chardev socket,path=SOCK,id=channel0`, it
 * connects to SOCK, the socket the library listens on, and hands that
 * connection to virtmount over the relay socket named by
 * `-virtmount-relay NAME` (an abstract unix socket; guestfs_config adds it),
 * with SCM_RIGHTS.  virtmount then bridges it to the appliance's channel.
 * This process stays, idle, as the "qemu" libguestfs watches: it keeps
 * stdin and stdout open, exits 0 on SIGTERM (guestfs_shutdown), and exits
 * when virtmount closes the relay.
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef REAL_QEMU
#define REAL_QEMU "/usr/bin/qemu-system-x86_64"
#endif

static void on_term(int sig)
{
    _exit(0);
}

static int connect_unix(const char *name, int abstract)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    if (len + 1 >= sizeof sa.sun_path)
        return errno = ENAMETOOLONG, -1;
    memcpy(sa.sun_path + (abstract ? 1 : 0), name, len);
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    for (int tries = 0; tries < 100; tries++) {
        if (connect(fd, (struct sockaddr *)&sa, salen) == 0)
            return fd;
        if (errno != ENOENT && errno != ECONNREFUSED)
            break;
        usleep(50000);
    }
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

static int send_fd(int relay, int fd)
{
    char byte = 'F';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    return sendmsg(relay, &msg, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *chardev = NULL, *relay_name = NULL;
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "-chardev") == 0 && strncmp(argv[i + 1], "socket,", 7) == 0 &&
            strstr(argv[i + 1], "id=channel0"))
            chardev = argv[i + 1];
        else if (strcmp(argv[i], "-virtmount-relay") == 0)
            relay_name = argv[i + 1];
    }
    if (!chardev || !relay_name) {
        const char *qemu = getenv("VIRTMOUNT_REAL_QEMU");
        argv[0] = (char *)(qemu ? qemu : REAL_QEMU);
        execv(argv[0], argv);
        fprintf(stderr, "virtmount-connector: cannot run %s: %s\n", argv[0], strerror(errno));
        return 127;
    }

    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);

    char path[sizeof((struct sockaddr_un *)0)->sun_path] = "";
    const char *p = strstr(chardev, "path=");
    if (p) {
        p += 5;
        size_t n = strcspn(p, ",");
        if (n >= sizeof path)
            n = sizeof path - 1;
        memcpy(path, p, n);
        path[n] = '\0';
    }
    int library = path[0] ? connect_unix(path, 0) : -1;
    if (library < 0) {
        fprintf(stderr, "virtmount-connector: cannot connect to libguestfs's socket %s: %s\n", path,
                strerror(errno));
        return 1;
    }
    int relay = connect_unix(relay_name, 1);
    if (relay < 0) {
        fprintf(stderr, "virtmount-connector: cannot reach virtmount's relay %s: %s\n", relay_name,
                strerror(errno));
        return 1;
    }
    if (send_fd(relay, library) < 0) {
        fprintf(stderr, "virtmount-connector: cannot hand over the connection: %s\n",
                strerror(errno));
        return 1;
    }
    close(library);
    /* Stay as the "qemu" libguestfs watches until virtmount lets go. */
    char buf[64];
    while (read(relay, buf, sizeof buf) > 0 || errno == EINTR)
        ;
    return 0;
}
