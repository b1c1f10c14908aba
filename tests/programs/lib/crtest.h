/* Shared helpers for the C programs of the C/R suite (after CRIU zdtm's lib/test.c).
 *
 * Protocol every program follows:
 *   - set up, then cr_ready() prints "READY";
 *   - deterministic work, with cr_gate(k) at a few fixed points: it prints "hold k",
 *     waits while the file $CR_GATE_DIR/gate-k exists (removing gate-k.ping whenever
 *     it appears), then prints "go k";
 *   - self-check, print "PASS" or "FAIL: why" as the last line, exit 0 / 1.
 * Without CR_GATE_DIR the gates do not wait, so an uninterrupted run prints the same
 * bytes as a gated one. Every line is flushed at once so the runner can watch progress
 * in the stdout file. */
#ifndef CRTEST_H
#define CRTEST_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline void cr_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void cr_line(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static inline void cr_sleep_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* While held at a gate, the program removes "<gate>.ping" when the runner creates it: the
 * runner's proof that a restored program runs its own code again (without printing). */
static inline void cr_ping(const char *gate)
{
	char ping[4200];
	snprintf(ping, sizeof(ping), "%s.ping", gate);
	if (access(ping, F_OK) == 0)
		unlink(ping);
}

static inline void cr_gate(int k)
{
	const char *dir = getenv("CR_GATE_DIR");
	cr_line("hold %d", k);
	if (dir != NULL && dir[0] != '\0') {
		char path[4096];
		snprintf(path, sizeof(path), "%s/gate-%d", dir, k);
		while (access(path, F_OK) == 0) {
			cr_ping(path);
			cr_sleep_us(5000);
		}
	}
	cr_line("go %d", k);
}

static inline void cr_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static inline void cr_fail(const char *fmt, ...)
{
	va_list ap;
	fputs("FAIL: ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	exit(1);
}

/* Appends "READY" to $CR_STARTS_LOG (when set): a program restored from an image never
 * runs this again, so the runner can tell a real restore from a rerun from scratch. */
static inline void cr_started(void)
{
	const char *log = getenv("CR_STARTS_LOG");
	if (log != NULL && log[0] != '\0') {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd >= 0) {
			if (write(fd, "READY\n", 6) != 6)
				cr_fail("write %s", log);
			close(fd);
		}
	}
}

static inline void cr_ready(void)
{
	cr_started();
	cr_line("READY");
}

static inline void cr_pass(void)
{
	cr_line("PASS");
}

/* splitmix64: a cheap, good 64-bit mixer for deterministic data. */
static inline uint64_t cr_mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

#endif
