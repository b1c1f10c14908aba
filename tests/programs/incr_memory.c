/* incr_memory: memory changes that an incremental checkpoint must not get wrong.
 * Between the gates (where the checkpoints are taken) the program:
 *   - rewrites 5% of the pages of a large heap buffer (the rest is unchanged: an
 *     incremental image refers to the previous generation for it);
 *   - unmaps a region and maps a new one at the same address, half of it written;
 *   - drops pages with MADV_DONTNEED and reads them back (the shared zero page, never
 *     written: it must be restored as zero, not as the older content);
 *   - moves a region with mremap to another address without writing it;
 *   - splits a region with mprotect;
 *   - starts a thread (a new stack) and forks a child that keeps its own copy;
 *   - writes pages through read(2) (a write by the kernel).
 * After every phase, and at the end, every byte is checked against a model.
 *
 * usage: incr_memory [HEAP_MIB]   (default 32) */
#include "lib/crtest.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PG 4096UL
#define SMALL (4UL << 20) /* 1024 pages */
#define SPG (SMALL / PG)

static unsigned char *heap;
static size_t heap_pages;
static uint32_t *heap_ver;

static unsigned char *b_reg;        /* remapped at the same address */
static unsigned char *c_reg;        /* MADV_DONTNEED + read */
static unsigned char *d_reg;        /* moved by mremap */
static unsigned char *e_reg;        /* split by mprotect */
static uint32_t b_ver[SPG], c_ver[SPG], d_ver[SPG], e_ver[SPG];

static unsigned char byte_of(uint64_t tag, size_t page, uint32_t ver, size_t i)
{
	if (ver == 0)
		return 0; /* never written, or dropped */
	return (unsigned char)(cr_mix(tag * 1000003 + page * 7919 + ver) >> ((i % 8) * 8)) ^ (unsigned char)i;
}

static void fill(unsigned char *p, uint64_t tag, size_t page, uint32_t ver)
{
	for (size_t i = 0; i < PG; i++)
		p[i] = byte_of(tag, page, ver, i);
}

static uint64_t check(const char *what, const unsigned char *base, uint64_t tag, size_t pages,
		      const uint32_t *ver)
{
	uint64_t sum = 0;
	for (size_t p = 0; p < pages; p++)
		for (size_t i = 0; i < PG; i += 8) {
			unsigned char want = byte_of(tag, p, ver[p], i);
			unsigned char got = base[p * PG + i];
			if (got != want)
				cr_fail("%s: page %zu byte %zu is %u, expected %u (version %u)", what, p, i,
					got, want, ver[p]);
			sum = sum * 31 + got;
		}
	return sum;
}

static uint64_t check_all(int phase)
{
	uint64_t s = check("heap", heap, 1, heap_pages, heap_ver);
	s ^= check("remapped region", b_reg, 2, SPG, b_ver);
	s ^= check("dropped region", c_reg, 3, SPG, c_ver);
	s ^= check("moved region", d_reg, 4, SPG, d_ver);
	s ^= check("split region", e_reg, 5, SPG, e_ver);
	cr_line("phase %d memory ok, checksum %016llx", phase, (unsigned long long)s);
	return s;
}

static void *map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		cr_fail("mmap: %s", strerror(errno));
	/* 4 KiB pages: the test is about page tracking, not huge pages */
	madvise(p, len, MADV_NOHUGEPAGE);
	return p;
}

static void rewrite_heap(int phase)
{
	/* 5% of the heap, a different 5% each phase */
	for (size_t k = 0; k < heap_pages / 20; k++) {
		size_t p = (k * 20 + (size_t)phase * 7) % heap_pages;
		heap_ver[p]++;
		fill(heap + p * PG, 1, p, heap_ver[p]);
	}
}

static volatile int thread_stop;
static uint64_t thread_sum;

