/* sock_tcp: TCP and UDP sockets between two processes of the job (issue 13),
 * checkpointed with bytes in flight:
 *   - a listening socket on 127.0.0.1 and one on [::1] (IPV6_V6ONLY), both
 *     with SO_REUSEADDR, as servers set it;
 *   - per round, a connection from the child to each: bytes queued from the
 *     parent to the child on the IPv4 one, from the child to the parent on the
 *     IPv6 one (TCP_NODELAY and SO_KEEPALIVE on it);
 *   - a connection the parent has not accepted yet at the gate;
 *   - a connection the child half-closed after its last bytes;
 *   - a UDP socket in each process, bound and connected to the other's, used
 *     after the gate.
 * After each gate both processes read everything, check every byte, and the
 * parent prints what it saw. Output identical to an uninterrupted run means
 * nothing was lost, duplicated or reordered, and the addresses, ports and
 * options came back. */
#include "lib/crtest.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#define ROUNDS 3

static void xsend(int fd, const void *b, size_t n)
{
	const char *p = b;
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			cr_fail("send: %s", strerror(errno));
		p += w;
		n -= (size_t)w;
	}
}

static size_t xrecv_all(int fd, void *b, size_t n)
{
	char *p = b;
	size_t got = 0;
	while (got < n) {
		ssize_t r = recv(fd, p + got, n - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			cr_fail("recv: %s", strerror(errno));
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return got;
}

static void fill(unsigned char *b, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)(cr_mix(seed + i / 8) >> (8 * (i % 8)));
}

static void check(const unsigned char *b, size_t n, uint64_t seed, const char *what)
{
	unsigned char *want = malloc(n ? n : 1);
	fill(want, n, seed);
	if (memcmp(b, want, n) != 0)
		cr_fail("%s: bytes differ", what);
	free(want);
}

static size_t stream_len(int r, int dir)
{
	return 30000 + (size_t)r * 7001 + (size_t)dir * 1234;
}

static int tcp_socket(int family)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		cr_fail("socket: %s", strerror(errno));
	return fd;
}

/* The address of a listening socket, to connect to. */
struct where {
	struct sockaddr_storage a;
	socklen_t len;
};

static struct where listen_on(int fd, int family)
{
	int one = 1;
	struct where w = { 0 };
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&w.a;
		s->sin_family = AF_INET;
		s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		w.len = sizeof *s;
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&w.a;
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
		s->sin6_family = AF_INET6;
		s->sin6_addr = in6addr_loopback;
		w.len = sizeof *s;
	}
	if (bind(fd, (struct sockaddr *)&w.a, w.len) != 0 || listen(fd, 8) != 0)
		cr_fail("bind/listen: %s", strerror(errno));
	if (getsockname(fd, (struct sockaddr *)&w.a, &w.len) != 0)
		cr_fail("getsockname: %s", strerror(errno));
	return w;
}

static int connect_to(const struct where *w)
{
	int fd = tcp_socket(w->a.ss_family);
	if (connect(fd, (const struct sockaddr *)&w->a, w->len) != 0)
		cr_fail("connect: %s", strerror(errno));
	return fd;
}

static int xaccept(int l)
{
	int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (a < 0)
		cr_fail("accept: %s", strerror(errno));
	return a;
}

static int udp_pair[2];

