/* sock_rights: descriptors in flight (SCM_RIGHTS) across checkpoints (issue 13).
 *
 * Each round the parent sends the child, and leaves unread at the gate:
 *   - over a datagram socketpair: the write end of a pipe the parent reads
 *     ("pipe"), its file shared.txt, which the child holds too (inherited: the
 *     same open file description, so one offset), and one end of a new
 *     socketpair whose other end it keeps;
 *   - over a stream socketpair, one byte with a file round-<r>.txt it opened,
 *     set at offset r and closed (only the message holds it), as Python's
 *     multiprocessing.reduction.sendfds does.
 * After the gate the child receives them and answers through what it got:
 * the pipe carries its report; it reads 4 bytes through the shared file
 * (the parent then sees the offset move), the rest of round-<r>.txt from
 * offset r, and writes into the socket. The parent prints what it saw.
 * Output identical to an uninterrupted run means each descriptor came back,
 * with the right message, as the same kind of object, sharing what it
 * shared. */
#include "lib/crtest.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define ROUNDS 3

static void send_fd(int s, const char *msg, size_t len, int fd)
{
	char ctl[CMSG_SPACE(sizeof(int))];
	memset(ctl, 0, sizeof(ctl));
	struct iovec v = { (void *)msg, len };
	struct msghdr m = { 0 };
	m.msg_iov = &v;
	m.msg_iovlen = 1;
	m.msg_control = ctl;
	m.msg_controllen = sizeof(ctl);
	struct cmsghdr *h = CMSG_FIRSTHDR(&m);
	h->cmsg_len = CMSG_LEN(sizeof(int));
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SCM_RIGHTS;
	memcpy(CMSG_DATA(h), &fd, sizeof(int));
	if (sendmsg(s, &m, 0) != (ssize_t)len)
		cr_fail("sendmsg: %s", strerror(errno));
}

/* Receive one message of at most `max` bytes into `buf` (NUL-terminated)
 * and the one descriptor it must carry. */
static int recv_fd(int s, char *buf, size_t max)
{
	char ctl[CMSG_SPACE(sizeof(int) * 4)];
	struct iovec v = { buf, max - 1 };
	struct msghdr m = { 0 };
	m.msg_iov = &v;
	m.msg_iovlen = 1;
	m.msg_control = ctl;
	m.msg_controllen = sizeof(ctl);
	ssize_t n = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
	if (n <= 0)
		cr_fail("child: recvmsg: %s", n < 0 ? strerror(errno) : "end of file");
	buf[n] = 0;
	struct cmsghdr *h = CMSG_FIRSTHDR(&m);
	if (h == NULL || h->cmsg_type != SCM_RIGHTS || h->cmsg_len != CMSG_LEN(sizeof(int)))
		cr_fail("child: message %s came without its descriptor", buf);
	int fd;
	memcpy(&fd, CMSG_DATA(h), sizeof(int));
	return fd;
}

static void child(int dg, int st, int go)
{
	for (;;) {
		char b;
		if (read(go, &b, 1) != 1 || b == 'q')
			_exit(0);
		char msg[64], what[256];
		int out = recv_fd(dg, msg, sizeof(msg));
		if (strncmp(msg, "pipe", 4) != 0)
			cr_fail("child: expected the pipe, got %s", msg);
		int shared = recv_fd(dg, msg, sizeof(msg));
		if (strncmp(msg, "shared", 6) != 0)
			cr_fail("child: expected the shared file, got %s", msg);
		int sock = recv_fd(dg, msg, sizeof(msg));
		if (strncmp(msg, "sock", 4) != 0)
			cr_fail("child: expected the socket, got %s", msg);
		int file = recv_fd(st, msg, 2);
		if (msg[0] != 'f')
			cr_fail("child: expected the file byte, got %s", msg);
		struct stat a, c;
		if (fstat(out, &a) != 0 || !S_ISFIFO(a.st_mode) || fstat(sock, &c) != 0 || !S_ISSOCK(c.st_mode))
			cr_fail("child: the pipe or the socket is not one");
		char four[5] = { 0 }, rest[64] = { 0 };
		if (read(shared, four, 4) != 4)
			cr_fail("child: read shared");
		ssize_t k = read(file, rest, sizeof(rest) - 1);
		if (k < 0)
			cr_fail("child: read file");
		int n = snprintf(what, sizeof(what), "shared gave '%s', %s gave '%s'", four, msg + 1, rest);
		if (write(out, what, (size_t)n) != n)
			cr_fail("child: write pipe");
		if (write(sock, "hello through the socket", 24) != 24)
			cr_fail("child: write socket");
		close(out);
		close(shared);
		close(sock);
		close(file);
	}
}

int main(void)
{
	int dg[2], st[2], go[2], p[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg) != 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, st) != 0 || pipe(go) != 0)
		cr_fail("setup: %s", strerror(errno));
	int shared = open("shared.txt", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (shared < 0 || write(shared, "abcdefghijklmnopqrstuvwxyz", 26) != 26 || lseek(shared, 0, SEEK_SET) != 0)
		cr_fail("shared.txt: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		cr_fail("fork");
	if (pid == 0) {
		close(dg[0]);
		close(st[0]);
		close(go[1]);
		child(dg[1], st[1], go[0]);
	}
	close(dg[1]);
	close(st[1]);
	close(go[0]);
	cr_ready();
	for (int r = 1; r <= ROUNDS; r++) {
		if (pipe(p) != 0)
			cr_fail("pipe");
		int u[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, u) != 0)
			cr_fail("socketpair");
		char name[32], text[64];
		snprintf(name, sizeof(name), "round-%d.txt", r);
		int n = snprintf(text, sizeof(text), "round %d file", r);
		int f = open(name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (f < 0 || write(f, text, (size_t)n) != n || lseek(f, r, SEEK_SET) != r)
			cr_fail("%s: %s", name, strerror(errno));
		send_fd(dg[0], "pipe", 4, p[1]);
		send_fd(dg[0], "shared", 6, shared);
		send_fd(dg[0], "sock", 4, u[1]);
		char fbyte[2] = { 'f', 0 };
		send_fd(st[0], fbyte, 1, f);
		/* Only the message holds the round's file, and the pipe's write end
		 * is kept until the child answered (a reader must not see end of file). */
		close(f);
		cr_gate(r);
		if (write(go[1], "g", 1) != 1)
			cr_fail("go");
		close(p[1]);
		char got[256] = { 0 };
		size_t have = 0;
		for (;;) {
			ssize_t k = read(p[0], got + have, sizeof(got) - 1 - have);
			if (k < 0)
				cr_fail("read pipe: %s", strerror(errno));
			if (k == 0)
				break;
			have += (size_t)k;
		}
		char sock[64] = { 0 };
		if (read(u[0], sock, 24) != 24)
			cr_fail("read socket: %s", strerror(errno));
		cr_line("round %d: child said: %s; socket: %s; shared offset now %ld", r, got, sock,
			(long)lseek(shared, 0, SEEK_CUR));
		close(p[0]);
		close(u[0]);
		close(u[1]);
	}
	if (write(go[1], "q", 1) != 1)
		cr_fail("quit");
	int stt;
	if (waitpid(pid, &stt, 0) != pid || !WIFEXITED(stt) || WEXITSTATUS(stt) != 0)
		cr_fail("child");
	cr_pass();
	return 0;
}
