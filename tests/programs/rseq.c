/* rseq: glibc 2.36 registers a restartable-sequences area for every thread. After a
 * restore each thread's area must be registered again at the same address (the kernel
 * then answers a second registration with EBUSY) and the kernel must keep its cpu_id
 * current (sched_getcpu() reads it).
 *
 * usage: rseq [ROUNDS]   (default 40) */
#include "lib/crtest.h"
#include <pthread.h>
#include <sched.h>
#include <sys/rseq.h>
#include <sys/syscall.h>

static int rounds;

static struct rseq *area(void)
{
	return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

/* Empty string when this thread's rseq area is fine, else what is wrong. */
static const char *check(void)
{
	struct rseq *rs = area();
	long rc;

	if (__rseq_size == 0)
		return "glibc did not register rseq";
	/* glibc registers sizeof(struct rseq) (32) bytes; __rseq_size is the used part. */
	rc = syscall(SYS_rseq, rs, (unsigned)sizeof(struct rseq), 0, RSEQ_SIG);
	if (rc == 0)
		return "the rseq area was not registered (a new registration succeeded)";
	if (errno != EBUSY)
		return "registering the same rseq area again did not fail with EBUSY";
	/* The thread may migrate between the two reads; a few tries settle it. */
	for (int i = 0; i < 1000; i++) {
		unsigned cpu, node;
		int seen = (int)__atomic_load_n(&rs->cpu_id, __ATOMIC_RELAXED);
		if (syscall(SYS_getcpu, &cpu, &node, NULL) != 0)
			return "getcpu failed";
		if (seen == (int)cpu && sched_getcpu() == (int)cpu)
			return "";
	}
	return "rseq cpu_id never matched getcpu()";
}

static const char *volatile thread_err = "";

static void *worker(void *arg)
{
	(void)arg;
	for (int r = 0; r < rounds * 2; r++) {
		const char *e = check();
		if (e[0] != '\0') {
			thread_err = e;
			break;
		}
		cr_sleep_us(25000);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t th;

	rounds = argc > 1 ? atoi(argv[1]) : 40;
	if (rounds < 8)
		cr_fail("bad arguments");
	if (check()[0] != '\0')
		cr_fail("before start: %s", check());
	if (pthread_create(&th, NULL, worker, NULL) != 0)
		cr_fail("pthread_create");
	cr_ready();
	for (int r = 1; r <= rounds; r++) {
		const char *e = check();
		if (e[0] != '\0')
			cr_fail("round %d, main thread: %s", r, e);
		if (r % (rounds / 8) == 0)
			cr_line("round %d", r);
		if (r % (rounds / 4) == 0 && r / (rounds / 4) <= 3)
			cr_gate(r / (rounds / 4));
		cr_sleep_us(25000);
	}
	pthread_join(th, NULL);
	if (thread_err[0] != '\0')
		cr_fail("second thread: %s", thread_err);
	cr_pass();
	return 0;
}
