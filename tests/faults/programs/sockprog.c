/* sockprog: a program holding a socket, for the refusal of a checkpoint
 * that names it (issue 13, tests/faults/sockets.rs).
 *
 * usage: sockprog MODE WORKDIR [PORT]
 *
 * MODE is one of
 *   connect   connects to 127.0.0.1:PORT (a server outside the job), sends
 *             "hello\n" and prints READY. When WORKDIR/close exists it sends
 *             "bye\n", reads "ok\n" (the connection still works after the
 *             refused checkpoint), closes it and prints "closed".
 *   listen    listens on 127.0.0.1 (a port of the kernel's choice) and prints
 *             READY and "port N". When WORKDIR/close exists it closes the
 *             socket and prints "closed".
 *   pair      a TCP connection to itself: listens on 127.0.0.1, connects,
 *             accepts, closes the listener, and prints READY and
 *             "fds C S port N" (the connecting and the accepted descriptor,
 *             the port of the accepted one). When WORKDIR/close exists it
 *             sends a byte each way, closes both and prints "closed".
 *   unixout   connects a unix stream socket to the path PORT (a server
 *             outside the job), sends "hello\n" and prints READY and
 *             "fds C"; then like connect.
 *   fdflight  a unix socketpair with a descriptor (its own fd 0) sent with
 *             SCM_RIGHTS and not received yet; prints READY and "fds A B".
 *             When WORKDIR/close exists it receives the descriptor, closes
 *             everything and prints "closed".
 *   ptimer    not a socket: a POSIX timer on a CPU-time clock (timer_create,
 *             CLOCK_PROCESS_CPUTIME_ID,
 *             SIGEV_NONE, armed for an hour), which ckpt refuses too; prints
 *             READY and "timer". When WORKDIR/close exists it deletes the
 *             timer and prints "closed".
 *   inotify_raw    not a socket: an inotify watch added by a raw system call, whose
 *             path libckpt never saw; prints READY and "watch". When WORKDIR/close
 *             exists it removes the watch and prints "closed".
 *   inotify_unread an inotify watch on WORKDIR with an event queued and not read;
 *             prints READY and "events". When WORKDIR/close exists it reads them
 *             and prints "closed".
 *   udpin     a UDP socket bound to 127.0.0.1; prints READY and "port N". When
 *             WORKDIR/close exists it reads the datagram "from outside" (sent by
 *             the test, from outside the job) and prints "closed".
 *   outsider  connects to 127.0.0.1:PORT and to the unix socket WORKDIR/outside.sock
 *             (servers outside the job), sends "hello\n" on each and prints READY.
 *             When WORKDIR/close exists it reads each until end of file and prints
 *             "tcp: <what it read>, then end of file" and the same for "unix", then
 *             "closed".
 *   ptyq      not a socket: a pseudo-terminal pair of its own (issue 16) whose
 *             slave wrote "unread" that the master has not read; prints READY and
 *             "pty". When WORKDIR/close exists it reads the bytes at the master,
 *             keeps both ends open and prints "closed".
 *   ptyctty   not a socket: a pseudo-terminal pair of its own whose slave is the
 *             controlling terminal of a child (setsid, then opened without
 *             O_NOCTTY); prints READY and "ctty". When WORKDIR/close exists the child
 *             ends, and it prints "closed".
 *   device    not a socket: holds /dev/fuse open (a device whose state lives in
 *             its driver); prints READY and "device". When WORKDIR/close exists
 *             it closes it and prints "closed".
 *   sysvshm   not a socket: a System V shared memory segment attached (as UCX,
 *             MPICH's transport, does by default), with a value written in it;
 *             prints READY and "sysv". When WORKDIR/close exists it checks the
 *             value, detaches and removes the segment, and prints "closed".
 * Then it waits for WORKDIR/go and prints PASS (or FAIL: why).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <signal.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char work[3800];

static void say(const char *s)
{
	size_t n = strlen(s);
	while (n > 0) {
		ssize_t w = write(1, s, n);
		if (w <= 0)
			_exit(3);
		s += w;
		n -= (size_t)w;
	}
}

static void fail(const char *why)
{
	char b[512];
	snprintf(b, sizeof b, "FAIL: %s (errno %d)\n", why, errno);
	say(b);
	exit(1);
}

static void wait_for(const char *name)
{
	char p[4096];
	snprintf(p, sizeof p, "%s/%s", work, name);
	while (access(p, F_OK) != 0) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
		}
	}
}

static void send_all(int fd, const char *s, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			fail("send");
		s += w;
		n -= (size_t)w;
	}
}

static void recv_exact(int fd, const char *want)
{
	size_t n = strlen(want), got = 0;
	char b[64];
	if (n > sizeof b)
		fail("recv_exact: too long");
	while (got < n) {
		ssize_t r = recv(fd, b + got, n - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			fail("recv");
		got += (size_t)r;
	}
	if (memcmp(b, want, n) != 0)
		fail("recv: unexpected bytes");
}

static int tcp_socket(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		fail("socket");
	return fd;
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((unsigned short)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

/* A listening socket on 127.0.0.1, with SO_REUSEADDR as servers set it (without
 * it, a port of a connection closed by the killed run stays taken for a minute,
 * for a restart as for the program itself: docs/sockets.md); its port in *port. */
