/* files_rewrite: files a job rewrites, each updated read-modify-write at every step,
 * so that a restart that does not put their content back produces different results:
 *   - state.dat, open O_RDWR: 64 counters of 8 bytes, each step adds to each (pread +
 *     pwrite), and the file grows by one 4 KiB block per step;
 *   - run.log, opened O_WRONLY|O_APPEND: one line per step;
 *   - map.dat, mapped MAP_SHARED (MIB MiB): each step rewrites one word in every page
 *     from its previous value;
 *   - a tmpfile() (deleted while open, like a Fortran scratch file): a running sum read
 *     back and rewritten at every step, and a record appended.
 * Work happens between the gates; every step prints the checksums of all four.
 *
 * usage: files_rewrite [MIB]     (default 16) */
#include "lib/crtest.h"
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define STEPS 12
#define NC 64

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t k = 0; k < n; k++)
		h = (h ^ b[k]) * 1099511628211ull;
	return h;
}

static uint64_t file_hash(int fd)
{
	unsigned char buf[65536];
	uint64_t h = 14695981039346656037ull;
	off_t off = 0;
	ssize_t n;
	while ((n = pread(fd, buf, sizeof buf, off)) > 0) {
		h = fnv(h, buf, (size_t)n);
		off += n;
	}
	if (n < 0)
		cr_fail("pread: %s", strerror(errno));
	return h ^ (uint64_t)off;
}

static uint64_t path_hash(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		cr_fail("open %s: %s", path, strerror(errno));
	uint64_t h = file_hash(fd);
	close(fd);
	return h;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoull(argv[1], NULL, 0) : 16;
	size_t len = mib << 20, pages = len / 4096;
	int st = open("state.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
	int lg = open("run.log", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	int mf = open("map.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
	FILE *scratch = tmpfile();
	if (st < 0 || lg < 0 || mf < 0 || scratch == NULL)
		cr_fail("open: %s", strerror(errno));
	uint64_t zero[NC] = {0};
	if (pwrite(st, zero, sizeof zero, 0) != (ssize_t)sizeof zero)
		cr_fail("pwrite");
	if (ftruncate(mf, (off_t)len) != 0)
		cr_fail("ftruncate");
	uint64_t *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mf, 0);
	if (map == MAP_FAILED)
		cr_fail("mmap: %s", strerror(errno));
	close(mf);
	int sfd = fileno(scratch);
	uint64_t sum0 = 0;
	if (pwrite(sfd, &sum0, 8, 0) != 8)
		cr_fail("pwrite scratch");
	cr_ready();
	for (int s = 1; s <= STEPS; s++) {
		uint64_t c[NC];
		if (pread(st, c, sizeof c, 0) != (ssize_t)sizeof c)
			cr_fail("pread state");
		for (int i = 0; i < NC; i++)
			c[i] = c[i] * 3 + cr_mix((uint64_t)(s * NC + i)) % 1000;
		if (pwrite(st, c, sizeof c, 0) != (ssize_t)sizeof c)
			cr_fail("pwrite state");
		unsigned char blk[4096];
		for (size_t k = 0; k < sizeof blk; k++)
			blk[k] = (unsigned char)(c[k % NC] >> (k % 8));
		if (pwrite(st, blk, sizeof blk, (off_t)(sizeof c + (size_t)(s - 1) * sizeof blk)) != (ssize_t)sizeof blk)
			cr_fail("pwrite block");
		char line[128];
		int n = snprintf(line, sizeof line, "step %d state %llu\n", s, (unsigned long long)c[s % NC]);
		if (write(lg, line, (size_t)n) != n)
			cr_fail("write log");
		for (size_t p = 0; p < pages; p++) {
			uint64_t *w = map + p * 512 + (size_t)s % 512;
			*w = *w * 7 + cr_mix(p + (uint64_t)s);
		}
		uint64_t sum;
		if (pread(sfd, &sum, 8, 0) != 8)
			cr_fail("pread scratch");
		sum = sum * 5 + c[0];
		if (pwrite(sfd, &sum, 8, 0) != 8)
			cr_fail("pwrite scratch");
		if (pwrite(sfd, &c, 64, 8 + (off_t)(s - 1) * 64) != 64)
			cr_fail("pwrite scratch record");
		cr_line("step %d state %016llx log %016llx map %016llx scratch %016llx", s,
			(unsigned long long)file_hash(st), (unsigned long long)path_hash("run.log"),
			(unsigned long long)fnv(14695981039346656037ull, map, len),
			(unsigned long long)file_hash(sfd));
		if (s % 4 == 0)
			cr_gate(s / 4);
	}
	if (msync(map, len, MS_SYNC) != 0)
		cr_fail("msync");
	cr_pass();
	return 0;
}
