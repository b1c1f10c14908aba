/* sock_unix: every kind of unix socket state ckpt restores (issue 13), held by
 * two processes, checkpointed with data queued everywhere:
 *   - a stream socketpair between parent and child, bytes queued both ways;
 *   - a datagram socketpair, datagrams of several sizes queued (boundaries);
 *   - a seqpacket socketpair, records queued from the child;
 *   - a listening stream socket bound to a relative path ("srv.sock"), with an
 *     accepted connection (request bytes queued at the accepted end) and a
 *     pending connection, not accepted until after the gate;
 *   - a datagram socket bound to an abstract name, with datagrams queued from an
 *     unnamed, unconnected sender;
 *   - a stream pair half-closed: one end sent its last bytes and shut down writing.
 * At each of three gates all of that is queued; after the gate both processes read
 * everything, check every byte and boundary, and the parent prints what it saw (the
 * child reports over a control socketpair). Output identical to an uninterrupted run
 * means nothing was lost, duplicated, merged or split. */
#include "lib/crtest.h"
#include <signal.h>
#include <stddef.h>
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

static void xrecv_all(int fd, void *b, size_t n)
{
	char *p = b;
	while (n > 0) {
		ssize_t r = recv(fd, p, n, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			cr_fail("recv: %s", r == 0 ? "end of file" : strerror(errno));
		p += r;
		n -= (size_t)r;
	}
}

/* One message; returns its length. */
static size_t xrecv_msg(int fd, void *b, size_t cap)
{
	for (;;) {
		ssize_t r = recv(fd, b, cap, MSG_TRUNC);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			cr_fail("recv message: %s", strerror(errno));
		if ((size_t)r > cap)
			cr_fail("message of %zd bytes truncated", r);
		return (size_t)r;
	}
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

static struct sockaddr_un addr(const char *name, int abstract, socklen_t *len)
{
	struct sockaddr_un a;
	memset(&a, 0, sizeof a);
	a.sun_family = AF_UNIX;
	size_t n = strlen(name);
	if (abstract) {
		memcpy(a.sun_path + 1, name, n);
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
	} else {
		memcpy(a.sun_path, name, n);
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	}
	return a;
}

static int xsocket(int ty)
{
	int fd = socket(AF_UNIX, ty | SOCK_CLOEXEC, 0);
	if (fd < 0)
		cr_fail("socket: %s", strerror(errno));
	return fd;
}

static void xpair(int ty, int sv[2])
{
	if (socketpair(AF_UNIX, ty | SOCK_CLOEXEC, 0, sv) != 0)
		cr_fail("socketpair: %s", strerror(errno));
}

static int connect_srv(void)
{
	socklen_t len;
	struct sockaddr_un a = addr("srv.sock", 0, &len);
	int c = xsocket(SOCK_STREAM);
	if (connect(c, (struct sockaddr *)&a, len) != 0)
		cr_fail("connect srv.sock: %s", strerror(errno));
	return c;
}

static const size_t DGRAM_SIZES[] = {1, 700, 60000, 13, 4096};
#define NDGRAM (sizeof DGRAM_SIZES / sizeof DGRAM_SIZES[0])
static const size_t SEQ_SIZES[] = {5, 100000, 9};
#define NSEQ (sizeof SEQ_SIZES / sizeof SEQ_SIZES[0])

static size_t stream_len(int r, int who) { return 40000 + (size_t)r * 17000 + (size_t)who * 3333; }

/* The child: holds the other end of the stream, datagram and seqpacket pairs. */
static void child(int ctl, int s, int d, int q)
{
	unsigned char *buf = malloc(1 << 20);
	for (int r = 0; r < ROUNDS; r++) {
		/* Queue: stream bytes to the parent, seqpacket records. */
		size_t n = stream_len(r, 1);
		fill(buf, n, 1000 + (uint64_t)r);
		xsend(s, buf, n);
		for (size_t i = 0; i < NSEQ; i++) {
			fill(buf, SEQ_SIZES[i], 2000 + (uint64_t)r * 10 + i);
			xsend(q, buf, SEQ_SIZES[i]);
		}
		xsend(ctl, "Q", 1);
		char go;
		xrecv_all(ctl, &go, 1);
		/* Read what the parent queued. */
		n = stream_len(r, 0);
		xrecv_all(s, buf, n);
		check(buf, n, 100 + (uint64_t)r, "child stream");
		for (size_t i = 0; i < NDGRAM; i++) {
			size_t got = xrecv_msg(d, buf, 1 << 20);
			if (got != DGRAM_SIZES[i])
				cr_fail("child datagram %zu: %zu bytes, want %zu", i, got, DGRAM_SIZES[i]);
			check(buf, got, 300 + (uint64_t)r * 10 + i, "child datagram");
		}
		char rep[64];
		int k = snprintf(rep, sizeof rep, "round %d child ok %zu", r + 1, n);
		xsend(ctl, rep, (size_t)k);
	}
	_exit(0);
}

int main(void)
{
	int ctl[2], S[2], D[2], Q[2], H[2];
	xpair(SOCK_SEQPACKET, ctl);
	xpair(SOCK_STREAM, S);
	xpair(SOCK_DGRAM, D);
	xpair(SOCK_SEQPACKET, Q);
	/* Datagrams of up to 100000 bytes need the larger buffer. */
	int big = 400000;
	setsockopt(D[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
	setsockopt(Q[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
	unlink("srv.sock");
	int L = xsocket(SOCK_STREAM);
	socklen_t len;
	struct sockaddr_un a = addr("srv.sock", 0, &len);
	if (bind(L, (struct sockaddr *)&a, len) != 0 || listen(L, 5) != 0)
		cr_fail("bind/listen srv.sock: %s", strerror(errno));
	char abs_name[64];
	/* Abstract names are shared by the whole network namespace (and pids
	 * inside ckpt's jobs are all alike): name it after the directory. */
	char cwd[4096];
	uint64_t h = 0;
	if (!getcwd(cwd, sizeof cwd))
		cr_fail("getcwd");
	for (char *c = cwd; *c; c++)
		h = cr_mix(h ^ (unsigned char)*c);
	snprintf(abs_name, sizeof abs_name, "ckpt-sock-unix-%016llx", (unsigned long long)h);
	int R = xsocket(SOCK_DGRAM);
	a = addr(abs_name, 1, &len);
	struct sockaddr_un abs_addr = a;
	socklen_t abs_len = len;
	if (bind(R, (struct sockaddr *)&a, len) != 0)
		cr_fail("bind @%s: %s", abs_name, strerror(errno));
	int U = xsocket(SOCK_DGRAM);

	pid_t pid = fork();
	if (pid < 0)
		cr_fail("fork");
	if (pid == 0) {
		close(ctl[0]);
		close(S[0]);
		close(D[0]);
		close(Q[0]);
		close(L);
		close(R);
		close(U);
		child(ctl[1], S[1], D[1], Q[1]);
	}
	close(ctl[1]);
	close(S[1]);
	close(D[1]);
	close(Q[1]);
	cr_ready();

	unsigned char *buf = malloc(1 << 20);
	for (int r = 0; r < ROUNDS; r++) {
		/* Stream bytes and datagrams to the child. */
		size_t n = stream_len(r, 0);
		fill(buf, n, 100 + (uint64_t)r);
		xsend(S[0], buf, n);
		for (size_t i = 0; i < NDGRAM; i++) {
			fill(buf, DGRAM_SIZES[i], 300 + (uint64_t)r * 10 + i);
			xsend(D[0], buf, DGRAM_SIZES[i]);
		}
		/* Datagrams to the abstract name from an unnamed sender. */
		for (int i = 0; i < 4; i++) {
			char m[32];
			int k = snprintf(m, sizeof m, "dgram %d.%d", r + 1, i);
			if (sendto(U, m, (size_t)k, 0, (struct sockaddr *)&abs_addr, abs_len) != k)
				cr_fail("sendto @name: %s", strerror(errno));
		}
		/* An accepted connection with a request queued, and a pending one. */
		int K = connect_srv();
		int A = accept4(L, NULL, NULL, SOCK_CLOEXEC);
		if (A < 0)
			cr_fail("accept: %s", strerror(errno));
		char req[32];
		int rk = snprintf(req, sizeof req, "request %d", r + 1);
		xsend(K, req, (size_t)rk);
		int P = connect_srv();
		/* A half-closed stream. */
		xpair(SOCK_STREAM, H);
		char last[32];
		int lk = snprintf(last, sizeof last, "last words %d", r + 1);
		xsend(H[0], last, (size_t)lk);
		shutdown(H[0], SHUT_WR);
		char q;
		xrecv_all(ctl[0], &q, 1);

		cr_gate(r + 1);

		xsend(ctl[0], "G", 1);
		xrecv_all(S[0], buf, stream_len(r, 1));
		check(buf, stream_len(r, 1), 1000 + (uint64_t)r, "parent stream");
		for (size_t i = 0; i < NSEQ; i++) {
			size_t got = xrecv_msg(Q[0], buf, 1 << 20);
			if (got != SEQ_SIZES[i])
				cr_fail("record %zu: %zu bytes, want %zu", i, got, SEQ_SIZES[i]);
			check(buf, got, 2000 + (uint64_t)r * 10 + i, "record");
		}
		for (int i = 0; i < 4; i++) {
			char m[64];
			struct sockaddr_un from;
			socklen_t fl = sizeof from;
			ssize_t k = recvfrom(R, m, sizeof m - 1, 0, (struct sockaddr *)&from, &fl);
			if (k < 0)
				cr_fail("recvfrom: %s", strerror(errno));
			m[k] = 0;
			char want[32];
			snprintf(want, sizeof want, "dgram %d.%d", r + 1, i);
			if (strcmp(m, want) != 0)
				cr_fail("abstract datagram %d: %s, want %s", i, m, want);
			if (fl > offsetof(struct sockaddr_un, sun_path))
				cr_fail("the datagram has a sender name");
		}
		char got[64] = {0};
		ssize_t k = recv(A, got, sizeof got - 1, 0);
		if (k != rk || memcmp(got, req, (size_t)rk) != 0)
			cr_fail("request: %.*s", (int)(k > 0 ? k : 0), got);
		/* The names a restart must keep. */
		struct sockaddr_un nm;
		socklen_t nl = sizeof nm;
		if (getsockname(A, (struct sockaddr *)&nm, &nl) != 0 || strcmp(nm.sun_path, "srv.sock") != 0)
			cr_fail("accepted socket named %s", nm.sun_path);
		nl = sizeof nm;
		if (getpeername(K, (struct sockaddr *)&nm, &nl) != 0 || strcmp(nm.sun_path, "srv.sock") != 0)
			cr_fail("client's peer named %s", nm.sun_path);
		int A2 = accept4(L, NULL, NULL, SOCK_CLOEXEC);
		if (A2 < 0)
			cr_fail("accept the pending connection: %s", strerror(errno));
		xsend(P, "late", 4);
		char late[4];
		xrecv_all(A2, late, 4);
		memset(got, 0, sizeof got);
		xrecv_all(H[1], got, (size_t)lk);
		if (memcmp(got, last, (size_t)lk) != 0 || recv(H[1], got, 1, 0) != 0)
			cr_fail("half-closed stream: %s", got);
		char rep[64] = {0};
		ssize_t rn = recv(ctl[0], rep, sizeof rep - 1, 0);
		if (rn <= 0)
			cr_fail("no report from the child");
		cr_line("round %d: stream %zu+%zu bytes, %zu datagrams, %zu records, 4 named, names kept, pending accepted, half-closed ok; %s",
			r + 1, stream_len(r, 0), stream_len(r, 1), NDGRAM, NSEQ, rep);
		for (int *f = (int[]){K, A, P, A2, H[0], H[1]}, i = 0; i < 6; i++)
			close(f[i]);
	}
	int st;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		cr_fail("child ended badly");
	unlink("srv.sock");
	cr_pass();
	return 0;
}
