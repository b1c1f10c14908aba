/* eventfd_counter: eventfd counters mid-flight (issue 12).
 *
 * - `a`: a blocking counter holding 12345 at the first checkpoint, also open as a dup
 *   (one open file description at two numbers) and shared with a child process, which
 *   adds to it when the parent asks through a second eventfd it blocks reading;
 * - `s`: a non-blocking semaphore-mode eventfd holding 3 (each read takes 1);
 * - `big`: a non-blocking counter above 2^32.
 * After each gate the program reads every counter and prints what it got; before the
 * next gate it leaves new counts pending. Output identical to an uninterrupted run means
 * counts, semaphore mode, blocking mode and sharing all survived.
 *
 * usage: eventfd_counter */
#include "lib/crtest.h"
#include <sys/eventfd.h>
#include <sys/wait.h>

static void put(int fd, uint64_t v)
{
	if (write(fd, &v, sizeof(v)) != sizeof(v))
		cr_fail("write eventfd %d: %s", fd, strerror(errno));
}

/* Reads once: the value, or 0 when it would block (EAGAIN). */
static uint64_t take(int fd)
{
	uint64_t v = 0;
	ssize_t n;
	do
		n = read(fd, &v, sizeof(v));
	while (n < 0 && errno == EINTR);
	if (n == sizeof(v))
		return v;
	if (n < 0 && errno == EAGAIN)
		return 0;
	cr_fail("read eventfd %d: %zd %s", fd, n, strerror(errno));
}

int main(void)
{
	int a = eventfd(0, 0);
	int s = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
	int big = eventfd(0, EFD_NONBLOCK);
	int go = eventfd(0, 0); /* parent -> child: 1 = add 7 to a, 2 = exit */
	int d;
	pid_t child;

	if (a < 0 || s < 0 || big < 0 || go < 0)
		cr_fail("eventfd: %s", strerror(errno));
	d = dup(a);
	put(a, 12345);
	put(big, 0x123456789ULL);
	child = fork();
	if (child < 0)
		cr_fail("fork: %s", strerror(errno));
	if (child == 0) {
		for (;;) {
			uint64_t cmd = take(go);
			if (cmd == 2)
				_exit(0);
			put(a, 7 * cmd);
		}
	}
	cr_ready();

	for (int k = 1; k <= 3; k++) {
		cr_gate(k);
		cr_line("round %d", k);
		for (int i = 0; i < 4; i++)
			cr_line("s read %d: %llu", i, (unsigned long long)take(s));
		cr_line("big: %#llx", (unsigned long long)take(big));
		cr_line("big again: %llu", (unsigned long long)take(big));
		cr_line("a: %llu", (unsigned long long)take(k == 2 ? d : a));
		put(go, 1);
		cr_line("a from the child: %llu", (unsigned long long)take(a));
		/* Pending for the next checkpoint. */
		put(d, 100 * (uint64_t)k);
		put(s, 2 + (uint64_t)k);
		put(big, 0xfffffffffffffff0ULL);
		cr_line("big full: %llu", (unsigned long long)(take(big) == 0xfffffffffffffff0ULL));
		put(big, (uint64_t)k << 33);
	}
	put(go, 2);
	{
		int st = 0;
		if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			cr_fail("child: status %d", st);
	}
	cr_line("end: a %llu, s %llu, big %#llx", (unsigned long long)take(a),
		(unsigned long long)take(s), (unsigned long long)take(big));
	cr_pass();
	return 0;
}
