/* sigaction_own: the program installs its own handlers for SIGUSR1, SIGUSR2 (on an
 * alternate signal stack), SIGRTMIN and SIGRTMAX, and keeps SIGRTMIN+1 blocked. The runner
 * sends signals one at a time; for each delivery the main loop prints
 * "ack SEQ NAME COUNT". While $CR_GATE_DIR/gate-1 exists the program keeps waiting for
 * signals; then it unblocks SIGRTMIN+1 (the runner left one pending before the checkpoint,
 * so it must still be pending after a restart), prints the counts and checks that the
 * SIGUSR2 handler always ran on the alternate stack.
 *
 * usage: sigaction_own            (prints "READY pid=N" with its own getpid()) */
#include "lib/crtest.h"
#include <signal.h>

enum { S_USR1, S_USR2, S_RTMIN, S_RTMAX, S_PENDING, NSIG_OWN };
static const char *const names[NSIG_OWN] = { "USR1", "USR2", "RTMIN", "RTMAX", "PENDING" };
static volatile sig_atomic_t counts[NSIG_OWN];
static volatile sig_atomic_t off_altstack, bad_info;
static char *alt_base;
static size_t alt_size = 1 << 16;

static int slot(int sig)
{
	if (sig == SIGUSR1)
		return S_USR1;
	if (sig == SIGUSR2)
		return S_USR2;
	if (sig == SIGRTMIN)
		return S_RTMIN;
	if (sig == SIGRTMAX)
		return S_RTMAX;
	if (sig == SIGRTMIN + 1)
		return S_PENDING;
	return -1;
}

static void handler(int sig, siginfo_t *info, void *uc)
{
	int s = slot(sig);
	char here;

	(void)uc;
	if (s < 0 || info->si_signo != sig) {
		bad_info = 1;
		return;
	}
	if (sig == SIGUSR2 && (&here < alt_base || &here >= alt_base + alt_size))
		off_altstack = 1;
	counts[s]++;
}

static void install(int sig, int flags)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART | flags;
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL) != 0)
		cr_fail("sigaction(%d): %s", sig, strerror(errno));
}

static int gate_open(void)
{
	const char *dir = getenv("CR_GATE_DIR");
	char path[4096];

	if (dir == NULL || dir[0] == '\0')
		return 1;
	snprintf(path, sizeof(path), "%s/gate-1", dir);
	if (access(path, F_OK) != 0)
		return 1;
	cr_ping(path);
	return 0;
}

int main(void)
{
	stack_t ss;
	sigset_t blk;
	int seen[NSIG_OWN] = { 0 };
	int seq = 0;

	alt_base = malloc(alt_size);
	ss.ss_sp = alt_base;
	ss.ss_size = alt_size;
	ss.ss_flags = 0;
	if (alt_base == NULL || sigaltstack(&ss, NULL) != 0)
		cr_fail("sigaltstack");
	install(SIGUSR1, 0);
	install(SIGUSR2, SA_ONSTACK);
	install(SIGRTMIN, 0);
	install(SIGRTMAX, 0);
	install(SIGRTMIN + 1, 0);
	sigemptyset(&blk);
	sigaddset(&blk, SIGRTMIN + 1);
	if (sigprocmask(SIG_BLOCK, &blk, NULL) != 0)
		cr_fail("sigprocmask");
	cr_started();
	cr_line("READY pid=%d", getpid());

	while (!gate_open()) {
		for (int s = 0; s < S_PENDING; s++)
			while (seen[s] < counts[s]) {
				seen[s]++;
				cr_line("ack %d %s %d", ++seq, names[s], seen[s]);
			}
		cr_sleep_us(1000);
	}
	if (counts[S_PENDING] != 0)
		cr_fail("SIGRTMIN+1 was delivered while blocked");
	if (sigprocmask(SIG_UNBLOCK, &blk, NULL) != 0)
		cr_fail("sigprocmask");
	cr_line("pending %d", (int)counts[S_PENDING]);
	cr_line("final usr1=%d usr2=%d rtmin=%d rtmax=%d", (int)counts[S_USR1],
		(int)counts[S_USR2], (int)counts[S_RTMIN], (int)counts[S_RTMAX]);
	if (bad_info)
		cr_fail("a handler got a wrong signal number");
	if (off_altstack)
		cr_fail("the SIGUSR2 handler did not run on the alternate stack");
	cr_pass();
	return 0;
}
