/* fileio: reads an input file sequentially with read() (so the saved read offset
 * matters), writes each transformed 4 KiB block to an output file at a permuted position,
 * alternately with pwrite() and lseek()+write(), and appends a record line every 32 blocks
 * to a log opened with O_APPEND. The output and the log must be byte-identical to an
 * uninterrupted run; at the end the program re-reads its output and checks every block.
 *
 * usage: fileio --gen INPUT MIB     (make the input file)
 *        fileio INPUT OUTPUT LOG */
#include "lib/crtest.h"
#include <fcntl.h>
#include <sys/stat.h>

#define BS 4096

static void transform(const unsigned char *in, unsigned char *out, uint64_t i)
{
	for (size_t k = 0; k < BS; k += 8) {
		uint64_t w;
		memcpy(&w, in + k, 8);
		w ^= cr_mix(i * 4096 + k);
		memcpy(out + k, &w, 8);
	}
}

static uint32_t crc(uint32_t h, const unsigned char *p, size_t n)
{
	for (size_t k = 0; k < n; k++)
		h = (h ^ p[k]) * 16777619u;
	return h;
}

static int gen(const char *path, size_t mib)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	unsigned char blk[BS];
	if (fd < 0)
		cr_fail("open %s: %s", path, strerror(errno));
	/* An odd number of blocks, so it is coprime with the permutation stride. */
	for (size_t b = 0; b < mib * 256 + 1; b++) {
		for (size_t k = 0; k < BS; k += 8) {
			uint64_t w = cr_mix(b * 977 + k);
			memcpy(blk + k, &w, 8);
		}
		if (write(fd, blk, BS) != BS)
			cr_fail("write %s", path);
	}
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned char ib[BS], ob[BS], cb[BS];
	struct stat st;
	uint64_t n, stride = 7919;
	uint32_t ocrc = 2166136261u;
	int in, out, log;

	if (argc == 4 && strcmp(argv[1], "--gen") == 0)
		return gen(argv[2], strtoull(argv[3], NULL, 0));
	if (argc != 4)
		cr_fail("usage: fileio INPUT OUTPUT LOG | --gen INPUT MIB");
	in = open(argv[1], O_RDONLY);
	out = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
	log = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	if (in < 0 || out < 0 || log < 0)
		cr_fail("open: %s", strerror(errno));
	if (fstat(in, &st) != 0 || st.st_size % BS != 0 || st.st_size == 0)
		cr_fail("input size is not a positive multiple of %d", BS);
	n = (uint64_t)st.st_size / BS;
	if (n % stride == 0)
		cr_fail("block count is a multiple of the stride");
	cr_line("blocks %llu", (unsigned long long)n);
	cr_ready();

	for (uint64_t i = 0; i < n; i++) {
		uint64_t pos = (i * stride) % n;
		ssize_t got = read(in, ib, BS);

		if (got != BS)
			cr_fail("read block %llu returned %zd", (unsigned long long)i, got);
		transform(ib, ob, i);
		if (i % 2 == 0) {
			if (pwrite(out, ob, BS, (off_t)(pos * BS)) != BS)
				cr_fail("pwrite block %llu", (unsigned long long)i);
		} else {
			if (lseek(out, (off_t)(pos * BS), SEEK_SET) != (off_t)(pos * BS) ||
			    write(out, ob, BS) != BS)
				cr_fail("lseek+write block %llu", (unsigned long long)i);
		}
		if (i % 32 == 31) {
			char line[128];
			int len = snprintf(line, sizeof(line), "block %llu at %llu crc %08x\n",
					   (unsigned long long)i, (unsigned long long)pos,
					   crc(2166136261u, ob, BS));
			if (write(log, line, (size_t)len) != len)
				cr_fail("append to log");
		}
		if (i > 0 && i % (n / 8) == 0)
			cr_line("copied %llu", (unsigned long long)i);
		if (i > 0 && i % (n / 4) == 0 && i / (n / 4) <= 3)
			cr_gate((int)(i / (n / 4)));
		if (i % 16 == 15)
			cr_sleep_us(2000);
	}
	if (read(in, ib, BS) != 0)
		cr_fail("input not at EOF after %llu blocks", (unsigned long long)n);

	/* Self-check: every output block is the transform of its input block. */
	for (uint64_t i = 0; i < n; i++) {
		uint64_t pos = (i * stride) % n;
		if (pread(in, ib, BS, (off_t)(i * BS)) != BS ||
		    pread(out, cb, BS, (off_t)(pos * BS)) != BS)
			cr_fail("re-read block %llu", (unsigned long long)i);
		transform(ib, ob, i);
		if (memcmp(ob, cb, BS) != 0)
			cr_fail("output block %llu (input block %llu) differs",
				(unsigned long long)pos, (unsigned long long)i);
	}
	for (uint64_t p = 0; p < n; p++) {
		if (pread(out, cb, BS, (off_t)(p * BS)) != BS)
			cr_fail("re-read output block %llu", (unsigned long long)p);
		ocrc = crc(ocrc, cb, BS);
	}
	if (fstat(out, &st) != 0 || (uint64_t)st.st_size != n * BS)
		cr_fail("output size %lld, expected %llu", (long long)st.st_size,
			(unsigned long long)(n * BS));
	if (fstat(log, &st) != 0)
		cr_fail("fstat log");
	cr_line("output crc %08x log size %lld", ocrc, (long long)st.st_size);
	cr_pass();
	return 0;
}
