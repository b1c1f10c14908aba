/* sig62_own: a program that uses the checkpoint signal's number (SIGRTMAX-2,
 * 62) itself, as OpenJDK's libnet does to wake a thread blocked in a system
 * call (issue 12): its own SA_SIGINFO handler without SA_RESTART, a thread
 * blocked in read() woken by pthread_kill with EINTR, sigaction reporting the
 * program's action back. Checkpointed between rounds; the handler runs
 * exactly when the program sends the signal, and the wake-ups keep working
 * after a restart. */
#include "lib/crtest.h"
#include <pthread.h>
#include <signal.h>

#define ROUNDS 3
#define WAKE (SIGRTMAX - 2)

static volatile sig_atomic_t handled;
static int pipefd[2];
static volatile int woke_eintr;

static void on_wake(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig == WAKE && si->si_code == SI_TKILL)
		handled++;
}

static void *reader(void *arg)
{
	(void)arg;
	char c;
	for (;;) {
		ssize_t r = read(pipefd[0], &c, 1);
		if (r < 0 && errno == EINTR) {
			__atomic_add_fetch(&woke_eintr, 1, __ATOMIC_SEQ_CST);
			continue;
		}
		if (r == 1 && c == 'q')
			return NULL;
	}
}

int main(void)
{
	struct sigaction sa, old;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_wake;
	sa.sa_flags = SA_SIGINFO; /* no SA_RESTART: the read must fail with EINTR */
	sigemptyset(&sa.sa_mask);
	if (sigaction(WAKE, &sa, NULL) != 0)
		cr_fail("sigaction");
	if (sigaction(WAKE, NULL, &old) != 0 || old.sa_sigaction != on_wake ||
	    (old.sa_flags & SA_SIGINFO) == 0 || (old.sa_flags & SA_RESTART) != 0)
		cr_fail("sigaction does not report the program's action");
	if (pipe(pipefd) != 0)
		cr_fail("pipe");
	pthread_t t;
	if (pthread_create(&t, NULL, reader, NULL) != 0)
		cr_fail("pthread_create");
	cr_ready();
	for (int r = 0; r < ROUNDS; r++) {
		cr_gate(r + 1);
		/* A checkpoint interrupts the blocked read too (the program asked
		 * for no SA_RESTART on this signal number): only the program's own
		 * signal runs its handler, exactly once. */
		int before = __atomic_load_n(&woke_eintr, __ATOMIC_SEQ_CST);
		int h = handled;
		cr_sleep_us(20000);
		if (pthread_kill(t, WAKE) != 0)
			cr_fail("pthread_kill");
		for (int i = 0; i < 5000 && (handled == h ||
				__atomic_load_n(&woke_eintr, __ATOMIC_SEQ_CST) == before); i++)
			cr_sleep_us(1000);
		cr_sleep_us(20000);
		int woke = __atomic_load_n(&woke_eintr, __ATOMIC_SEQ_CST) - before;
		cr_line("round %d: the blocked read was interrupted: %s; the handler ran %d time(s)",
			r + 1, woke > 0 ? "yes" : "no", handled - h);
	}
	if (write(pipefd[1], "q", 1) != 1)
		cr_fail("write");
	pthread_join(t, NULL);
	cr_pass();
	return 0;
}
