/* Threads that block every signal are checkpointed like the others (issue 12), and
 * keep seeing the masks they set.
 *
 * - 3 workers block every signal with pthread_sigmask(SIG_BLOCK, full), then compute
 *   hash chains, phase after phase; a 4th worker does the same after blocking with
 *   sigprocmask; worker 0 also starts a helper thread, which inherits the full mask
 *   without setting one itself and then waits in sem_wait until the phases are over
 *   (so it is stopped at every checkpoint, and the threads are the same at each);
 * - two waiters block every signal and take SIGUSR2 with sigwaitinfo / sigtimedwait
 *   on a full set; main sends each of them SIGUSR2 20 times per phase and waits for
 *   their acknowledgement; EINTR from either is a failure (no handler of ours can
 *   run in them);
 * - the masks read back (pthread_sigmask(SIG_BLOCK, NULL, &old), sigprocmask, the
 *   sa_mask of a handler installed with a full mask) contain every signal that was
 *   put in, signal 62 included (ckpt keeps its stop signal deliverable, unseen);
 * - every worker raises SIGUSR1 at the start of a phase and finds it still pending,
 *   never handled, at the end (after checkpoints and restarts in between), then
 *   takes it with sigtimedwait.
 * Checkpoints land while the workers compute and the waiters wait. */
#include "lib/crtest.h"

#include <pthread.h>
#include <semaphore.h>
#include <signal.h>

#define WORKERS 4
#define PHASES 4
#define ITERS 40000000UL
#define SENDS 20

static pthread_barrier_t start_b, end_b;
static volatile sig_atomic_t usr1_handled;
static uint64_t results[WORKERS][PHASES];
static uint64_t helper_result;
static int received[2];
static sem_t ack[2];
static pthread_t waiters[2];

static void on_usr1(int sig)
{
	(void)sig;
	usr1_handled++;
}

/* Every signal a full mask can hold: not SIGKILL or SIGSTOP (the kernel refuses
 * them) nor 32 and 33 (glibc keeps them out). */
static int maskable(int s)
{
	return s != SIGKILL && s != SIGSTOP && s != 32 && s != 33;
}

static void check_full(const sigset_t *m, const char *who)
{
	for (int s = 1; s <= 64; s++)
		if (maskable(s) && !sigismember(m, s))
			cr_fail("%s: signal %d is missing from the mask read back", who, s);
}

static void check_view(const char *who)
{
	sigset_t cur;
	if (pthread_sigmask(SIG_BLOCK, NULL, &cur) != 0)
		cr_fail("%s: pthread_sigmask query", who);
	check_full(&cur, who);
}

static void check_usr1_pending(const char *who)
{
	sigset_t p, one;
	if (sigpending(&p) != 0 || !sigismember(&p, SIGUSR1))
		cr_fail("%s: the SIGUSR1 it raised while blocked is not pending", who);
	if (usr1_handled != 1)
		cr_fail("%s: a blocked SIGUSR1 was handled", who);
	sigemptyset(&one);
	sigaddset(&one, SIGUSR1);
	struct timespec zero = { 0, 0 };
	if (sigtimedwait(&one, NULL, &zero) != SIGUSR1)
		cr_fail("%s: sigtimedwait did not take the pending SIGUSR1", who);
}

static uint64_t chain(uint64_t x)
{
	for (unsigned long i = 0; i < ITERS; i++)
		x = cr_mix(x);
	return x;
}

static sem_t helper_done;

static void *helper(void *arg)
{
	(void)arg;
	/* Never set a mask: it inherited its creator's full one. */
	check_view("helper (inherited mask)");
	sigset_t one;
	sigemptyset(&one);
	sigaddset(&one, SIGUSR1);
	if (pthread_sigmask(SIG_UNBLOCK, &one, NULL) != 0)
		cr_fail("helper: unblock SIGUSR1");
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	if (!sigismember(&cur, 62) || sigismember(&cur, SIGUSR1))
		cr_fail("helper: after unblocking SIGUSR1 the mask reads %s", "wrong");
	helper_result = chain(99);
	/* Alive, with the mask it inherited, through every checkpoint: it
	 * waits here until the phases are over (the visible mode compares the
	 * threads before and after, so it must not end in between). */
	while (sem_wait(&helper_done) != 0 && errno == EINTR)
		;
	return NULL;
}

