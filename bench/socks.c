/* bench/socks.c - the loopback sockets case of bench/run (--only sockets, issue 13).
 * usage: socks N_CONNECTIONS KIB MIB SECONDS
 * Two processes (this one and a forked child), each with MIB MiB of written
 * anonymous memory, joined by N_CONNECTIONS loopback TCP connections. Each
 * side writes KIB/2 KiB into every connection and never reads them, so each
 * connection holds KIB KiB in flight, half each way (receive buffers are
 * made large enough that none of it waits for window room). Then both print
 * "ready" and sleep 2 ms at a time for SECONDS, printing "gap <us> <ns>"
 * after any iteration that took over 5 ms (as jobmem does). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void big_buffers(int s)
{
	int v = 1 << 20;
	setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
	setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
}

static void fill(int s, size_t bytes)
{
	static char buf[65536];
	memset(buf, 'x', sizeof(buf));
	while (bytes > 0) {
		size_t n = bytes < sizeof(buf) ? bytes : sizeof(buf);
		ssize_t w = write(s, buf, n);
		if (w <= 0)
			die("write");
		bytes -= (size_t)w;
	}
}

static void idle(long long run_ns, const char *who)
{
	printf("ready %s\n", who);
	fflush(stdout);
	long long ran = 0, last = now_ns();
	while (ran < run_ns) {
		struct timespec d = {0, 2000000};
		nanosleep(&d, NULL);
		long long t = now_ns(), dt = t - last;
		last = t;
		if (dt > 5000000LL) {
			printf("gap %lld %lld\n", dt / 1000, t);
			fflush(stdout);
			dt = 2000000;
		}
		ran += dt;
	}
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: socks N_CONNECTIONS KIB MIB SECONDS\n");
		return 2;
	}
	int n = atoi(argv[1]);
	size_t half = (size_t)atol(argv[2]) * 1024 / 2;
	size_t len = (size_t)atol(argv[3]) << 20;
	long long run_ns = atoll(argv[4]) * 1000000000LL;
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	madvise(p, len, MADV_NOHUGEPAGE);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	big_buffers(l);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, n + 1) ||
	    getsockname(l, (struct sockaddr *)&a, &al))
		die("listen");
	fflush(stdout);
	pid_t child = fork();
	if (child < 0)
		die("fork");
	for (size_t i = 0; i < len; i += 4096)
		memset(p + i, (int)(i / 4096 % 251) + 1 + (child == 0), 64);
	int *fds = calloc((size_t)n + 1, sizeof(int));
	if (child == 0) {
		close(l);
		for (int i = 0; i < n; i++) {
			fds[i] = socket(AF_INET, SOCK_STREAM, 0);
			big_buffers(fds[i]);
			if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a, sizeof(a)))
				die("connect");
		}
	} else {
		for (int i = 0; i < n; i++)
			if ((fds[i] = accept(l, NULL, NULL)) < 0)
				die("accept");
	}
	for (int i = 0; i < n; i++)
		fill(fds[i], half);
	idle(run_ns, child == 0 ? "child" : "parent");
	if (child > 0)
		waitpid(child, NULL, 0);
	return 0;
}
