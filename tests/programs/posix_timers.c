/* posix_timers: POSIX timers (timer_create) mid-interval and with expirations pending
 * at the checkpoint (issue 12).
 *
 * - A: CLOCK_MONOTONIC, SIGEV_SIGNAL (SIGRTMIN) to the process, periodic 20 ms; a
 *   handler counts;
 * - B: glibc's SIGEV_THREAD (one kernel timer signalling glibc's helper thread, which
 *   starts a thread per expiration), periodic 25 ms; the callback counts;
 * - C: CLOCK_REALTIME, SIGEV_SIGNAL (SIGUSR2), one-shot two hours ahead: time left kept;
 * - D: CLOCK_BOOTTIME, SIGEV_NONE, one hour, 10-minute interval;
 * - E: SIGEV_THREAD_ID to a worker thread (SIGRTMIN+1, blocked), a one-shot that expired
 *   before each checkpoint: after the gate the worker takes it with sigtimedwait and
 *   checks it is the timer's (SI_TIMER, its id, its value);
 * - F: the same for the process (SIGRTMIN+2, blocked in the program's threads; glibc runs
 *   SIGEV_THREAD callbacks with no signal blocked, so one of B's callback threads may take
 *   it first: a handler then records it, and it counts the same);
 * - a timer created and deleted first, so that the ids have a hole;
 * - setuid/setgid each round: glibc makes every thread (the SIGEV_THREAD helper included)
 *   take SIGSETXID and waits for them.
 * Only what is deterministic is printed: each timer still answers timer_gettime, C and
 * D have the expected time left (within minutes: time passes while the job is down), E
 * and F deliver exactly one expiration each round, A and B keep firing and never count
 * more than the elapsed CLOCK_MONOTONIC time allows.
 *
 * usage: posix_timers */
#include "lib/crtest.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#define NS 1000000000LL
#define A_PERIOD (20 * 1000000LL)
#define B_PERIOD (25 * 1000000LL)

static atomic_long a_count, b_count, c_count;
static timer_t ta, tb, tc, td, te, tf;
static int sig_a, sig_e, sig_f;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int asked, answered;
static char e_result[200];

static long long now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return ts.tv_sec * NS + ts.tv_nsec;
}

static void on_a(int sig)
{
	(void)sig;
	atomic_fetch_add(&a_count, 1);
}

static void on_c(int sig)
{
	(void)sig;
	atomic_fetch_add(&c_count, 1);
}

/* F's expiration taken by one of B's callback threads. */
static atomic_int f_stolen;
static int f_code, f_timerid, f_value;
static void on_f(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	f_code = si->si_code;
	f_timerid = si->si_timerid;
	f_value = si->si_value.sival_int;
	atomic_fetch_add(&f_stolen, 1);
}

static void on_b(union sigval v)
{
	if (v.sival_int == 42)
		atomic_fetch_add(&b_count, 1);
}

static void arm(timer_t t, int flags, long long value, long long interval)
{
	struct itimerspec its = {
		.it_interval = { interval / NS, interval % NS },
		.it_value = { value / NS, value % NS },
	};
	if (timer_settime(t, flags, &its, NULL) != 0)
		cr_fail("timer_settime: %s", strerror(errno));
}

static long long left(timer_t t, long long *interval)
{
	struct itimerspec its;
	if (timer_gettime(t, &its) != 0)
		cr_fail("timer_gettime: %s", strerror(errno));
	if (interval)
		*interval = its.it_interval.tv_sec * NS + its.it_interval.tv_nsec;
	return its.it_value.tv_sec * NS + its.it_value.tv_nsec;
}

static timer_t make(clockid_t clock, int notify, int sig, int value, pid_t tid)
{
	struct sigevent ev;
	timer_t t;
	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = notify;
	ev.sigev_signo = sig;
	ev.sigev_value.sival_int = value;
	if (notify == SIGEV_THREAD)
		ev.sigev_notify_function = on_b;
	if (notify == SIGEV_THREAD_ID)
		ev._sigev_un._tid = tid;
	if (timer_create(clock, &ev, &t) != 0)
		cr_fail("timer_create: %s", strerror(errno));
	return t;
}

/* One expiration of `sig` is pending: take it, check it is timer `t`'s, and no more. */
static void take_expiration(int sig, timer_t t, int value, char *out, size_t len)
{
	sigset_t set;
	siginfo_t si;
	struct timespec zero = { 0, 0 };
	sigemptyset(&set);
	sigaddset(&set, sig);
	int got = sigtimedwait(&set, &si, &zero);
	int again = sigtimedwait(&set, &si, &zero) == sig;
	int err = errno;
	/* A callback thread of timer B (it runs with no signal blocked) may
	 * have taken the signal out of the queue and not yet run its handler:
	 * give the handler a moment to record it. */
	for (int i = 0; got != sig && sig == sig_f && i < 1000 && atomic_load(&f_stolen) == 0; i++)
		cr_sleep_us(1000);
	if (got != sig && sig == sig_f && atomic_load(&f_stolen) > 0) {
		/* Taken by a callback thread: its handler recorded it. */
		got = sig;
		si.si_code = f_code;
		si.si_timerid = f_timerid;
		si.si_value.sival_int = f_value;
		again = atomic_exchange(&f_stolen, 0) > 1;
	}
	if (got != sig) {
		snprintf(out, len, "no expiration pending (%s)", strerror(err));
		return;
	}
	snprintf(out, len, "one expiration, %s, %s timer, value %s%s",
		 si.si_code == SI_TIMER ? "SI_TIMER" : "NOT SI_TIMER",
		 si.si_timerid == (int)(intptr_t)t ? "its" : "ANOTHER",
		 si.si_value.sival_int == value ? "kept" : "LOST",
		 again ? ", THEN ANOTHER" : "");
}

