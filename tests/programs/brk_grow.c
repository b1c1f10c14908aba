/* brk_grow: the program moves its own program break with sbrk() before and after the
 * checkpoint, growing and shrinking it, and keeps data in every page it owns. After a
 * restore the break must be where it was and must still grow (a restorer must not block
 * brk growth). malloc is not used, so nothing else moves the break.
 *
 * usage: brk_grow [STEPS]   (default 64) */
#include "lib/crtest.h"

#define STEP (64 * 1024)

static unsigned char *base;
static size_t used;

static unsigned char val(size_t i)
{
	return (unsigned char)(cr_mix(i / 64) >> ((i % 8) * 8));
}

static void verify(const char *when)
{
	if ((unsigned char *)sbrk(0) != base + used)
		cr_fail("%s: break at %p, expected %p", when, sbrk(0), (void *)(base + used));
	for (size_t i = 0; i < used; i += 61)
		if (base[i] != val(i))
			cr_fail("%s: byte %zu of the heap is %u, expected %u", when, i, base[i], val(i));
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 64;
	uint64_t sum = 0;

	if (steps < 8)
		cr_fail("bad arguments");
	/* The first line allocates stdout's buffer; only then is the break ours alone. */
	cr_line("steps %d", steps);
	base = sbrk(0);
	cr_ready();
	for (int s = 1; s <= steps; s++) {
		/* Grow by two steps, shrink by one on every third step. */
		size_t grow = (s % 3 == 0) ? 0 : 2 * STEP;
		if (grow) {
			if (sbrk((intptr_t)grow) == (void *)-1)
				cr_fail("sbrk(+%zu) at step %d: %s", grow, s, strerror(errno));
			for (size_t i = used; i < used + grow; i++)
				base[i] = val(i);
			used += grow;
		} else {
			if (sbrk(-(intptr_t)STEP) == (void *)-1)
				cr_fail("sbrk(-%d) at step %d: %s", STEP, s, strerror(errno));
			used -= STEP;
		}
		verify("after a step");
		if (s % (steps / 8) == 0)
			cr_line("step %d heap %zu KiB", s, used / 1024);
		if (s % (steps / 4) == 0 && s / (steps / 4) <= 3)
			cr_gate(s / (steps / 4));
		cr_sleep_us(10000);
	}
	for (size_t i = 0; i < used; i++)
		sum = sum * 31 + base[i];
	cr_line("heap %zu KiB sum %016llx", used / 1024, (unsigned long long)sum);
	cr_pass();
	return 0;
}