static void udp_setup(void)
{
	struct sockaddr_in a[2];
	for (int i = 0; i < 2; i++) {
		udp_pair[i] = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		memset(&a[i], 0, sizeof a[i]);
		a[i].sin_family = AF_INET;
		a[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		socklen_t l = sizeof a[i];
		if (bind(udp_pair[i], (struct sockaddr *)&a[i], sizeof a[i]) != 0 ||
		    getsockname(udp_pair[i], (struct sockaddr *)&a[i], &l) != 0)
			cr_fail("udp bind: %s", strerror(errno));
	}
	for (int i = 0; i < 2; i++)
		if (connect(udp_pair[i], (struct sockaddr *)&a[1 - i], sizeof a[0]) != 0)
			cr_fail("udp connect: %s", strerror(errno));
}

static void child(int ctl, const struct where *w4, const struct where *w6)
{
	unsigned char *buf = malloc(1 << 20);
	int one = 1;
	for (int r = 0; r < ROUNDS; r++) {
		int c4 = connect_to(w4);
		int c6 = connect_to(w6);
		setsockopt(c6, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		setsockopt(c6, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
		size_t n = stream_len(r, 1);
		fill(buf, n, 2000 + (uint64_t)r);
		xsend(c6, buf, n);
		/* Half-closed after its last bytes. */
		int h = connect_to(w4);
		char last[32];
		int lk = snprintf(last, sizeof last, "last words %d", r + 1);
		xsend(h, last, (size_t)lk);
		shutdown(h, SHUT_WR);
		/* Not accepted until after the gate. */
		int p = connect_to(w4);
		xsend(ctl, "R", 1);
		char g;
		if (xrecv_all(ctl, &g, 1) != 1)
			cr_fail("child: control closed");
		size_t m = stream_len(r, 0);
		if (xrecv_all(c4, buf, m) != m)
			cr_fail("child: stream short");
		check(buf, m, 1000 + (uint64_t)r, "child stream");
		int got;
		if (recv(udp_pair[1], &got, sizeof got, 0) != sizeof got || got != r)
			cr_fail("child: udp");
		got += 100;
		if (send(udp_pair[1], &got, sizeof got, 0) != sizeof got)
			cr_fail("child: udp send");
		xsend(p, "P", 1);
		xsend(ctl, "D", 1);
		close(c4);
		close(c6);
		close(h);
		close(p);
	}
	_exit(0);
}

int main(void)
{
	int ctl[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0)
		cr_fail("socketpair");
	int L4 = tcp_socket(AF_INET), L6 = tcp_socket(AF_INET6);
	struct where w4 = listen_on(L4, AF_INET), w6 = listen_on(L6, AF_INET6);
	udp_setup();
	pid_t pid = fork();
	if (pid < 0)
		cr_fail("fork");
	if (pid == 0) {
		close(ctl[0]);
		close(L4);
		close(L6);
		child(ctl[1], &w4, &w6);
	}
	close(ctl[1]);
	cr_ready();

	unsigned char *buf = malloc(1 << 20);
	for (int r = 0; r < ROUNDS; r++) {
		int a4 = xaccept(L4), a6 = xaccept(L6), h = xaccept(L4);
		size_t n = stream_len(r, 0);
		fill(buf, n, 1000 + (uint64_t)r);
		xsend(a4, buf, n);
		char q;
		if (xrecv_all(ctl[0], &q, 1) != 1)
			cr_fail("control closed");

		cr_gate(r + 1);

		xsend(ctl[0], "G", 1);
		size_t m = stream_len(r, 1);
		if (xrecv_all(a6, buf, m) != m)
			cr_fail("parent stream short");
		check(buf, m, 2000 + (uint64_t)r, "parent stream");
		int nodelay = 0, keep = 0;
		socklen_t ol = sizeof nodelay;
		char last[64] = { 0 };
		size_t lk = xrecv_all(h, last, sizeof last - 1);
		if (send(udp_pair[0], &r, sizeof r, 0) != sizeof r)
			cr_fail("udp send");
		int back;
		if (recv(udp_pair[0], &back, sizeof back, 0) != sizeof back || back != r + 100)
			cr_fail("udp reply");
		int p = xaccept(L4);
		char pc;
		if (xrecv_all(p, &pc, 1) != 1 || pc != 'P')
			cr_fail("pending connection");
		if (xrecv_all(ctl[0], &q, 1) != 1)
			cr_fail("control closed");
		/* The child's options, seen from its socket's peer: not visible;
		 * ours on the accepted end are the listener's (none set). */
		getsockopt(a6, IPPROTO_TCP, TCP_NODELAY, &nodelay, &ol);
		getsockopt(a6, SOL_SOCKET, SO_KEEPALIVE, &keep, &ol);
		cr_line("round %d: %zu bytes each way checked, half-closed \"%.*s\" then end of file, "
			"pending connection accepted, udp ok, nodelay %d keepalive %d",
			r + 1, m, (int)lk, last, nodelay, keep);
		close(a4);
		close(a6);
		close(h);
		close(p);
	}
	int st;
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		cr_fail("child failed");
	cr_pass();
	return 0;
}
