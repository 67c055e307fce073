/*
 * Network actions for the network sensor's end-to-end test (tests/e2e_network.rs).
 *
 * Every address used is on this machine: the container's own loopback (127.0.0.1, ::1) and
 * unix sockets inside the container. Nothing ever leaves the host.
 *
 * Usage: net_actions sendto PORT
 *   One UDP datagram from an unconnected socket to 127.0.0.1:PORT (sendto with an address);
 *   prints "sent" or "sendto: <error>" and exits 0 either way.
 *
 * Usage: net_actions all
 *   Brings the container's loopback up if it is down (needs CAP_NET_ADMIN in the container),
 *   then, in this order:
 *     TCP  IPv4: listen 127.0.0.1:7001, connect, accept
 *     TCP  IPv6: listen [::1]:7002, connect, accept4
 *     TCP  IPv4: non-blocking connect to 127.0.0.1:7009 (nothing listens: -EINPROGRESS)
 *     TCP  IPv4: blocking connect to 127.0.0.1:7010 (nothing listens: -ECONNREFUSED)
 *     UDP  IPv4: connect to 127.0.0.1:7003 (bound), then 5 more identical connects
 *     UDP  IPv6: connect to [::1]:7004 (bound)
 *     unix stream: listen /tmp/net_actions.sock, connect, accept
 *     unix dgram:  connect to the abstract name "@custos-net-actions" (last action)
 *   Prints one line per action with what the test cannot know in advance (ephemeral ports,
 *   fds), e.g. "tcp4 client_port=40000 accept_fd=5". Exits non-zero on any unexpected result.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "net_actions: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void loopback_up(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket for ioctl");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS lo");
    if (!(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS lo up");
    }
    close(fd);
}

static socklen_t inet_addr_of(int family, const char *ip, int port, struct sockaddr_storage *out) {
    memset(out, 0, sizeof *out);
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        if (inet_pton(AF_INET, ip, &sin->sin_addr) != 1) die("inet_pton");
        return sizeof *sin;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) != 1) die("inet_pton6");
    return sizeof *sin6;
}

static int local_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) die("getsockname");
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* listen on ip:port, connect to it, accept (accept4 when use_accept4). */
static void tcp_round(const char *label, int family, const char *ip, int port, int use_accept4) {
    struct sockaddr_storage addr;
    socklen_t len = inet_addr_of(family, ip, port, &addr);
    int server = socket(family, SOCK_STREAM, 0);
    if (server < 0) die("socket server");
    int one = 1;
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(server, (struct sockaddr *)&addr, len) < 0) die("bind tcp");
    if (listen(server, 8) < 0) die("listen tcp");
    int client = socket(family, SOCK_STREAM, 0);
    if (client < 0) die("socket client");
    if (connect(client, (struct sockaddr *)&addr, len) < 0) die("connect tcp");
    int accepted = use_accept4 ? accept4(server, NULL, NULL, SOCK_CLOEXEC)
                               : accept(server, NULL, NULL);
    if (accepted < 0) die("accept");
    printf("%s client_port=%d accept_fd=%d\n", label, local_port(client), accepted);
    close(accepted);
    close(client);
    close(server);
}

static void tcp_refused(void) {
    struct sockaddr_storage addr;
    socklen_t len = inet_addr_of(AF_INET, "127.0.0.1", 7009, &addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket nonblock");
    if (connect(fd, (struct sockaddr *)&addr, len) == 0 || errno != EINPROGRESS)
        die("non-blocking connect to 7009 did not give EINPROGRESS");
    printf("tcp4-nonblock result=%d\n", -EINPROGRESS);
    close(fd);

    len = inet_addr_of(AF_INET, "127.0.0.1", 7010, &addr);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket refused");
    if (connect(fd, (struct sockaddr *)&addr, len) == 0 || errno != ECONNREFUSED)
        die("connect to 7010 was not refused");
    printf("tcp4-refused result=%d\n", -ECONNREFUSED);
    close(fd);
}

/* A bound UDP socket on ip:port, and `times` client sockets that connect to it. */
static void udp_round(const char *label, int family, const char *ip, int port, int times) {
    struct sockaddr_storage addr;
    socklen_t len = inet_addr_of(family, ip, port, &addr);
    int server = socket(family, SOCK_DGRAM, 0);
    if (server < 0) die("socket udp server");
    if (bind(server, (struct sockaddr *)&addr, len) < 0) die("bind udp");
    for (int i = 0; i < times; i++) {
        int client = socket(family, SOCK_DGRAM, 0);
        if (client < 0) die("socket udp client");
        if (connect(client, (struct sockaddr *)&addr, len) < 0) die("connect udp");
        if (i == 0) printf("%s client_port=%d\n", label, local_port(client));
        close(client);
    }
    close(server);
}

static void unix_stream_round(void) {
    const char *path = "/tmp/net_actions.sock";
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    unlink(path);
    int server = socket(AF_UNIX, SOCK_STREAM, 0);
    if (server < 0) die("socket unix");
    if (bind(server, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind unix");
    if (listen(server, 8) < 0) die("listen unix");
    int client = socket(AF_UNIX, SOCK_STREAM, 0);
    if (client < 0) die("socket unix client");
    if (connect(client, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect unix");
    int accepted = accept(server, NULL, NULL);
    if (accepted < 0) die("accept unix");
    printf("unix-stream accept_fd=%d\n", accepted);
    close(accepted);
    close(client);
    close(server);
    unlink(path);
}

static void unix_abstract_round(void) {
    static const char name[] = "custos-net-actions";
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path + 1, name, sizeof name - 1);
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + sizeof name - 1;
    int server = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (server < 0) die("socket abstract");
    if (bind(server, (struct sockaddr *)&addr, len) < 0) die("bind abstract");
    int client = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (client < 0) die("socket abstract client");
    if (connect(client, (struct sockaddr *)&addr, len) < 0) die("connect abstract");
    printf("unix-abstract ok\n");
    close(client);
    close(server);
}

static int sendto_once(int port) {
    struct sockaddr_storage addr;
    socklen_t len = inet_addr_of(AF_INET, "127.0.0.1", port, &addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket udp");
    if (sendto(fd, "x", 1, 0, (struct sockaddr *)&addr, len) < 0) {
        printf("sendto: %s\n", strerror(errno));
    } else {
        printf("sent\n");
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "sendto") == 0) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        return sendto_once(atoi(argv[2]));
    }
    if (argc != 2 || strcmp(argv[1], "all") != 0) {
        fprintf(stderr, "usage: net_actions all\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    loopback_up();
    tcp_round("tcp4", AF_INET, "127.0.0.1", 7001, 0);
    tcp_round("tcp6", AF_INET6, "::1", 7002, 1);
    tcp_refused();
    udp_round("udp4", AF_INET, "127.0.0.1", 7003, 6);
    udp_round("udp6", AF_INET6, "::1", 7004, 1);
    unix_stream_round();
    unix_abstract_round();
    return 0;
}