static void *worker(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	for (;;) {
		while (asked == answered)
			pthread_cond_wait(&cv, &mu);
		if (asked < 0)
			break;
		take_expiration(sig_e, te, 5, e_result, sizeof(e_result));
		answered = asked;
		pthread_cond_broadcast(&cv);
	}
	pthread_mutex_unlock(&mu);
	return NULL;
}

static pid_t worker_tid;
static void *worker_start(void *arg)
{
	worker_tid = gettid();
	return worker(arg);
}

static void ask_worker(int k)
{
	pthread_mutex_lock(&mu);
	asked = k;
	pthread_cond_broadcast(&cv);
	while (answered != asked)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
}

/* E and F expire now; their signals stay pending through the next checkpoint. */
static void expire_e_and_f(void)
{
	arm(te, 0, 1000, 0);
	arm(tf, 0, 1000, 0);
	cr_sleep_us(5000);
}

int main(void)
{
	sigset_t block;
	pthread_t th;
	long long c_at, iv;

	sig_a = SIGRTMIN;
	sig_e = SIGRTMIN + 1;
	sig_f = SIGRTMIN + 2;
	signal(sig_a, on_a);
	signal(SIGUSR2, on_c);
	{
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = on_f;
		sa.sa_flags = SA_SIGINFO;
		sigaction(sig_f, &sa, NULL);
	}
	sigemptyset(&block);
	sigaddset(&block, sig_e);
	sigaddset(&block, sig_f);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
	if (pthread_create(&th, NULL, worker_start, NULL) != 0)
		cr_fail("pthread_create");
	while (__atomic_load_n(&worker_tid, __ATOMIC_ACQUIRE) == 0)
		cr_sleep_us(1000);

	timer_delete(make(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0));
	ta = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, sig_a, 1, 0);
	tb = make(CLOCK_MONOTONIC, SIGEV_THREAD, 0, 42, 0);
	tc = make(CLOCK_REALTIME, SIGEV_SIGNAL, SIGUSR2, 3, 0);
	td = make(CLOCK_BOOTTIME, SIGEV_NONE, 0, 0, 0);
	te = make(CLOCK_MONOTONIC, SIGEV_THREAD_ID, sig_e, 5, worker_tid);
	tf = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, sig_f, 6, 0);

	long long start = now_ns(CLOCK_MONOTONIC);
	arm(ta, 0, A_PERIOD, A_PERIOD);
	arm(tb, 0, B_PERIOD, B_PERIOD);
	c_at = now_ns(CLOCK_REALTIME) + 7200 * NS;
	arm(tc, 0, 7200 * NS, 0);
	arm(td, 0, 3600 * NS, 600 * NS);
	expire_e_and_f();
	cr_ready();

	for (int k = 1; k <= 3; k++) {
		char f_result[200];
		cr_gate(k);
		cr_line("round %d", k);
		take_expiration(sig_f, tf, 6, f_result, sizeof(f_result));
		cr_line("F (process): %s", f_result);
		ask_worker(k);
		cr_line("E (thread): %s", e_result);
		left(ta, NULL);
		left(tb, NULL);
		left(te, NULL);
		left(tf, NULL);
		cr_line("every timer answers timer_gettime");
		/* glibc signals every thread (SIGSETXID) and waits: the SIGEV_THREAD helper too. */
		cr_line("setuid and setgid with a SIGEV_THREAD timer: %s",
			setgid(getgid()) == 0 && setuid(getuid()) == 0 ? "ok" : "FAILED");
		cr_line("C left: %s, fired: %ld", (left(tc, &iv) > 6600 * NS && iv == 0) ? "ok" : "WRONG",
			atomic_load(&c_count));
		cr_line("C wall time within the run: %s",
			now_ns(CLOCK_REALTIME) + left(tc, NULL) >= c_at - 2 * NS ? "ok" : "WRONG");
		cr_line("D left: %s", left(td, &iv) > 3000 * NS ? "ok" : "WRONG");
		cr_line("D interval: %lld s", iv / NS);
		{
			long a0 = atomic_load(&a_count), b0 = atomic_load(&b_count);
			cr_sleep_us(300000);
			long a1 = atomic_load(&a_count), b1 = atomic_load(&b_count);
			long long allowed_a = (now_ns(CLOCK_MONOTONIC) - start) / A_PERIOD + 1;
			long long allowed_b = (now_ns(CLOCK_MONOTONIC) - start) / B_PERIOD + 1;
			cr_line("A fires: %s", a1 - a0 >= 3 ? "yes" : "NO");
			cr_line("B fires: %s", b1 - b0 >= 3 ? "yes" : "NO");
			cr_line("A and B counts consistent with the elapsed time: %s",
				a1 <= allowed_a && b1 <= allowed_b ? "yes" : "NO");
		}
		expire_e_and_f();
	}
	pthread_mutex_lock(&mu);
	asked = -1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	pthread_join(th, NULL);
	cr_pass();
	return 0;
}
