/* sigaltstack: signal handlers installed with SA_ONSTACK (as Python, Go and the JVM
 * install theirs) run after a restart, on the right stack: the main thread has no
 * alternate stack (its handler runs on the ordinary stack), a second thread has one
 * (its handler runs on it). Before the fix this test stands for, the main thread of a
 * restarted program kept the restart helper's alternate stack, in memory that no
 * longer existed, and died of SIGSEGV at its first such signal. */
#include "lib/crtest.h"
#include <pthread.h>
#include <signal.h>

static char *alt;
#define ALT_SIZE (256 * 1024)
static volatile int where[2]; /* 1: ordinary stack, 2: alternate stack */

static void handler(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	char here;
	int on_alt = &here >= alt && &here < alt + ALT_SIZE;
	where[sig == SIGUSR1 ? 0 : 1] = on_alt ? 2 : 1;
}

static pthread_barrier_t bar;

static void *thread(void *arg)
{
	(void)arg;
	stack_t ss = {.ss_sp = alt, .ss_size = ALT_SIZE, .ss_flags = 0};
	if (sigaltstack(&ss, NULL) != 0)
		cr_fail("sigaltstack");
	pthread_barrier_wait(&bar);
	for (int k = 1; k <= 3; k++) {
		pthread_barrier_wait(&bar); /* the main thread signals us */
		pthread_barrier_wait(&bar);
	}
	return NULL;
}

int main(void)
{
	alt = malloc(ALT_SIZE);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	pthread_barrier_init(&bar, NULL, 2);
	pthread_t t;
	pthread_create(&t, NULL, thread, NULL);
	pthread_barrier_wait(&bar);
	cr_ready();
	for (int k = 1; k <= 3; k++) {
		cr_gate(k);
		where[0] = where[1] = 0;
		pthread_barrier_wait(&bar);
		raise(SIGUSR1);
		pthread_kill(t, SIGUSR2);
		while (where[1] == 0)
			cr_sleep_us(1000);
		pthread_barrier_wait(&bar);
		stack_t o;
		sigaltstack(NULL, &o);
		cr_line("round %d: main handler on %s stack, thread handler on %s stack, main alt stack %s", k,
			where[0] == 2 ? "the alternate" : "the ordinary",
			where[1] == 2 ? "the alternate" : "the ordinary",
			(o.ss_flags & SS_DISABLE) ? "none" : "set");
	}
	pthread_join(t, NULL);
	cr_pass();
	return 0;
}
