/* bigheap: one large heap buffer filled with a pattern plus tens of thousands of small
 * mallocs with contents. Each round rewrites part of the big buffer, frees and
 * reallocates a share of the small blocks (so the brk heap moves), then verifies all data
 * and prints checksums.
 *
 * With IDLE > 0, that many more threads sleep in a loop until the end (targets for a
 * signal sent to the process while its main thread is busy).
 *
 * usage: bigheap [MIB [SMALL [ROUNDS [IDLE]]]]   (defaults 1024, 50000, 8, 0) */
#include "lib/crtest.h"

#include <pthread.h>

#define BLOCK_WORDS 8192 /* 64 KiB blocks */

static uint64_t *big;
static size_t nwords, nblocks;
static unsigned *big_ver;
static unsigned char **small;
static size_t *small_len;
static unsigned *small_ver;
static size_t nsmall;
static unsigned rounds;

static inline uint64_t big_word(size_t i, unsigned ver)
{
	return cr_mix(i * 31 + ver);
}

static void fill_block(size_t b)
{
	size_t end = (b + 1) * BLOCK_WORDS < nwords ? (b + 1) * BLOCK_WORDS : nwords;
	for (size_t i = b * BLOCK_WORDS; i < end; i++)
		big[i] = big_word(i, big_ver[b]);
}

static size_t small_size(size_t j, unsigned ver)
{
	return 16 + cr_mix(j * 7 + ver) % 500;
}

static void make_small(size_t j)
{
	size_t len = small_size(j, small_ver[j]);
	unsigned char *p = malloc(len);
	if (p == NULL)
		cr_fail("malloc(%zu)", len);
	for (size_t k = 0; k < len; k++)
		p[k] = (unsigned char)(j * 131 + k * 7 + small_ver[j]);
	small[j] = p;
	small_len[j] = len;
}

/* Verify everything; return the checksums. Versions are recomputed independently of the
 * version arrays so a corrupted array is caught too. */
static void verify(unsigned done_rounds, uint64_t *big_sum, uint64_t *small_sum)
{
	uint64_t bs = 0, ss = 0;

	for (size_t b = 0; b < nblocks; b++) {
		unsigned ver = 0;
		size_t end = (b + 1) * BLOCK_WORDS < nwords ? (b + 1) * BLOCK_WORDS : nwords;
		for (unsigned r = 1; r <= done_rounds; r++)
			ver += (b % rounds) == (r % rounds);
		if (big_ver[b] != ver)
			cr_fail("big block %zu version %u, expected %u", b, big_ver[b], ver);
		for (size_t i = b * BLOCK_WORDS; i < end; i++) {
			if (big[i] != big_word(i, ver))
				cr_fail("big word %zu is %016llx, expected %016llx", i,
					(unsigned long long)big[i],
					(unsigned long long)big_word(i, ver));
			bs += big[i] ^ i;
		}
	}
	for (size_t j = 0; j < nsmall; j++) {
		unsigned ver = 0;
		for (unsigned r = 1; r <= done_rounds; r++)
			ver += (j % 7) == (r % 7) ? r : 0;
		if (small_ver[j] != ver || small_len[j] != small_size(j, ver))
			cr_fail("small block %zu: version %u len %zu, expected %u %zu", j,
				small_ver[j], small_len[j], ver, small_size(j, ver));
		for (size_t k = 0; k < small_len[j]; k++) {
			unsigned char want = (unsigned char)(j * 131 + k * 7 + ver);
			if (small[j][k] != want)
				cr_fail("small block %zu byte %zu is %u, expected %u", j, k,
					small[j][k], want);
			ss = ss * 1099511628211ULL + small[j][k];
		}
	}
	*big_sum = bs;
	*small_sum = ss;
}

static volatile int done;

static void *idle(void *arg)
{
	(void)arg;
	while (!done)
		cr_sleep_us(1000);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t idlers[16];
	int nidle = argc > 4 ? atoi(argv[4]) : 0;

	size_t mib = argc > 1 ? strtoull(argv[1], NULL, 0) : 1024;
	uint64_t bsum, ssum;

	nsmall = argc > 2 ? strtoull(argv[2], NULL, 0) : 50000;
	rounds = argc > 3 ? (unsigned)strtoul(argv[3], NULL, 0) : 8;
	if (mib < 1 || nsmall < 1 || rounds < 4 || nidle < 0 || nidle > 16)
		cr_fail("bad arguments");
	for (int i = 0; i < nidle; i++)
		if (pthread_create(&idlers[i], NULL, idle, NULL) != 0)
			cr_fail("pthread_create failed");
	nwords = mib * 1024 * 1024 / 8;
	nblocks = (nwords + BLOCK_WORDS - 1) / BLOCK_WORDS;
	big = malloc(nwords * 8);
	big_ver = calloc(nblocks, sizeof(*big_ver));
	small = calloc(nsmall, sizeof(*small));
	small_len = calloc(nsmall, sizeof(*small_len));
	small_ver = calloc(nsmall, sizeof(*small_ver));
	if (!big || !big_ver || !small || !small_len || !small_ver)
		cr_fail("allocation of %zu MiB failed", mib);
	for (size_t b = 0; b < nblocks; b++)
		fill_block(b);
	for (size_t j = 0; j < nsmall; j++)
		make_small(j);
	verify(0, &bsum, &ssum);
	cr_line("heap %zu MiB small %zu big %016llx small %016llx", mib, nsmall,
		(unsigned long long)bsum, (unsigned long long)ssum);
	cr_ready();

	for (unsigned r = 1; r <= rounds; r++) {
		for (size_t b = 0; b < nblocks; b++)
			if (b % rounds == r % rounds) {
				big_ver[b]++;
				fill_block(b);
			}
		for (size_t j = 0; j < nsmall; j++)
			if (j % 7 == r % 7) {
				free(small[j]);
				small_ver[j] += r;
				make_small(j);
			}
		verify(r, &bsum, &ssum);
		cr_line("round %u big %016llx small %016llx", r, (unsigned long long)bsum,
			(unsigned long long)ssum);
		if (r % (rounds / 4) == 0 && r / (rounds / 4) <= 3)
			cr_gate((int)(r / (rounds / 4)));
		cr_sleep_us(50000);
	}
	done = 1;
	for (int i = 0; i < nidle; i++)
		pthread_join(idlers[i], NULL);
	cr_pass();
	return 0;
}
