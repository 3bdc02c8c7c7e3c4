/*
 * An LD_PRELOAD shim for the suite: the kernel refuses the Nth rtnetlink request that would
 * change something, so that a test can make an apply fail at every one of its steps without a
 * line of test code in the agent.
 *
 * Each send(), sendto() or sendmsg() on a NETLINK_ROUTE socket whose message is a change
 * request (RTM_NEW*, RTM_DEL*, RTM_SET*: every rtnetlink type at or above RTM_BASE that is not a
 * get, gets being 2 mod 4) is counted. The one numbered CHAOS_FAIL_NTH (from 1) goes to the
 * kernel with its type set past RTM_MAX, which rtnetlink_rcv_msg() answers with an error ack
 * (-EOPNOTSUPP) for the same sequence number: to the agent it is the kernel saying no to that
 * step, at that moment, like any other netlink error. Every request before and after it
 * passes untouched. With CHAOS_FAIL_LOG set, a line per counted request is appended there:
 * "N passed|refused type T".
 *
 * Built by chaos_testing::netlink_refuse_shim() with the machine's cc; glibc only (the VM
 * guest's static musl binaries cannot be preloaded).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define RTM_BASE_TYPE 16
#define PAST_RTM_MAX 0x7fff

static atomic_long counted;

static int is_rtnetlink(int fd) {
    struct sockaddr_nl sa;
    socklen_t len = sizeof sa;
    int proto = -1;
    socklen_t plen = sizeof proto;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0 || sa.nl_family != AF_NETLINK)
        return 0;
    return getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &plen) == 0 && proto == NETLINK_ROUTE;
}

static void note(long n, int refused, int type) {
    const char *path = getenv("CHAOS_FAIL_LOG");
    if (!path)
        return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    char line[64];
    int len = snprintf(line, sizeof line, "%ld %s type %d\n", n, refused ? "refused" : "passed", type);
    if (len > 0)
        (void)!write(fd, line, (size_t)len);
    close(fd);
}

/* A copy of buf to send instead of it when this request is the one to refuse; else NULL. */
static void *refused_copy(int fd, const void *buf, size_t len) {
    struct nlmsghdr h;
    if (len < sizeof h || !is_rtnetlink(fd))
        return NULL;
    memcpy(&h, buf, sizeof h);
    /* Not NLM_F_DUMP: on a new request its bits are NLM_F_REPLACE and NLM_F_EXCL. */
    if (h.nlmsg_type < RTM_BASE_TYPE || (h.nlmsg_type & 3) == 2)
        return NULL;
    long n = atomic_fetch_add(&counted, 1) + 1;
    const char *nth = getenv("CHAOS_FAIL_NTH");
    int refuse = nth && atol(nth) == n;
    note(n, refuse, h.nlmsg_type);
    if (!refuse)
        return NULL;
    void *copy = malloc(len);
    if (!copy)
        return NULL;
    memcpy(copy, buf, len);
    ((struct nlmsghdr *)copy)->nlmsg_type = PAST_RTM_MAX;
    return copy;
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    static ssize_t (*real)(int, const void *, size_t, int);
    if (!real)
        real = dlsym(RTLD_NEXT, "send");
    void *copy = refused_copy(fd, buf, len);
    ssize_t r = real(fd, copy ? copy : buf, len, flags);
    free(copy);
    return r;
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to,
               socklen_t tolen) {
    static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    if (!real)
        real = dlsym(RTLD_NEXT, "sendto");
    void *copy = refused_copy(fd, buf, len);
    ssize_t r = real(fd, copy ? copy : buf, len, flags, to, tolen);
    free(copy);
    return r;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    static ssize_t (*real)(int, const struct msghdr *, int);
    if (!real)
        real = dlsym(RTLD_NEXT, "sendmsg");
    if (msg->msg_iovlen < 1)
        return real(fd, msg, flags);
    void *copy = refused_copy(fd, msg->msg_iov[0].iov_base, msg->msg_iov[0].iov_len);
    if (!copy)
        return real(fd, msg, flags);
    struct iovec iov[msg->msg_iovlen];
    memcpy(iov, msg->msg_iov, sizeof iov);
    iov[0].iov_base = copy;
    struct msghdr m = *msg;
    m.msg_iov = iov;
    ssize_t r = real(fd, &m, flags);
    free(copy);
    return r;
}
