/* sock_udp: UDP datagrams queued across checkpoints (issue 13).
 *
 * The parent holds three receivers: R4 at 127.0.0.1, R6 at the IPv6 wildcard
 * (dual stack), and C, connected to the child's D (and D to C). The child
 * holds senders S4 (127.0.0.1) and S6 (::1), and D. Each round the child
 * sends datagrams of several sizes (up to 60000 bytes) to R4 from S4, to R6
 * from S4 and from S6 (mixed), and to C from D, then tells the parent, which
 * stops at the gate with all of them unread: the checkpoint saves them. After
 * the gate the parent reads every datagram, checks its bytes, its order and
 * its sender's address and port, and prints what it got. Output identical to
 * an uninterrupted run means none was lost, duplicated, reordered or put back
 * from the wrong sender. */
#include "lib/crtest.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define ROUNDS 3

static void fill(unsigned char *b, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)(cr_mix(seed + i / 8) >> (8 * (i % 8)));
}

static int udp_at(int family, const char *ip, struct sockaddr_storage *a, socklen_t *len)
{
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		cr_fail("socket: %s", strerror(errno));
	memset(a, 0, sizeof(*a));
	if (family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)a;
		s->sin_family = AF_INET;
		inet_pton(AF_INET, ip, &s->sin_addr);
		*len = sizeof(*s);
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)a;
		s->sin6_family = AF_INET6;
		inet_pton(AF_INET6, ip, &s->sin6_addr);
		*len = sizeof(*s);
	}
	int big = 1 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	if (bind(fd, (struct sockaddr *)a, *len) != 0 || getsockname(fd, (struct sockaddr *)a, len) != 0)
		cr_fail("bind %s: %s", ip, strerror(errno));
	return fd;
}

static int port_of(const struct sockaddr_storage *a)
{
	return a->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)a)->sin_port)
				       : ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
}

/* Loopback address of `family` with `port`. */
static void loop_to(int family, int port, struct sockaddr_storage *a, socklen_t *len)
{
	memset(a, 0, sizeof(*a));
	if (family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)a;
		s->sin_family = AF_INET;
		s->sin_port = htons((uint16_t)port);
		s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		*len = sizeof(*s);
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)a;
		s->sin6_family = AF_INET6;
		s->sin6_port = htons((uint16_t)port);
		s->sin6_addr = in6addr_loopback;
		*len = sizeof(*s);
	}
}

/* The datagrams of a round: which receiver (0 R4, 1 R6, 2 C), which sender
 * (0 S4, 1 S6, 2 D) and how long. */
struct dgram {
	int to, from;
	size_t len;
};

static int plan(int r, struct dgram *d)
{
	int n = 0;
	d[n++] = (struct dgram){ 0, 0, 100 + (size_t)r };
	d[n++] = (struct dgram){ 1, 1, 60000 - (size_t)r * 1000 };
	d[n++] = (struct dgram){ 0, 0, 3000 * (size_t)r };
	d[n++] = (struct dgram){ 1, 0, 1 };
	d[n++] = (struct dgram){ 2, 2, 512 };
	d[n++] = (struct dgram){ 1, 1, 17 + (size_t)r };
	d[n++] = (struct dgram){ 2, 2, 20000 + (size_t)r };
	return n;
}

