/* fork_advice: memory the program marked MADV_WIPEONFORK (as TLS libraries do for
 * their fork-detection page) and, optionally, MADV_DONTFORK (as V8 does for its heap)
 * keeps its contents across a checkpoint and a restart, and keeps its advice: a child
 * the program forks after the restart must still find the first zeroed and the second
 * absent. A copy-on-write snapshot of the process sees the first as zero and lacks the
 * second, so neither may be taken from such a snapshot.
 *
 * With "below", the dont-fork region is made last, above a hole of 4 MiB: the next
 * anonymous mapping (the checkpoint's own scratch memory) lands right below it, where the
 * kernel merges two mappings with the same flags into one.
 *
 * usage: fork_advice [STEPS] [dontfork|below]   (default 32; with "dontfork" or "below"
 * the second region is made too) */
#include "lib/crtest.h"

#include <sys/mman.h>
#include <sys/wait.h>

#define PAGES 3
#define LEN (PAGES * 4096)

static unsigned char *wipe, *dont, *plain;

static unsigned char val(int step, size_t i, int which)
{
	/* Never zero, so a wiped page can not pass for the expected contents. */
	return (unsigned char)(cr_mix((uint64_t)step * 1000003u + i * 7 + (size_t)which) | 1);
}

static void fill(int step)
{
	for (size_t i = 0; i < LEN; i++) {
		wipe[i] = val(step, i, 1);
		plain[i] = val(step, i, 3);
		if (dont)
			dont[i] = val(step, i, 2);
	}
}

static void verify(int step, const char *when)
{
	for (size_t i = 0; i < LEN; i++) {
		if (wipe[i] != val(step, i, 1))
			cr_fail("%s: byte %zu of the wipe-on-fork region is %u, expected %u", when, i,
				wipe[i], val(step, i, 1));
		if (plain[i] != val(step, i, 3))
			cr_fail("%s: byte %zu of the plain region is %u, expected %u", when, i, plain[i],
				val(step, i, 3));
		if (dont && dont[i] != val(step, i, 2))
			cr_fail("%s: byte %zu of the dont-fork region is %u, expected %u", when, i,
				dont[i], val(step, i, 2));
	}
}

/* What a forked child finds: bit 0 the wipe-on-fork region not zero, bit 1 the
 * dont-fork region mapped, bit 2 the plain region not a copy. */
static int child_view(int step)
{
	pid_t pid = fork();
	if (pid < 0)
		cr_fail("fork: %s", strerror(errno));
	if (pid == 0) {
		int bad = 0;
		unsigned char vec[PAGES];
		for (size_t i = 0; i < LEN; i++) {
			if (wipe[i] != 0)
				bad |= 1;
			if (plain[i] != val(step, i, 3))
				bad |= 4;
		}
		if (dont && mincore(dont, LEN, vec) == 0)
			bad |= 2;
		_exit(bad);
	}
	int st;
	if (waitpid(pid, &st, 0) != pid)
		cr_fail("waitpid: %s", strerror(errno));
	if (!WIFEXITED(st))
		cr_fail("the forked child died (status %d)", st);
	return WEXITSTATUS(st);
}

#define HOLE (4 << 20)

static void *region(int advice, const char *name, int hole)
{
	size_t len = LEN + (hole ? HOLE : 0);
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		cr_fail("mmap: %s", strerror(errno));
	if (hole) {
		if (munmap(p, HOLE) != 0)
			cr_fail("munmap: %s", strerror(errno));
		p += HOLE;
	}
	if (advice >= 0 && madvise(p, LEN, advice) != 0)
		cr_fail("madvise(%s): %s", name, strerror(errno));
	return p;
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 32;
	int below = argc > 2 && strcmp(argv[2], "below") == 0;
	int with_dont = below || (argc > 2 && strcmp(argv[2], "dontfork") == 0);

	if (steps < 8)
		cr_fail("bad arguments");
	wipe = region(MADV_WIPEONFORK, "MADV_WIPEONFORK", 0);
	plain = region(-1, "", 0);
	if (with_dont)
		dont = region(MADV_DONTFORK, "MADV_DONTFORK", below);
	cr_line("steps %d dontfork %d", steps, with_dont);
	fill(0);
	cr_ready();
	for (int s = 1; s <= steps; s++) {
		verify(s - 1, "before a step");
		fill(s);
		int bad = child_view(s);
		if (bad)
			cr_fail("step %d: a forked child found%s%s%s", s,
				(bad & 1) ? " the wipe-on-fork region not zeroed" : "",
				(bad & 2) ? " the dont-fork region mapped" : "",
				(bad & 4) ? " the plain region not copied" : "");
		verify(s, "after the fork");
		if (s % (steps / 8) == 0)
			cr_line("step %d: the child found the advice kept", s);
		if (s % (steps / 4) == 0 && s / (steps / 4) <= 3)
			cr_gate(s / (steps / 4));
		cr_sleep_us(20000);
	}
	cr_pass();
	return 0;
}
