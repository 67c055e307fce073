/* Opens one file read-only and closes it, N times: `open_loop PATH N`. Prints nothing; exits
 * 1 on the first failed open. Used to check that repeated identical opens are suppressed in
 * the kernel (bounded events, counted repeats, no ring buffer drops). */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    long n = atol(argv[2]);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0)
            return 1;
        close(fd);
    }
    return 0;
}
