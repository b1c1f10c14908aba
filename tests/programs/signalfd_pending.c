/* signalfd_pending: signals pending at the checkpoint, read through signalfds (issue 12).
 *
 * SIGUSR1, SIGUSR2 and SIGRTMIN+2 are blocked. Before each checkpoint the program queues
 * SIGUSR1 to the process (kill) and SIGUSR2 to its own thread (raise), and at the first
 * one SIGRTMIN+2 too; they stay pending. After the gate it checks sigpending(), that an
 * epoll instance watching the signalfd says it is ready, reads every signal from a
 * non-blocking signalfd (USR1, RTMIN+2) and from a blocking one (USR2 only), and checks
 * that nothing is left.
 *
 * usage: signalfd_pending */
#include "lib/crtest.h"
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>

static int sig_rt;

static void pending_line(void)
{
	sigset_t set;
	if (sigpending(&set) != 0)
		cr_fail("sigpending");
	cr_line("pending: USR1 %d USR2 %d RT+2 %d", sigismember(&set, SIGUSR1),
		sigismember(&set, SIGUSR2), sigismember(&set, sig_rt));
}

static int ready(int ep)
{
	struct epoll_event ev;
	int n;
	do
		n = epoll_wait(ep, &ev, 1, 0);
	while (n < 0 && errno == EINTR);
	return n;
}

/* Reads signals until the descriptor has none (non-blocking) or one was read (blocking). */
static void drain(const char *name, int fd, int once)
{
	struct signalfd_siginfo si;
	for (;;) {
		ssize_t n = read(fd, &si, sizeof(si));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n != sizeof(si))
			cr_fail("read %s: %zd %s", name, n, strerror(errno));
		cr_line("%s: signal %s", name,
			si.ssi_signo == SIGUSR1	  ? "USR1"
			: si.ssi_signo == SIGUSR2 ? "USR2"
			: (int)si.ssi_signo == sig_rt ? "RTMIN+2"
						      : "other");
		if (once)
			break;
	}
}

int main(void)
{
	sigset_t all, usr2;
	int nb, blk, ep;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 1 };

	sig_rt = SIGRTMIN + 2;
	sigemptyset(&all);
	sigaddset(&all, SIGUSR1);
	sigaddset(&all, SIGUSR2);
	sigaddset(&all, sig_rt);
	if (sigprocmask(SIG_BLOCK, &all, NULL) != 0)
		cr_fail("sigprocmask");
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigdelset(&all, SIGUSR2);
	nb = signalfd(-1, &all, SFD_NONBLOCK | SFD_CLOEXEC);
	blk = signalfd(-1, &usr2, 0);
	ep = epoll_create1(0);
	if (nb < 0 || blk < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, nb, &ev) != 0)
		cr_fail("setup: %s", strerror(errno));
	cr_line("ready with nothing pending: %d", ready(ep));
	kill(getpid(), SIGUSR1);
	raise(SIGUSR2);
	kill(getpid(), sig_rt);
	cr_ready();

	for (int k = 1; k <= 3; k++) {
		cr_gate(k);
		cr_line("round %d", k);
		pending_line();
		cr_line("epoll says ready: %d", ready(ep));
		drain("non-blocking", nb, 0);
		drain("blocking", blk, 1);
		pending_line();
		cr_line("epoll says ready: %d", ready(ep));
		kill(getpid(), SIGUSR1);
		raise(SIGUSR2);
	}
	drain("non-blocking", nb, 0);
	drain("blocking", blk, 1);
	pending_line();
	cr_pass();
	return 0;
}
