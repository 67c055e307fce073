/*
 * Workload of `cargo xtask bench`, built static (`cc -static -O2 -pthread`) and run as
 * /bin/bench inside a container, so that container start-up is excluded from the timing.
 *
 *   bench open    N   open("/tmp/bench-file") + close, N times
 *   bench exec    N   fork + execve("/bin/bench", "noop") + waitpid, N times
 *   bench connect N   TCP connect to a listener on 127.0.0.1:CONNECT_PORT (own thread) + close
 *   bench getppid N   getppid(), N times
 *   bench noop        exits at once (the program `exec` runs)
 *
 * Each timed mode first waits WARMUP_MS, or $BENCH_WARMUP_MS (the agent starts tracing a
 * container, and puts it under kernel policy in enforce mode, once it has seen its first exec),
 * runs N/10 untimed iterations, then times N iterations with
 * clock_gettime(CLOCK_MONOTONIC) and prints one line:  <mode> <n> <total_ns> <ns_per_op>
 *
 * Offered load for the throughput test:
 *
 *   bench storm KIND RATE SECONDS   KIND is open (distinct file names), connect or exec; runs
 *                                   at RATE operations/s (0: as fast as possible) for SECONDS
 *                                   and prints:  storm <kind> <ops> <total_ns> <ops_per_s>
 *
 * Loopback only: the connect modes never use any other address. The port is fixed (each
 * container has its own network namespace) so that an enforce-mode profile learned from one run
 * allows the next.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP_MS 300
#define OPEN_PATH "/tmp/bench-file"
#define SELF "/bin/bench"
#define CONNECT_PORT 7070

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
	perror(what);
	exit(2);
}

/* ---- open ---- */

static void open_setup(void) {
	int fd = open(OPEN_PATH, O_CREAT | O_WRONLY, 0644);
	if (fd < 0)
		die("create " OPEN_PATH);
	close(fd);
}

static void open_once(void) {
	int fd = open(OPEN_PATH, O_RDONLY);
	if (fd < 0)
		die("open");
	close(fd);
}

/* Distinct names, so that the kernel's repeat suppression does not fold them together. The
 * files do not exist: each open fails with ENOENT after the path walk, which is still an open
 * attempt the file sensor sees. */
static void open_distinct(uint64_t i) {
	char path[64];
	snprintf(path, sizeof path, "/tmp/storm-%llu", (unsigned long long)i);
	int fd = open(path, O_RDONLY);
	if (fd >= 0)
		close(fd);
}

/* ---- exec ---- */

static void exec_once(void) {
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		char *argv[] = {"bench", "noop", NULL};
		char *envp[] = {NULL};
		execve(SELF, argv, envp);
		_exit(127);
	}
	int status;
	if (waitpid(pid, &status, 0) < 0)
		die("waitpid");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "child failed (status %d)\n", status);
		exit(2);
	}
}

/* ---- connect ---- */

static struct sockaddr_in listen_addr;

static void *accept_loop(void *arg) {
	int lfd = *(int *)arg;
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		if (fd >= 0)
			close(fd);
		else if (errno != EINTR && errno != ECONNABORTED)
			return NULL;
	}
}

static void connect_setup(void) {
	static int lfd;
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0)
		die("socket");
	memset(&listen_addr, 0, sizeof listen_addr);
	listen_addr.sin_family = AF_INET;
	listen_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* 127.0.0.1, never anything else */
	listen_addr.sin_port = htons(CONNECT_PORT);
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(lfd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0)
		die("bind 127.0.0.1");
	socklen_t len = sizeof listen_addr;
	if (getsockname(lfd, (struct sockaddr *)&listen_addr, &len) < 0)
		die("getsockname");
	if (listen(lfd, 4096) < 0)
		die("listen");
	pthread_t thread;
	if (pthread_create(&thread, NULL, accept_loop, &lfd) != 0)
		die("pthread_create");
	pthread_detach(thread);
}

static void connect_once(void) {
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	/* Close with a reset: no TIME_WAIT, so a long loop does not run out of local ports. */
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
	if (connect(fd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0)
		die("connect 127.0.0.1");
	close(fd);
}

/* ---- getppid ---- */

static volatile long sink;

static void getppid_once(void) {
	sink += syscall(SYS_getppid); /* not cached by libc */
}

/* ---- driver ---- */

static unsigned warmup_ms(void) {
	const char *env = getenv("BENCH_WARMUP_MS");
	return env ? (unsigned)strtoul(env, NULL, 10) : WARMUP_MS;
}

static void (*op_for(const char *mode))(void) {
	if (!strcmp(mode, "open"))
		return open_once;
	if (!strcmp(mode, "exec"))
		return exec_once;
	if (!strcmp(mode, "connect"))
		return connect_once;
	if (!strcmp(mode, "getppid"))
		return getppid_once;
	return NULL;
}

static void setup_for(const char *mode) {
	if (!strcmp(mode, "open"))
		open_setup();
	else if (!strcmp(mode, "connect"))
		connect_setup();
}

static int timed(const char *mode, uint64_t n) {
	void (*op)(void) = op_for(mode);
	if (!op) {
		fprintf(stderr, "unknown mode %s\n", mode);
		return 2;
	}
	/* Setup after the wait, so that the agent sees (and in enforce mode judges) it too. */
	usleep(warmup_ms() * 1000);
	setup_for(mode);
	for (uint64_t i = 0; i < n / 10; i++)
		op();
	uint64_t start = now_ns();
	for (uint64_t i = 0; i < n; i++)
		op();
	uint64_t total = now_ns() - start;
	printf("%s %llu %llu %.1f\n", mode, (unsigned long long)n, (unsigned long long)total,
	       (double)total / (double)n);
	return 0;
}

static int storm(const char *kind, double rate, double seconds) {
	int k;
	if (!strcmp(kind, "open"))
		k = 0;
	else if (!strcmp(kind, "connect"))
		k = 1;
	else if (!strcmp(kind, "exec"))
		k = 2;
	else {
		fprintf(stderr, "unknown storm kind %s\n", kind);
		return 2;
	}
	usleep(warmup_ms() * 1000);
	if (k == 1)
		connect_setup();
	uint64_t start = now_ns();
	uint64_t end = start + (uint64_t)(seconds * 1e9);
	uint64_t ops = 0, t = start;
	while (t < end) {
		/* Paced in slices of 64 operations: run a slice when it is due, else spin. */
		if (rate > 0 && (double)ops > (double)(t - start) * rate / 1e9) {
			t = now_ns();
			continue;
		}
		for (int j = 0; j < 64; j++, ops++) {
			if (k == 0)
				open_distinct(ops);
			else if (k == 1)
				connect_once();
			else
				exec_once();
		}
		t = now_ns();
	}
	uint64_t total = t - start;
	printf("storm %s %llu %llu %.0f\n", kind, (unsigned long long)ops,
	       (unsigned long long)total, (double)ops * 1e9 / (double)total);
	return 0;
}

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 2 && !strcmp(argv[1], "noop"))
		return 0;
	if (argc == 3)
		return timed(argv[1], strtoull(argv[2], NULL, 10));
	if (argc == 5 && !strcmp(argv[1], "storm"))
		return storm(argv[2], atof(argv[3]), atof(argv[4]));
	fprintf(stderr,
	        "usage: bench open|exec|connect|getppid N | bench noop | "
	        "bench storm open|connect|exec RATE SECONDS\n");
	return 2;
}
