/* filer: a program that writes files, for the refusals and reports of the
 * files a job rewrites (tests/faults/files.rs).
 *
 * usage: filer big WORKDIR
 *   Writes 2 MiB into WORKDIR/big.dat, which it keeps open for writing, and
 *   prints READY. When WORKDIR/shrink exists it truncates the file to 4 KiB
 *   and prints "shrunk". When WORKDIR/go exists it checks the file (through
 *   its descriptor) and prints PASS (or FAIL: why).
 *
 * usage: filer steps WORKDIR [STEPS]   (default 3)
 *   Keeps WORKDIR/a.dat and WORKDIR/b.dat open for writing (mode 0640). Step
 *   s writes content(file, s) into each (see below), replacing the whole
 *   file. Step 1 runs before READY; step s > 1 waits for WORKDIR/step-s,
 *   first checks that each file still holds content(file, s-1) (read through
 *   its descriptor: a restart that did not put them back fails here), then
 *   writes and prints "step s". After the last step it waits for WORKDIR/go,
 *   checks both files and prints PASS (or FAIL: why).
 *
 * content(f, s): 10000 + 1000*s bytes, byte i = (i*31 + s*7 + f*13) % 251,
 * f = 0 for a.dat, 1 for b.dat.
 *
 * While it waits, it removes WORKDIR/ping when it appears: the test's proof
 * that a restarted program runs its own code again (its files are back).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char work[3800];

static void say(const char *s)
{
	size_t n = strlen(s);
	while (n > 0) {
		ssize_t w = write(1, s, n);
		if (w <= 0)
			_exit(3);
		s += w;
		n -= (size_t)w;
	}
}

static void fail(const char *why)
{
	char b[512];
	snprintf(b, sizeof b, "FAIL: %s (errno %d)\n", why, errno);
	say(b);
	exit(1);
}

static void path_of(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", work, name);
}

static int exists(const char *name)
{
	char p[4096];
	path_of(p, sizeof p, name);
	return access(p, F_OK) == 0;
}

/* Waits for WORKDIR/name, removing WORKDIR/ping whenever it appears. */
static void wait_for(const char *name)
{
	char ping[4096];
	path_of(ping, sizeof ping, "ping");
	while (!exists(name)) {
		if (access(ping, F_OK) == 0)
			unlink(ping);
		struct timespec ts = {0, 5 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

static int open_rw(const char *name, mode_t mode)
{
	char p[4096];
	path_of(p, sizeof p, name);
	int fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		fail(name);
	/* The mode asked for, whatever the umask. */
	if (fchmod(fd, mode) != 0)
		fail("fchmod");
	return fd;
}

static size_t content(unsigned char *buf, int f, int s)
{
	size_t n = 10000 + 1000 * (size_t)s;
	for (size_t i = 0; i < n; i++)
		buf[i] = (unsigned char)((i * 31 + (size_t)s * 7 + (size_t)f * 13) % 251);
	return n;
}

static void write_all(int fd, const unsigned char *b, size_t n)
{
	if (ftruncate(fd, 0) != 0)
		fail("ftruncate");
	size_t off = 0;
	while (off < n) {
		ssize_t w = pwrite(fd, b + off, n - off, (off_t)off);
		if (w <= 0)
			fail("pwrite");
		off += (size_t)w;
	}
}

/* Whether fd holds exactly n bytes equal to want. */
static int holds(int fd, const unsigned char *want, size_t n)
{
	struct stat st;
	if (fstat(fd, &st) != 0 || (size_t)st.st_size != n)
		return 0;
	static unsigned char got[1 << 16];
	size_t off = 0;
	while (off < n) {
		size_t k = n - off < sizeof got ? n - off : sizeof got;
		ssize_t r = pread(fd, got, k, (off_t)off);
		if (r <= 0 || memcmp(got, want + off, (size_t)r) != 0)
			return 0;
		off += (size_t)r;
	}
	return 1;
}

static int big(void)
{
	size_t n = 2 << 20;
	unsigned char *b = malloc(n);
	if (b == NULL)
		fail("malloc");
	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)(i * 7 % 253);
	int fd = open_rw("big.dat", 0644);
	write_all(fd, b, n);
	say("READY\n");
	wait_for("shrink");
	if (ftruncate(fd, 4096) != 0)
		fail("ftruncate");
	say("shrunk\n");
	wait_for("go");
	if (!holds(fd, b, 4096))
		fail("big.dat does not hold its first 4 KiB");
	say("PASS\n");
	return 0;
}

static int steps(int last)
{
	static unsigned char want[2][1 << 17];
	const char *names[2] = {"a.dat", "b.dat"};
	int fd[2];
	size_t n[2];
	for (int f = 0; f < 2; f++) {
		fd[f] = open_rw(names[f], 0640);
		n[f] = content(want[f], f, 1);
		write_all(fd[f], want[f], n[f]);
	}
	say("READY\n");
	for (int s = 2; s <= last; s++) {
		char name[32], msg[128];
		snprintf(name, sizeof name, "step-%d", s);
		wait_for(name);
		for (int f = 0; f < 2; f++) {
			if (!holds(fd[f], want[f], n[f])) {
				snprintf(msg, sizeof msg, "before step %d, %s does not hold step %d's content", s,
					 names[f], s - 1);
				fail(msg);
			}
			n[f] = content(want[f], f, s);
			write_all(fd[f], want[f], n[f]);
		}
		snprintf(msg, sizeof msg, "step %d\n", s);
		say(msg);
	}
	wait_for("go");
	for (int f = 0; f < 2; f++)
		if (!holds(fd[f], want[f], n[f]))
			fail("at the end, a file does not hold the last step's content");
	say("PASS\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		say("usage: filer big|steps WORKDIR [STEPS]\n");
		return 2;
	}
	snprintf(work, sizeof work, "%s", argv[2]);
	if (strcmp(argv[1], "big") == 0)
		return big();
	if (strcmp(argv[1], "steps") == 0)
		return steps(argc > 3 ? atoi(argv[3]) : 3);
	say("unknown mode\n");
	return 2;
}
