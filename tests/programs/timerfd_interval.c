/* timerfd_interval: timerfds mid-interval and with expirations unread (issue 12).
 *
 * - A: CLOCK_MONOTONIC, periodic (30 ms), running the whole time, read after each gate;
 * - B: a one-shot timer that expired before the checkpoint, its expiration unread;
 * - C: CLOCK_MONOTONIC, expired once (unread), next expiration an hour later;
 * - D: CLOCK_REALTIME with TFD_TIMER_ABSTIME, two hours ahead;
 * - E: CLOCK_BOOTTIME, relative, one hour, 10-minute interval;
 * - F: never armed.
 * Only what is deterministic is printed: B and C have exactly one expiration to read,
 * then none; C, D and E have the expected time left (within minutes: time passes while
 * the job is down); F is disarmed; reads of A return at least one expiration, and the
 * total over the run never exceeds what the elapsed CLOCK_MONOTONIC time allows.
 *
 * usage: timerfd_interval */
#include "lib/crtest.h"
#include <sys/timerfd.h>

#define NS 1000000000LL
#define A_PERIOD (30 * 1000000LL)

static long long now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return ts.tv_sec * NS + ts.tv_nsec;
}

static void arm(int fd, int flags, long long value, long long interval)
{
	struct itimerspec its = {
		.it_interval = { interval / NS, interval % NS },
		.it_value = { value / NS, value % NS },
	};
	if (timerfd_settime(fd, flags, &its, NULL) != 0)
		cr_fail("timerfd_settime: %s", strerror(errno));
}

static long long left(int fd, long long *interval)
{
	struct itimerspec its;
	if (timerfd_gettime(fd, &its) != 0)
		cr_fail("timerfd_gettime: %s", strerror(errno));
	if (interval)
		*interval = its.it_interval.tv_sec * NS + its.it_interval.tv_nsec;
	return its.it_value.tv_sec * NS + its.it_value.tv_nsec;
}

/* One read: the expirations, or 0 when it would block. */
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
	cr_fail("read timerfd: %zd %s", n, strerror(errno));
}

static const char *within(long long v, long long lo, long long hi)
{
	return v > lo && v <= hi ? "ok" : "WRONG";
}

int main(void)
{
	int a = timerfd_create(CLOCK_MONOTONIC, 0);
	int b = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	int c = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	int d = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
	int e = timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK);
	int f = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	long long a_start, d_at, iv;
	uint64_t a_total = 0;

	if (a < 0 || b < 0 || c < 0 || d < 0 || e < 0 || f < 0)
		cr_fail("timerfd_create: %s", strerror(errno));
	a_start = now_ns(CLOCK_MONOTONIC);
	arm(a, 0, A_PERIOD, A_PERIOD);
	arm(b, 0, 1, 0);
	arm(c, 0, 1, 3600 * NS);
	d_at = now_ns(CLOCK_REALTIME) + 7200 * NS;
	arm(d, TFD_TIMER_ABSTIME, d_at, 0);
	arm(e, 0, 3600 * NS, 600 * NS);
	cr_sleep_us(20000);
	cr_ready();

	for (int k = 1; k <= 3; k++) {
		cr_gate(k);
		cr_line("round %d", k);
		{
			uint64_t b1 = take(b), b2 = take(b);
			cr_line("B: %llu then %llu", (unsigned long long)b1, (unsigned long long)b2);
		}
		if (k == 1) {
			uint64_t c1 = take(c), c2 = take(c);
			cr_line("C: %llu then %llu", (unsigned long long)c1, (unsigned long long)c2);
		}
		cr_line("C left: %s", within(left(c, &iv), 3000 * NS, 3600 * NS));
		cr_line("C interval: %lld s", iv / NS);
		cr_line("D left: %s", within(left(d, &iv), 6600 * NS, 7200 * NS));
		cr_line("D wall time kept: %s",
			within(now_ns(CLOCK_REALTIME) + left(d, NULL), d_at - 2 * NS, d_at + 2 * NS));
		cr_line("E left: %s", within(left(e, &iv), 3000 * NS, 3600 * NS));
		cr_line("E interval: %lld s", iv / NS);
		cr_line("F left: %lld", left(f, &iv));
		for (int i = 0; i < 3; i++) {
			uint64_t n = take(a);
			a_total += n;
			cr_line("A read %d: %s", i, n >= 1 ? "at least one" : "none");
		}
		cr_line("A left: %s", within(left(a, &iv), 0, A_PERIOD));
		{
			long long allowed = (now_ns(CLOCK_MONOTONIC) - a_start) / A_PERIOD;
			cr_line("A total consistent with the elapsed time: %s",
				a_total >= 3 * (uint64_t)k && (long long)a_total <= allowed ? "yes" : "NO");
		}
		/* Leave an expiration of B unread for the next checkpoint. */
		arm(b, 0, 1000, 0);
		cr_sleep_us(2000);
	}
	cr_pass();
	return 0;
}
