/* zero_read: a large private anonymous region that the program only reads (every page
 * maps the kernel's shared zero page; a JVM's heap looks like this), beside a small
 * one it writes. Its contents read back the same after a restart, and an image written
 * while the program stands still (CKPT_SNAPSHOT=0) does not hold the read-only region:
 * the C/R suite checks the image's size.
 *
 * usage: zero_read [MIB] [STEPS]   (default 256 MiB, 32 steps) */
#include "lib/crtest.h"

#include <sys/mman.h>

#define SMALL (4 << 20)

static volatile unsigned char *ro;
static unsigned char *rw;
static size_t ro_len;

static unsigned char val(int step, size_t i)
{
	return (unsigned char)(cr_mix((uint64_t)step * 7919u + i / 512) | 1);
}

static void verify(int step, const char *when)
{
	for (size_t i = 0; i < ro_len; i += 4096)
		if (ro[i] != 0 || ro[i + 4095] != 0)
			cr_fail("%s: the read-only region is not zero at %zu", when, i);
	for (size_t i = 0; i < SMALL; i += 509)
		if (rw[i] != val(step, i))
			cr_fail("%s: byte %zu of the written region is %u, expected %u", when, i,
				rw[i], val(step, i));
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? (size_t)atoi(argv[1]) : 256;
	int steps = argc > 2 ? atoi(argv[2]) : 32;
	unsigned sum = 0;

	if (mib < 1 || steps < 8)
		cr_fail("bad arguments");
	ro_len = mib << 20;
	ro = mmap(NULL, ro_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	rw = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ro == MAP_FAILED || rw == MAP_FAILED)
		cr_fail("mmap: %s", strerror(errno));
	/* Keep the kernel from backing the region with huge zero pages or huge pages. */
	madvise((void *)ro, ro_len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < ro_len; i += 4096)
		sum += ro[i];
	cr_line("read-only %zu MiB sum %u", mib, sum);
	for (size_t i = 0; i < SMALL; i++)
		rw[i] = val(0, i);
	cr_ready();
	for (int s = 1; s <= steps; s++) {
		verify(s - 1, "before a step");
		for (size_t i = 0; i < SMALL; i++)
			rw[i] = val(s, i);
		if (s % (steps / 8) == 0)
			cr_line("step %d", s);
		if (s % (steps / 4) == 0 && s / (steps / 4) <= 3)
			cr_gate(s / (steps / 4));
		cr_sleep_us(20000);
	}
	verify(steps, "at the end");
	cr_pass();
	return 0;
}