static int listener(int *port)
{
	int l = tcp_socket();
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = loopback(0);
	socklen_t len = sizeof a;
	if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 4) != 0)
		fail("bind/listen");
	if (getsockname(l, (struct sockaddr *)&a, &len) != 0)
		fail("getsockname");
	*port = ntohs(a.sin_port);
	return l;
}

static int connect_to(int port)
{
	int c = tcp_socket();
	struct sockaddr_in a = loopback(port);
	while (connect(c, (struct sockaddr *)&a, sizeof a) != 0)
		if (errno != EINTR)
			fail("connect");
	return c;
}

/* One byte each way over a connected pair. */
static void exchange(int a, int b)
{
	send_all(a, "x", 1);
	recv_exact(b, "x");
	send_all(b, "y", 1);
	recv_exact(a, "y");
}

int main(int argc, char **argv)
{
	char line[256];
	if (argc < 3)
		fail("usage: sockprog MODE WORKDIR [PORT]");
	snprintf(work, sizeof work, "%s", argv[2]);
	const char *mode = argv[1];
	if (strcmp(mode, "connect") == 0) {
		if (argc < 4)
			fail("connect needs a PORT");
		int c = connect_to(atoi(argv[3]));
		send_all(c, "hello\n", 6);
		say("READY\n");
		wait_for("close");
		send_all(c, "bye\n", 4);
		recv_exact(c, "ok\n");
		close(c);
	} else if (strcmp(mode, "listen") == 0) {
		int port;
		int l = listener(&port);
		snprintf(line, sizeof line, "READY\nport %d\n", port);
		say(line);
		wait_for("close");
		close(l);
	} else if (strcmp(mode, "pair") == 0) {
		int port;
		int l = listener(&port);
		int c = connect_to(port);
		int s;
		while ((s = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0)
			if (errno != EINTR)
				fail("accept");
		close(l);
		snprintf(line, sizeof line, "READY\nfds %d %d port %d\n", c, s, port);
		say(line);
		wait_for("close");
		exchange(c, s);
		close(c);
		close(s);
	} else if (strcmp(mode, "unixout") == 0) {
		if (argc < 4)
			fail("unixout needs a PATH");
		struct sockaddr_un a;
		memset(&a, 0, sizeof a);
		a.sun_family = AF_UNIX;
		snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[3]);
		int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (c < 0)
			fail("socket");
		while (connect(c, (struct sockaddr *)&a, sizeof a) != 0)
			if (errno != EINTR)
				fail("connect");
		send_all(c, "hello\n", 6);
		snprintf(line, sizeof line, "READY\nfds %d\n", c);
		say(line);
		wait_for("close");
		send_all(c, "bye\n", 4);
		recv_exact(c, "ok\n");
		close(c);
	} else if (strcmp(mode, "fdflight") == 0) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
			fail("socketpair");
		char byte = 'f';
		struct iovec iov = {&byte, 1};
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int))];
		} ctl;
		memset(&ctl, 0, sizeof ctl);
		struct msghdr m;
		memset(&m, 0, sizeof m);
		m.msg_iov = &iov;
		m.msg_iovlen = 1;
		m.msg_control = ctl.b;
		m.msg_controllen = sizeof ctl.b;
		struct cmsghdr *h = CMSG_FIRSTHDR(&m);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN(sizeof(int));
		int zero = 0;
		memcpy(CMSG_DATA(h), &zero, sizeof zero);
		if (sendmsg(sv[0], &m, 0) != 1)
			fail("sendmsg");
		snprintf(line, sizeof line, "READY\nfds %d %d\n", sv[0], sv[1]);
		say(line);
		wait_for("close");
		memset(&ctl, 0, sizeof ctl);
		m.msg_controllen = sizeof ctl.b;
		if (recvmsg(sv[1], &m, 0) != 1)
			fail("recvmsg");
		h = CMSG_FIRSTHDR(&m);
		if (!h || h->cmsg_type != SCM_RIGHTS)
			fail("no descriptor received");
		int got;
		memcpy(&got, CMSG_DATA(h), sizeof got);
		close(got);
		close(sv[0]);
		close(sv[1]);
	} else if (strcmp(mode, "ptimer") == 0) {
		struct sigevent ev;
		memset(&ev, 0, sizeof ev);
		ev.sigev_notify = SIGEV_NONE;
		timer_t t;
		if (timer_create(CLOCK_PROCESS_CPUTIME_ID, &ev, &t) != 0)
			fail("timer_create");
		struct itimerspec its = {{0, 0}, {3600, 0}};
		if (timer_settime(t, 0, &its, NULL) != 0)
			fail("timer_settime");
		say("READY\ntimer\n");
		wait_for("close");
		if (timer_delete(t) != 0)
			fail("timer_delete");
	} else if (strcmp(mode, "outsider") == 0) {
		if (argc < 4)
			fail("outsider needs a PORT");
		int c = connect_to(atoi(argv[3]));
		struct sockaddr_un ua;
		memset(&ua, 0, sizeof ua);
		ua.sun_family = AF_UNIX;
		snprintf(ua.sun_path, sizeof ua.sun_path, "%s/outside.sock", work);
		int u = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (u < 0 || connect(u, (struct sockaddr *)&ua, sizeof ua) != 0)
			fail("connect unix");
		send_all(c, "hello\n", 6);
		send_all(u, "hello\n", 6);
		say("READY\n");
		wait_for("close");
		int fds[2] = {c, u};
		const char *names[2] = {"tcp", "unix"};
		for (int i = 0; i < 2; i++) {
			char got[256];
			size_t n = 0;
			for (;;) {
				ssize_t r = read(fds[i], got + n, sizeof got - 1 - n);
				if (r < 0 && errno == EINTR)
					continue;
				if (r < 0) {
					snprintf(line, sizeof line, "%s: read error %d\n", names[i], errno);
					say(line);
					break;
				}
				if (r == 0) {
					got[n] = '\0';
					if (n > 0 && got[n - 1] == '\n')
						got[n - 1] = '\0';
					snprintf(line, sizeof line, "%s: %s, then end of file\n", names[i], got);
					say(line);
					break;
				}
				n += (size_t)r;
			}
			close(fds[i]);
		}
	} else if (strcmp(mode, "inotify_raw") == 0) {
		int in = inotify_init1(0);
		if (in < 0)
			fail("inotify_init1");
		int wd = (int)syscall(SYS_inotify_add_watch, in, work, IN_CREATE);
		if (wd < 0)
			fail("inotify_add_watch");
		say("READY\nwatch\n");
		wait_for("close");
		if (inotify_rm_watch(in, wd) != 0)
			fail("inotify_rm_watch");
		char b[4096];
		if (read(in, b, sizeof b) <= 0)
			fail("read IN_IGNORED");
	} else if (strcmp(mode, "inotify_unread") == 0) {
		int in = inotify_init1(IN_NONBLOCK);
		if (in < 0)
			fail("inotify_init1");
		if (inotify_add_watch(in, work, IN_CREATE) < 0)
			fail("inotify_add_watch");
		char p[4096];
		snprintf(p, sizeof p, "%s/created", work);
		FILE *f = fopen(p, "w");
		if (!f)
			fail("create");
		fclose(f);
		say("READY\nevents\n");
		wait_for("close");
		char b[4096];
		while (read(in, b, sizeof b) > 0) {
		}
	} else if (strcmp(mode, "udpin") == 0) {
		int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in a = loopback(0);
		socklen_t al = sizeof a;
		if (u < 0 || bind(u, (struct sockaddr *)&a, sizeof a) != 0 ||
		    getsockname(u, (struct sockaddr *)&a, &al) != 0)
			fail("udp bind");
		snprintf(line, sizeof line, "READY\nport %d\n", ntohs(a.sin_port));
		say(line);
		wait_for("close");
		recv_exact(u, "from outside");
		close(u);
	} else if (strcmp(mode, "ptyq") == 0) {
		int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0)
			fail("posix_openpt");
		int sl = open(ptsname(m), O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (sl < 0 || write(sl, "unread", 6) != 6)
			fail("pty slave");
		say("READY\npty\n");
		wait_for("close");
		char b[16];
		size_t got = 0;
		while (got < 6) {
			ssize_t r = read(m, b + got, sizeof b - got);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				fail("pty master read");
			got += (size_t)r;
		}
		if (got != 6 || memcmp(b, "unread", 6) != 0)
			fail("pty master: unexpected bytes");
	} else if (strcmp(mode, "ptyctty") == 0) {
		int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0)
			fail("posix_openpt");
		const char *name = ptsname(m);
		if (name == NULL)
			fail("ptsname");
		pid_t c = fork();
		if (c < 0)
			fail("fork");
		if (c == 0) {
			if (setsid() < 0 || open(name, O_RDWR | O_CLOEXEC) < 0)
				_exit(2);
			wait_for("close");
			_exit(0);
		}
		/* The child's terminal is in place once its stat says so. */
		char st[64];
		snprintf(st, sizeof st, "/proc/%d/stat", (int)c);
		for (int tries = 0;; tries++) {
			FILE *f = fopen(st, "r");
			int tty = 0;
			if (f != NULL) {
				if (fscanf(f, "%*d (%*[^)]) %*c %*d %*d %*d %d", &tty) != 1)
					tty = 0;
				fclose(f);
			}
			if (tty != 0)
				break;
			if (tries > 500)
				fail("the child has no controlling terminal");
			struct timespec ts = {0, 10 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		say("READY\nctty\n");
		wait_for("close");
		int status;
		if (waitpid(c, &status, 0) != c || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			fail("the child did not end well");
		close(m);
	} else if (strcmp(mode, "device") == 0) {
		int d = open("/dev/fuse", O_RDONLY | O_CLOEXEC);
		if (d < 0)
			fail("open /dev/fuse");
		say("READY\ndevice\n");
		wait_for("close");
		close(d);
	} else if (strcmp(mode, "sysvshm") == 0) {
		int id = shmget(IPC_PRIVATE, 1 << 16, IPC_CREAT | 0600);
		if (id < 0)
			fail("shmget");
		unsigned *p = shmat(id, NULL, 0);
		if (p == (void *)-1)
			fail("shmat");
		*p = 0x5ca1ab1e;
		say("READY\nsysv\n");
		wait_for("close");
		if (*p != 0x5ca1ab1e)
			fail("the segment lost its value");
		if (shmdt(p) != 0)
			fail("shmdt");
		if (shmctl(id, IPC_RMID, NULL) != 0)
			fail("shmctl IPC_RMID");
	} else {
		fail("unknown mode");
	}
	say("closed\n");
	wait_for("go");
	say("PASS\n");
	return 0;
}