int main(void)
{
	struct sockaddr_storage ar4, ar6, ac, as4, as6, ad;
	socklen_t lr4, lr6, lc, ls4, ls6, ld;
	int r4 = udp_at(AF_INET, "127.0.0.1", &ar4, &lr4);
	int r6 = udp_at(AF_INET6, "::", &ar6, &lr6);
	int c = udp_at(AF_INET, "127.0.0.1", &ac, &lc);
	int s4 = udp_at(AF_INET, "127.0.0.1", &as4, &ls4);
	int s6 = udp_at(AF_INET6, "::1", &as6, &ls6);
	int d = udp_at(AF_INET, "127.0.0.1", &ad, &ld);
	if (connect(c, (struct sockaddr *)&ad, ld) != 0 || connect(d, (struct sockaddr *)&ac, lc) != 0)
		cr_fail("connect: %s", strerror(errno));
	int go[2], sent[2];
	if (pipe(go) != 0 || pipe(sent) != 0)
		cr_fail("pipe");
	int port[3] = { port_of(&ar4), port_of(&ar6), port_of(&ac) };
	int from_port[3] = { port_of(&as4), port_of(&as6), port_of(&ad) };
	pid_t pid = fork();
	if (pid < 0)
		cr_fail("fork");
	if (pid == 0) {
		close(r4);
		close(r6);
		close(c);
		int by[3] = { s4, s6, d };
		for (int r = 1;; r++) {
			char b;
			if (read(go[0], &b, 1) != 1 || b == 'q')
				_exit(0);
			struct dgram p[16];
			int n = plan(r, p);
			for (int i = 0; i < n; i++) {
				unsigned char *buf = malloc(p[i].len);
				fill(buf, p[i].len, (uint64_t)r * 1000 + (uint64_t)i);
				ssize_t w;
				if (p[i].to == 2) {
					w = send(d, buf, p[i].len, 0);
				} else {
					/* S4 reaches the dual-stack R6 over IPv4; S6 over IPv6. */
					struct sockaddr_storage to;
					socklen_t tl;
					loop_to(p[i].from == 1 ? AF_INET6 : AF_INET, port[p[i].to], &to, &tl);
					w = sendto(by[p[i].from], buf, p[i].len, 0, (struct sockaddr *)&to, tl);
				}
				if (w != (ssize_t)p[i].len)
					cr_fail("child: send %zu: %s", p[i].len, strerror(errno));
				free(buf);
			}
			if (write(sent[1], "s", 1) != 1)
				_exit(1);
		}
	}
	close(s4);
	close(s6);
	close(d);
	cr_ready();
	int recv_fd[3] = { r4, r6, c };
	const char *name[3] = { "R4", "R6", "C" };
	for (int r = 1; r <= ROUNDS; r++) {
		char b = 'g';
		if (write(go[1], &b, 1) != 1 || read(sent[0], &b, 1) != 1)
			cr_fail("pipe to the child");
		/* Loopback delivers in the sender's call; a moment for the softirq anyway. */
		cr_sleep_us(20000);
		cr_gate(r);
		struct dgram p[16];
		int n = plan(r, p);
		for (int to = 0; to < 3; to++) {
			int got = 0;
			size_t bytes = 0;
			for (int i = 0; i < n; i++) {
				if (p[i].to != to)
					continue;
				unsigned char *buf = malloc(65536), *want = malloc(p[i].len);
				struct sockaddr_storage from;
				socklen_t fl = sizeof(from);
				ssize_t k = recvfrom(recv_fd[to], buf, 65536, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
				if (k < 0)
					cr_fail("round %d: %s: datagram %d missing: %s", r, name[to], i, strerror(errno));
				fill(want, p[i].len, (uint64_t)r * 1000 + (uint64_t)i);
				if ((size_t)k != p[i].len || memcmp(buf, want, p[i].len) != 0)
					cr_fail("round %d: %s: datagram %d: %zd bytes, wanted %zu (or bytes differ)", r, name[to], i, k,
						p[i].len);
				if (port_of(&from) != from_port[p[i].from])
					cr_fail("round %d: %s: datagram %d from port %d, sent from %d", r, name[to], i,
						port_of(&from), from_port[p[i].from]);
				if (to == 1 && p[i].from == 0 && from.ss_family == AF_INET6) {
					/* IPv4 sender seen by a dual-stack socket: ::ffff:127.0.0.1 */
					const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&from;
					if (!IN6_IS_ADDR_V4MAPPED(&s->sin6_addr))
						cr_fail("round %d: R6: datagram %d not from a v4-mapped address", r, i);
				}
				got++;
				bytes += (size_t)k;
				free(buf);
				free(want);
			}
			char extra[8];
			if (recv(recv_fd[to], extra, sizeof(extra), MSG_DONTWAIT) >= 0)
				cr_fail("round %d: %s: a datagram more than was sent", r, name[to]);
			cr_line("round %d: %s received %d datagrams, %zu bytes, in order, from their senders", r, name[to], got,
				bytes);
		}
	}
	char q = 'q';
	if (write(go[1], &q, 1) != 1)
		cr_fail("pipe");
	int st;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		cr_fail("child");
	cr_pass();
	return 0;
}
