/* epoll_shared: one epoll instance shared by a parent and its child (issue 12).
 *
 * The parent registers an eventfd (level-triggered) and a pipe (edge-triggered) in an
 * epoll instance, leaves an edge pending, and forks. On request (through an eventfd)
 * the child calls epoll_wait on the shared instance and reports what it saw; then the
 * parent calls it too. An edge consumed by one process is not seen by the other; a
 * level-triggered registration is seen by both. After the restart the instance, its
 * targets and the pending edge must be shared exactly as before.
 *
 * usage: epoll_shared */
#include "lib/crtest.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

static int ep, e, p[2], go, res;

static void put(int fd, uint64_t v)
{
	if (write(fd, &v, sizeof(v)) != sizeof(v))
		cr_fail("write eventfd: %s", strerror(errno));
}

static uint64_t take(int fd)
{
	uint64_t v = 0;
	ssize_t n;
	do
		n = read(fd, &v, sizeof(v));
	while (n < 0 && errno == EINTR);
	return n == sizeof(v) ? v : 0;
}

/* Bit data-1 for every registration ready now. */
static uint64_t seen(void)
{
	struct epoll_event evs[4];
	uint64_t bits = 0;
	int n;
	do
		n = epoll_wait(ep, evs, 4, 0);
	while (n < 0 && errno == EINTR);
	for (int i = 0; i < n; i++)
		bits |= 1ULL << (evs[i].data.u64 - 1);
	return bits;
}

int main(void)
{
	struct epoll_event ev;
	pid_t child;

	e = eventfd(0, EFD_NONBLOCK);
	go = eventfd(0, 0);
	res = eventfd(0, 0);
	ep = epoll_create1(0);
	if (e < 0 || go < 0 || res < 0 || ep < 0 || pipe2(p, O_NONBLOCK) != 0)
		cr_fail("setup: %s", strerror(errno));
	ev.events = EPOLLIN;
	ev.data.u64 = 1;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev) != 0)
		cr_fail("epoll_ctl e");
	ev.events = EPOLLIN | EPOLLET;
	ev.data.u64 = 2;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) != 0)
		cr_fail("epoll_ctl p");
	if (write(p[1], "x", 1) != 1)
		cr_fail("write p");
	child = fork();
	if (child < 0)
		cr_fail("fork");
	if (child == 0) {
		for (;;) {
			if (take(go) == 2)
				_exit(0);
			put(res, 1 + seen());
		}
	}
	cr_ready();
	for (int k = 1; k <= 3; k++) {
		cr_gate(k);
		put(go, 1);
		cr_line("round %d: child sees %llu", k, (unsigned long long)(take(res) - 1));
		cr_line("round %d: parent sees %llu", k, (unsigned long long)seen());
		/* Pending for the next checkpoint: the counter (level) and a new edge. */
		put(e, 1);
		if (write(p[1], "y", 1) != 1)
			cr_fail("write p");
	}
	put(go, 2);
	{
		int st = 0;
		if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			cr_fail("child status %d", st);
	}
	cr_line("counter %llu", (unsigned long long)take(e));
	cr_pass();
	return 0;
}
