/* tcp_stream: 100 MiB streamed over a loopback TCP connection between two
 * processes, every byte checked (issue 13), for periodic checkpoints taken
 * while the bytes flow (mode busy_interval: ckpt launch --interval 1, killed
 * and restarted mid-stream).
 *
 * The child writes the bytes of a deterministic sequence in 64 KiB writes as
 * fast as it can; the parent lags behind it: it reads in reads of varying
 * size, checks every byte against the sequence, sleeps 100 ms after each MiB (about 10 s in all)
 * and prints a line every 25 MiB. So at any moment the receiver's buffer is
 * full and the sender has bytes it could not send yet: the case where ckpt
 * stops the sender first and lets the receiver read (docs/sockets.md).
 * Output identical to an uninterrupted run means no byte was lost,
 * duplicated or reordered across checkpoints and the restart. */
#include "lib/crtest.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define TOTAL (100u << 20)

static unsigned char byte_at(uint64_t i)
{
	return (unsigned char)(cr_mix(i / 8) >> (8 * (i % 8)));
}

int main(void)
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(l, 1) != 0 ||
	    getsockname(l, (struct sockaddr *)&a, &al) != 0)
		cr_fail("listen: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		cr_fail("fork");
	if (pid == 0) {
		close(l);
		int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) != 0)
			cr_fail("connect: %s", strerror(errno));
		static unsigned char buf[65536];
		uint64_t sent = 0;
		while (sent < TOTAL) {
			size_t n = sizeof(buf);
			if (TOTAL - sent < n)
				n = TOTAL - sent;
			for (size_t i = 0; i < n; i++)
				buf[i] = byte_at(sent + i);
			size_t done = 0;
			while (done < n) {
				ssize_t w = write(c, buf + done, n - done);
				if (w < 0 && errno == EINTR)
					continue;
				if (w <= 0)
					cr_fail("child: write: %s", strerror(errno));
				done += (size_t)w;
			}
			sent += n;
		}
		close(c);
		_exit(0);
	}
	int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (s < 0)
		cr_fail("accept: %s", strerror(errno));
	close(l);
	cr_ready();
	static unsigned char buf[100000];
	uint64_t got = 0;
	size_t want = 1000;
	while (got < TOTAL) {
		ssize_t r = read(s, buf, want);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			cr_fail("read: %s", strerror(errno));
		if (r == 0)
			cr_fail("end of file after %llu bytes", (unsigned long long)got);
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != byte_at(got + (uint64_t)i))
				cr_fail("byte %llu differs", (unsigned long long)(got + (uint64_t)i));
		uint64_t before = got;
		got += (uint64_t)r;
		if (before / (1u << 20) != got / (1u << 20))
			cr_sleep_us(100000);
		if (before / (25u << 20) != got / (25u << 20))
			cr_line("%llu MiB received and checked", (unsigned long long)(got / (25u << 20) * 25));
		want = want * 7 % sizeof(buf) + 1;
	}
	char extra;
	if (read(s, &extra, 1) != 0)
		cr_fail("more bytes than were sent");
	int st;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		cr_fail("child");
	cr_line("stream complete");
	cr_pass();
	return 0;
}
