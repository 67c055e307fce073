/* Each open syscall the file sensor covers, once, with exact flags, from cwd /tmp:
 *   open("rel-open.txt", O_RDWR|O_CREAT)           relative, read-write, create
 *   creat("/tmp/creat.txt")                        write, create, truncate
 *   openat2(AT_FDCWD, "../etc/hostname", O_RDONLY) relative with "..", read
 *   openat(<fd of /etc>, "nope", O_RDONLY)          fails with ENOENT, relative to a dirfd
 *   open("missing/x", O_WRONLY)                     fails with ENOENT, relative to the cwd
 * Raw syscalls, so that libc cannot substitute openat. Prints nothing; exit status 0 when every
 * call behaved as expected. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    if (chdir("/tmp") != 0)
        return 10;
    long fd = syscall(SYS_open, "rel-open.txt", O_RDWR | O_CREAT, 0644);
    if (fd < 0)
        return 11;
    close(fd);
    fd = syscall(SYS_creat, "/tmp/creat.txt", 0600);
    if (fd < 0)
        return 12;
    close(fd);
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_RDONLY;
    fd = syscall(SYS_openat2, AT_FDCWD, "../etc/hostname", &how, sizeof how);
    if (fd < 0)
        return 13;
    close(fd);
    long dir = syscall(SYS_openat, AT_FDCWD, "/etc", O_RDONLY | O_DIRECTORY);
    if (dir < 0)
        return 14;
    fd = syscall(SYS_openat, (int)dir, "nope", O_RDONLY);
    if (fd >= 0 || errno != ENOENT)
        return 15;
    fd = syscall(SYS_open, "missing/x", O_WRONLY);
    if (fd >= 0 || errno != ENOENT)
        return 16;
    return 0;
}
