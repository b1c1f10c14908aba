/* epoll_loop: an event loop on epoll_wait (issue 12), checkpointed while events are in
 * flight.
 *
 * One epoll instance watches a periodic timerfd (2 ms), an eventfd a worker thread adds
 * to, a pipe the worker writes numbered records into, and a signalfd for SIGUSR1, which
 * the worker sends to the process and waits to be acknowledged through a second eventfd.
 * The loop runs until the worker is done: 600 eventfd increments, 300 records, 60
 * signals; it passes a gate after each third of the records. The pipe registration is
 * edge-triggered (the loop reads until EAGAIN), the others level-triggered. Printed: the
 * progress at each gate and the totals, which do not depend on timing; the timer only
 * has to have ticked.
 *
 * usage: epoll_loop */
#include "lib/crtest.h"
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

#define INCREMENTS 600
#define RECORDS 300
#define SIGNALS 60
#define RECORD 16

enum { T_TIMER = 1, T_COUNT, T_PIPE, T_SIGNAL };

static int counter, ack, pfd[2], tfd, sfd, ep;

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

static void *worker(void *arg)
{
	int inc = 0, rec = 0, sig = 0;
	(void)arg;
	while (inc < INCREMENTS || rec < RECORDS || sig < SIGNALS) {
		if (inc < INCREMENTS) {
			put(counter, 1);
			inc++;
		}
		if (inc % 2 == 0 && rec < RECORDS) {
			char r[RECORD];
			snprintf(r, sizeof(r), "rec %011d", rec);
			for (size_t off = 0; off < RECORD;) {
				ssize_t n = write(pfd[1], r + off, RECORD - off);
				if (n < 0 && errno == EINTR)
					continue;
				if (n <= 0)
					cr_fail("write pipe: %s", strerror(errno));
				off += (size_t)n;
			}
			rec++;
		}
		if (inc % 10 == 0 && sig < SIGNALS) {
			kill(getpid(), SIGUSR1);
			if (take(ack) != 1)
				cr_fail("ack");
			sig++;
		}
		cr_sleep_us(300);
	}
	return NULL;
}

int main(void)
{
	sigset_t set;
	pthread_t th;
	uint64_t incs = 0, ticks = 0;
	int recs = 0, sigs = 0, gates = 0;
	char part[RECORD];
	size_t have = 0;
	struct itimerspec its = { { 0, 2000000 }, { 0, 2000000 } };

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
		cr_fail("sigmask");
	counter = eventfd(0, EFD_NONBLOCK);
	ack = eventfd(0, 0);
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	sfd = signalfd(-1, &set, SFD_NONBLOCK);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (counter < 0 || ack < 0 || tfd < 0 || sfd < 0 || ep < 0 ||
	    pipe2(pfd, O_NONBLOCK) != 0)
		cr_fail("setup: %s", strerror(errno));
	{
		struct { int fd; uint32_t ev; int tag; } regs[] = {
			{ tfd, EPOLLIN, T_TIMER },
			{ counter, EPOLLIN, T_COUNT },
			{ pfd[0], EPOLLIN | EPOLLET, T_PIPE },
			{ sfd, EPOLLIN, T_SIGNAL },
		};
		for (size_t i = 0; i < sizeof(regs) / sizeof(regs[0]); i++) {
			struct epoll_event ev = { .events = regs[i].ev, .data.u32 = (uint32_t)regs[i].tag };
			if (epoll_ctl(ep, EPOLL_CTL_ADD, regs[i].fd, &ev) != 0)
				cr_fail("epoll_ctl: %s", strerror(errno));
		}
	}
	if (timerfd_settime(tfd, 0, &its, NULL) != 0)
		cr_fail("timerfd_settime");
	if (pthread_create(&th, NULL, worker, NULL) != 0)
		cr_fail("pthread_create");
	cr_ready();

	while (incs < INCREMENTS || recs < RECORDS || sigs < SIGNALS) {
		struct epoll_event evs[8];
		int n = epoll_wait(ep, evs, 8, 1000);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			cr_fail("epoll_wait: %s", strerror(errno));
		for (int i = 0; i < n; i++) {
			switch (evs[i].data.u32) {
			case T_TIMER:
				ticks += take(tfd);
				break;
			case T_COUNT:
				incs += take(counter);
				break;
			case T_SIGNAL: {
				struct signalfd_siginfo si;
				while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
					if (si.ssi_signo != SIGUSR1)
						cr_fail("signal %u", si.ssi_signo);
					sigs++;
					put(ack, 1);
				}
				break;
			}
			case T_PIPE:
				for (;;) {
					ssize_t r = read(pfd[0], part + have, RECORD - have);
					if (r < 0 && errno == EINTR)
						continue;
					if (r < 0 && errno == EAGAIN)
						break;
					if (r <= 0)
						cr_fail("read pipe: %zd %s", r, strerror(errno));
					have += (size_t)r;
					if (have == RECORD) {
						char want[RECORD];
						snprintf(want, sizeof(want), "rec %011d", recs);
						if (memcmp(part, want, RECORD) != 0)
							cr_fail("record %d is %.16s", recs, part);
						recs++;
						have = 0;
					}
				}
				break;
			default:
				cr_fail("event for %u", evs[i].data.u32);
			}
		}
		if (gates < 3 && recs >= (gates + 1) * RECORDS / 3) {
			gates++;
			cr_line("records %d", gates * RECORDS / 3);
			cr_gate(gates);
		}
	}
	pthread_join(th, NULL);
	cr_line("increments %llu, records %d, signals %d, timer ticked %s",
		(unsigned long long)incs, recs, sigs, ticks > 0 ? "yes" : "no");
	cr_pass();
	return 0;
}
