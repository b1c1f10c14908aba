/* epoll_ready: epoll instances with events ready at the checkpoint (issue 12).
 *
 * Targets: an eventfd with a count, a pipe with buffered bytes, an empty pipe, a second
 * eventfd. Registrations:
 *   lt:   level-triggered on all of them;
 *   et:   edge-triggered; the edges of the eventfd and the pipe are consumed before the
 *         checkpoint (their targets stay ready), the second eventfd has an edge pending;
 *   os:   one-shot; the eventfd's fired (disabled), the pipe's is armed and ready, the
 *         empty pipe's armed and not ready;
 *   nest: an epoll instance watching lt;
 *   nest_et: another, edge-triggered, created before lt (a lower number), its edges
 *         consumed before each gate.
 * After each gate the program prints which registrations are ready, then checks that
 * edge-triggered and one-shot semantics persist (a new edge is reported once, a fired
 * one-shot stays silent until re-armed), and leaves new pending events for the next
 * checkpoint. The output depends only on the epoll state, so it is identical to an
 * uninterrupted run exactly when every checkpoint and restart kept that state.
 *
 * usage: epoll_ready */
#include "lib/crtest.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>

static int efd, e2, p[2], q[2];
static int lt, et, os, nest, nest_et;

static void add(int ep, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
		cr_fail("epoll_ctl ADD %d: %s", fd, strerror(errno));
}

static void mod(int ep, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) != 0)
		cr_fail("epoll_ctl MOD %d: %s", fd, strerror(errno));
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Prints "<name>: d1 d2 ..." for the registrations ready now (sorted data). */
static void report(const char *name, int ep)
{
	struct epoll_event evs[16];
	uint64_t d[16];
	char line[256];
	int n, len;

	do
		n = epoll_wait(ep, evs, 16, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		cr_fail("epoll_wait %s: %s", name, strerror(errno));
	for (int i = 0; i < n; i++)
		d[i] = evs[i].data.u64;
	qsort(d, (size_t)n, sizeof(d[0]), cmp_u64);
	len = snprintf(line, sizeof(line), "%s:", name);
	for (int i = 0; i < n; i++)
		len += snprintf(line + len, sizeof(line) - (size_t)len, " %llu",
				(unsigned long long)d[i]);
	cr_line("%s", line);
}

static void add_count(int fd, uint64_t v)
{
	if (write(fd, &v, sizeof(v)) != sizeof(v))
		cr_fail("write eventfd: %s", strerror(errno));
}

static uint64_t take_count(int fd)
{
	uint64_t v = 0;
	if (read(fd, &v, sizeof(v)) != sizeof(v))
		return 0;
	return v;
}

static void report_all(int round)
{
	cr_line("round %d", round);
	report("nest et", nest_et);
	report("lt", lt);
	report("et", et);
	report("et again", et);
	report("os", os);
	report("os again", os);
	report("nest", nest);
}

int main(void)
{
	uint32_t in = EPOLLIN;

	nest_et = epoll_create1(0);
	efd = eventfd(3, EFD_NONBLOCK);
	e2 = eventfd(0, EFD_NONBLOCK);
	if (efd < 0 || e2 < 0 || pipe2(p, O_NONBLOCK) != 0 || pipe2(q, O_NONBLOCK) != 0)
		cr_fail("setup: %s", strerror(errno));
	if (write(p[1], "abc", 3) != 3)
		cr_fail("write pipe");
	lt = epoll_create1(EPOLL_CLOEXEC);
	et = epoll_create1(0);
	os = epoll_create1(0);
	nest = epoll_create1(0);
	add(lt, efd, in, 1);
	add(lt, p[0], in, 2);
	add(lt, q[0], in, 3);
	add(lt, e2, in, 4);
	add(et, efd, in | EPOLLET, 1);
	add(et, p[0], in | EPOLLET, 2);
	add(et, q[0], in | EPOLLET, 3);
	add(os, efd, in | EPOLLONESHOT, 1);
	{
		struct epoll_event evs[8];
		if (epoll_wait(et, evs, 8, 0) != 2 || epoll_wait(os, evs, 8, 0) != 1)
			cr_fail("initial edges");
	}
	add(et, e2, in | EPOLLET, 4);
	add_count(e2, 5); /* an edge not reported yet */
	add(os, p[0], in | EPOLLONESHOT, 2);
	add(os, q[0], in | EPOLLONESHOT, 3);
	add(nest, lt, in, 9);
	add(nest_et, lt, in | EPOLLET, 10);
	report("nest et at start", nest_et);
	cr_ready();

	for (int k = 1; k <= 3; k++) {
		cr_gate(k);
		report_all(k);
		/* Edge-triggered: a new write is one new edge. */
		add_count(efd, 1);
		report("et after write", et);
		report("et after write again", et);
		/* One-shot: the empty pipe fires once when it gets a byte. */
		if (write(q[1], "x", 1) != 1)
			cr_fail("write q");
		report("os after write", os);
		report("os after write again", os);
		/* Re-arm the fired one-shots, then disarm them by consuming. */
		mod(os, efd, in | EPOLLONESHOT, 1);
		report("os rearmed", os);
		{
			char c;
			if (read(q[0], &c, 1) != 1)
				cr_fail("read q");
		}
		/* Consume a new edge of efd, then leave pending state for the next
		 * checkpoint: an unreported edge on e2 and the pipe's one-shot armed again
		 * (still ready: "abc" stays buffered). */
		cr_line("efd count %llu", (unsigned long long)take_count(efd));
		add_count(efd, 3);
		report("et consumed", et);
		add_count(e2, 1);
		mod(os, p[0], in | EPOLLONESHOT, 2);
		mod(os, q[0], in | EPOLLONESHOT, 3);
		report("nest et consumed", nest_et);
	}
	{
		char buf[8];
		ssize_t n = read(p[0], buf, sizeof(buf));
		cr_line("pipe %zd %.*s, e2 %llu", n, (int)(n > 0 ? n : 0), buf,
			(unsigned long long)take_count(e2));
	}
	report_all(4);
	cr_pass();
	return 0;
}