static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	char who[32];
	snprintf(who, sizeof who, "worker %d", id);
	sigset_t all, old;
	sigfillset(&all);
	if (id == WORKERS - 1) {
		if (sigprocmask(SIG_BLOCK, &all, &old) != 0)
			cr_fail("%s: sigprocmask", who);
		sigset_t cur;
		if (sigprocmask(SIG_SETMASK, NULL, &cur) != 0)
			cr_fail("%s: sigprocmask query", who);
		check_full(&cur, who);
	} else if (pthread_sigmask(SIG_BLOCK, &all, &old) != 0) {
		cr_fail("%s: pthread_sigmask", who);
	}
	if (sigismember(&old, 62) || sigismember(&old, SIGUSR1))
		cr_fail("%s: the mask before blocking was not empty", who);
	check_view(who);
	pthread_t h;
	if (id == 0 && pthread_create(&h, NULL, helper, NULL) != 0)
		cr_fail("pthread_create helper");
	uint64_t x = (uint64_t)id * 1000 + 1;
	for (int p = 0; p < PHASES; p++) {
		pthread_barrier_wait(&start_b);
		raise(SIGUSR1);
		x = chain(x);
		results[id][p] = x;
		pthread_barrier_wait(&end_b);
		/* main passes a gate here */
		pthread_barrier_wait(&start_b);
		check_usr1_pending(who);
		check_view(who);
		pthread_barrier_wait(&end_b);
	}
	if (id == 0) {
		sem_post(&helper_done);
		pthread_join(h, NULL);
	}
	return NULL;
}

static void *waiter(void *arg)
{
	int id = (int)(intptr_t)arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
	check_view(id ? "waiter sigtimedwait" : "waiter sigwaitinfo");
	for (;;) {
		siginfo_t si;
		int s;
		if (id == 0) {
			s = sigwaitinfo(&all, &si);
		} else {
			struct timespec t = { 0, 300000000 };
			s = sigtimedwait(&all, &si, &t);
			if (s < 0 && errno == EAGAIN)
				continue;
		}
		if (s < 0)
			cr_fail("waiter %d: errno %d (%s)", id, errno,
				errno == EINTR ? "EINTR, with every signal blocked" : "?");
		if (s == SIGTERM)
			return NULL;
		if (s != SIGUSR2)
			cr_fail("waiter %d: took signal %d", id, s);
		received[id]++;
		sem_post(&ack[id]);
	}
}

static void send_all(void)
{
	for (int w = 0; w < 2; w++)
		for (int i = 0; i < SENDS; i++) {
			if (pthread_kill(waiters[w], SIGUSR2) != 0)
				cr_fail("pthread_kill");
			while (sem_wait(&ack[w]) != 0)
				if (errno != EINTR)
					cr_fail("sem_wait");
		}
}

int main(void)
{
	if (sem_init(&helper_done, 0, 0) != 0)
		cr_fail("sem_init");
	struct sigaction sa, back;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sigfillset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) != 0 || sigaction(SIGUSR1, NULL, &back) != 0)
		cr_fail("sigaction");
	if (!sigismember(&back.sa_mask, 62) || !sigismember(&back.sa_mask, SIGUSR2))
		cr_fail("the handler's sa_mask read back lost signals");
	raise(SIGUSR1);
	if (usr1_handled != 1)
		cr_fail("the SIGUSR1 handler did not run");

	pthread_barrier_init(&start_b, NULL, WORKERS + 1);
	pthread_barrier_init(&end_b, NULL, WORKERS + 1);
	pthread_t t[WORKERS];
	for (int i = 0; i < WORKERS; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) != 0)
			cr_fail("pthread_create");
	/* The waiters start with SIGUSR2 and SIGTERM blocked: main may send them one
	 * before they block everything. */
	sigset_t early;
	sigemptyset(&early);
	sigaddset(&early, SIGUSR2);
	sigaddset(&early, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &early, NULL);
	for (int i = 0; i < 2; i++) {
		sem_init(&ack[i], 0, 0);
		if (pthread_create(&waiters[i], NULL, waiter, (void *)(intptr_t)i) != 0)
			cr_fail("pthread_create waiter");
	}
	cr_ready();
	for (int p = 0; p < PHASES; p++) {
		pthread_barrier_wait(&start_b);
		send_all();
		pthread_barrier_wait(&end_b);
		for (int i = 0; i < WORKERS; i++)
			cr_line("phase %d worker %d %016llx", p + 1, i,
				(unsigned long long)results[i][p]);
		if (p + 1 <= 3)
			cr_gate(p + 1);
		pthread_barrier_wait(&start_b);
		pthread_barrier_wait(&end_b);
	}
	for (int i = 0; i < WORKERS; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < 2; i++) {
		pthread_kill(waiters[i], SIGTERM);
		pthread_join(waiters[i], NULL);
	}
	cr_line("helper %016llx", (unsigned long long)helper_result);
	cr_line("waiters took %d and %d", received[0], received[1]);
	if (received[0] != PHASES * SENDS || received[1] != PHASES * SENDS)
		cr_fail("the waiters took %d and %d signals, want %d", received[0], received[1],
			PHASES * SENDS);
	cr_pass();
	return 0;
}
