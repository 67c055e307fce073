/* A workload with a few distinctive syscalls for the syscall-set sensor's tests: each is
 * called several times, so "exactly one first-use event" is a real check. Built statically
 * (tests/support install_workload) and run inside a busybox container. Prints "done". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/utsname.h>
#include <unistd.h>

int main(void) {
    struct utsname name;
    unsigned char random[16];
    long sum = 0;
    for (int i = 0; i < 5; i++) {
        sum += getppid();
        if (uname(&name) != 0) return 1;
        sched_yield();
        if (getrandom(random, sizeof random, 0) < 0) return 1;
        sum += random[0];
    }
    /* openat + read of a file: the common calls the test expects, made by the workload itself
     * (the runtime's own set-up calls are not counted as the container's). */
    char buffer[64];
    int fd = open("/etc/hostname", O_RDONLY);
    if (fd < 0 || read(fd, buffer, sizeof buffer) < 0) return 1;
    close(fd);
    /* write(2) through stdio; the sum keeps the calls from being optimised away. */
    printf("done %ld\n", sum & 1);
    return 0;
}