static void *worker(void *arg)
{
	(void)arg;
	unsigned char local[64 * 1024];
	for (size_t i = 0; i < sizeof(local); i++)
		local[i] = (unsigned char)(i * 13);
	while (!thread_stop)
		cr_sleep_us(2000);
	uint64_t s = 0;
	for (size_t i = 0; i < sizeof(local); i++)
		s = s * 7 + local[i];
	thread_sum = s;
	return NULL;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 32;
	if (mib < 4)
		cr_fail("bad arguments");
	heap_pages = mib * (1 << 20) / PG;
	heap = map(heap_pages * PG);
	heap_ver = calloc(heap_pages, sizeof(*heap_ver));
	b_reg = map(SMALL);
	c_reg = map(SMALL);
	d_reg = map(SMALL);
	e_reg = map(SMALL);
	if (heap_ver == NULL)
		cr_fail("calloc");
	for (size_t p = 0; p < heap_pages; p++) {
		heap_ver[p] = 1;
		fill(heap + p * PG, 1, p, 1);
	}
	for (size_t p = 0; p < SPG; p++) {
		b_ver[p] = c_ver[p] = d_ver[p] = e_ver[p] = 1;
		fill(b_reg + p * PG, 2, p, 1);
		fill(c_reg + p * PG, 3, p, 1);
		fill(d_reg + p * PG, 4, p, 1);
		fill(e_reg + p * PG, 5, p, 1);
	}
	cr_ready();
	check_all(0);
	cr_gate(1);

	/* phase 1 */
	rewrite_heap(1);
	if (munmap(b_reg, SMALL) != 0)
		cr_fail("munmap: %s", strerror(errno));
	if (mmap(b_reg, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
	    b_reg)
		cr_fail("mmap at the same address: %s", strerror(errno));
	madvise(b_reg, SMALL, MADV_NOHUGEPAGE);
	for (size_t p = 0; p < SPG; p++) {
		b_ver[p] = (p % 2) ? 0 : 2;
		if (b_ver[p])
			fill(b_reg + p * PG, 2, p, b_ver[p]);
	}
	if (madvise(c_reg, SMALL / 2, MADV_DONTNEED) != 0)
		cr_fail("MADV_DONTNEED: %s", strerror(errno));
	{
		volatile unsigned char sink = 0;
		for (size_t p = 0; p < SPG / 2; p++) {
			c_ver[p] = 0;
			sink ^= c_reg[p * PG]; /* read: maps the zero page */
		}
		(void)sink;
	}
	{
		unsigned char *target = map(SMALL);
		void *moved = mremap(d_reg, SMALL, SMALL, MREMAP_MAYMOVE | MREMAP_FIXED, target);
		if (moved != target)
			cr_fail("mremap: %s", strerror(errno));
		d_reg = moved;
	}
	if (mprotect(e_reg + 100 * PG, 10 * PG, PROT_READ) != 0)
		cr_fail("mprotect: %s", strerror(errno));
	{
		/* a write by the kernel: read(2) from /dev/urandom-like deterministic data */
		int pfd[2];
		if (pipe(pfd) != 0)
			cr_fail("pipe");
		e_ver[200] = 2;
		unsigned char page[PG];
		fill(page, 5, 200, 2);
		if (write(pfd[1], page, PG) != (ssize_t)PG || read(pfd[0], e_reg + 200 * PG, PG) != (ssize_t)PG)
			cr_fail("pipe copy");
		close(pfd[0]);
		close(pfd[1]);
	}
	check_all(1);
	cr_gate(2);

	/* phase 2 */
	rewrite_heap(2);
	pthread_t th;
	if (pthread_create(&th, NULL, worker, NULL) != 0)
		cr_fail("pthread_create");
	int go[2];
	if (pipe(go) != 0)
		cr_fail("pipe");
	pid_t child = fork();
	if (child < 0)
		cr_fail("fork: %s", strerror(errno));
	if (child == 0) {
		close(go[1]);
		/* the child's own copy, changed after the fork */
		for (size_t p = 0; p < heap_pages; p += 3) {
			heap_ver[p] += 100;
			fill(heap + p * PG, 1, p, heap_ver[p]);
		}
		char c;
		while (read(go[0], &c, 1) < 0 && errno == EINTR)
			;
		check("the child's heap", heap, 1, heap_pages, heap_ver);
		_exit(0);
	}
	close(go[0]);
	for (size_t p = SPG / 4; p < SPG / 2; p++) {
		c_ver[p] = 3; /* dropped, read, then written */
		fill(c_reg + p * PG, 3, p, 3);
	}
	if (mprotect(e_reg + 100 * PG, 10 * PG, PROT_READ | PROT_WRITE) != 0)
		cr_fail("mprotect back: %s", strerror(errno));
	e_ver[105] = 3;
	fill(e_reg + 105 * PG, 5, 105, 3);
	check_all(2);
	cr_gate(3);

	/* phase 3 */
	rewrite_heap(3);
	if (madvise(c_reg + (SPG / 2) * PG, 8 * PG, MADV_DONTNEED) != 0)
		cr_fail("MADV_DONTNEED: %s", strerror(errno));
	for (size_t p = SPG / 2; p < SPG / 2 + 8; p++)
		c_ver[p] = 0;
	thread_stop = 1;
	pthread_join(th, NULL);
	cr_line("thread stack checksum %016llx", (unsigned long long)thread_sum);
	if (write(go[1], "x", 1) != 1)
		cr_fail("write to the child");
	int st;
	if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		cr_fail("the child failed (status %d)", st);
	check_all(3);
	cr_pass();
	return 0;
}
