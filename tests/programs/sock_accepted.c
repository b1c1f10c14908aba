/* sock_accepted: a TCP server that set no SO_REUSEADDR, with several connections
 * accepted from its listening socket (issue 13).
 *
 * The accepted sockets share the listening socket's port. A restart makes each of
 * them at that port while the others are already there, which the kernel allows only
 * while every socket on the port has SO_REUSEADDR; the program's own value (off) must
 * come back afterwards. Before each gate the parent queues a line on every connection
 * and the child one on each the other way; after it both read, check and answer; the
 * parent prints what it saw, the ports and the options.
 *
 * usage: sock_accepted */
#include "lib/crtest.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define CONNS 4

static void xsend(int fd, const char *s)
{
	size_t n = strlen(s);
	while (n > 0) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			cr_fail("send: %s", strerror(errno));
		s += w;
		n -= (size_t)w;
	}
}

/* One line (up to '\n') from fd. */
static void xline(int fd, char *buf, size_t len)
{
	size_t i = 0;
	while (i + 1 < len) {
		ssize_t r = recv(fd, buf + i, 1, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r != 1)
			cr_fail("recv: %s", r == 0 ? "end of file" : strerror(errno));
		if (buf[i++] == '\n')
			break;
	}
	buf[i] = '\0';
}

static int reuse(int fd)
{
	int v = -1;
	socklen_t l = sizeof(v);
	getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &v, &l);
	return v;
}

static int port(int fd)
{
	struct sockaddr_in a;
	socklen_t l = sizeof(a);
	getsockname(fd, (struct sockaddr *)&a, &l);
	return ntohs(a.sin_port);
}

int main(void)
{
	int lfd = socket(AF_INET, SOCK_STREAM, 0), zero = 0;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int fds[CONNS];
	char line[128], want[128];
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &zero, sizeof(zero)) ||
	    bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 8) ||
	    getsockname(lfd, (struct sockaddr *)&a, &al))
		cr_fail("listen: %s", strerror(errno));
	pid_t child = fork();
	if (child < 0)
		cr_fail("fork");
	if (child == 0) {
		close(lfd);
		for (int i = 0; i < CONNS; i++) {
			fds[i] = socket(AF_INET, SOCK_STREAM, 0);
			if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a, sizeof(a)))
				_exit(3);
			snprintf(line, sizeof(line), "hello %d\n", i);
			xsend(fds[i], line);
		}
		for (int k = 1; k <= 3; k++) {
			for (int i = 0; i < CONNS; i++) {
				snprintf(line, sizeof(line), "child %d round %d\n", i, k);
				xsend(fds[i], line);
			}
			for (int i = 0; i < CONNS; i++) {
				char got[128];
				xline(fds[i], got, sizeof(got));
				snprintf(want, sizeof(want), "parent %d round %d\n", i, k);
				if (strcmp(got, want) != 0)
					_exit(4);
			}
		}
		_exit(0);
	}
	for (int i = 0; i < CONNS; i++) {
		if ((fds[i] = accept(lfd, NULL, NULL)) < 0)
			cr_fail("accept: %s", strerror(errno));
		xline(fds[i], line, sizeof(line));
	}
	cr_ready();
	for (int k = 1; k <= 3; k++) {
		/* Queued both ways across the gate. */
		for (int i = 0; i < CONNS; i++) {
			snprintf(line, sizeof(line), "parent %d round %d\n", i, k);
			xsend(fds[i], line);
		}
		cr_sleep_us(20000);
		cr_gate(k);
		int same_port = 1, reuse_off = reuse(lfd) == 0;
		for (int i = 0; i < CONNS; i++) {
			xline(fds[i], line, sizeof(line));
			snprintf(want, sizeof(want), "child %d round %d\n", i, k);
			if (strcmp(line, want) != 0)
				cr_fail("connection %d: got %s", i, line);
			same_port &= port(fds[i]) == port(lfd);
			reuse_off &= reuse(fds[i]) == 0;
		}
		cr_line("round %d: %d connections delivered their line", k, CONNS);
		cr_line("accepted ends on the listening port: %s", same_port ? "yes" : "NO");
		cr_line("SO_REUSEADDR off as the program left it: %s", reuse_off ? "yes" : "NO");
	}
	int st = 0;
	waitpid(child, &st, 0);
	cr_line("child exit: %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	cr_pass();
	return 0;
}
