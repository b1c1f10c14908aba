/* bench/mpimem.c - one rank of the MPI job benchmark (bench/run --only mpi).
 * usage: mpimem SIZE_MIB SECONDS
 * An unmodified Open MPI program started by `srun --mpi=pmix`: like jobmem.c
 * (SIZE_MIB of anonymous memory with every page filled, "ready <VmRSS kB>",
 * 2 ms sleeps for SECONDS of its own running time, a "gap <us> <ns>" line
 * whenever it stood still, "bye ok" after checking every page), and about
 * every 100 ms of its running time it passes a value around the ring of
 * ranks (MPI_Sendrecv) and joins an allreduce of the values, so the ranks
 * hold live TCP connections and a PMIx connection when they are
 * checkpointed, and use them again after the restart. The allreduce's
 * result is checked against the one every rank can compute; the ranks stop
 * together at the first exchange after one of them has run SECONDS. */
#define _GNU_SOURCE
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long rss_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: mpimem SIZE_MIB SECONDS\n");
		return 2;
	}
	MPI_Init(&argc, &argv);
	int rank, size;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	size_t len = (size_t)atol(argv[1]) << 20;
	long long run_ns = atoll(argv[2]) * 1000000000LL;
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 1;
	madvise(p, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len; i += 4096) {
		memset(p + i, (int)(i / 4096 % 251) + 1, 64);
		*(size_t *)(p + i + 64) = i;
	}
	printf("ready %ld\n", rss_kb());
	fflush(stdout);
	long long ran = 0, last = now_ns();
	long round = 0, exchanged = 0;
	for (;;) {
		struct timespec d = {0, 2000000};
		nanosleep(&d, NULL);
		long long t = now_ns();
		long long dt = t - last;
		last = t;
		if (dt > 5000000LL) {
			printf("gap %lld %lld\n", dt / 1000, t);
			fflush(stdout);
			dt = 2000000;
		}
		ran += dt;
		if (++round % 50 == 0) {
			/* The ranks stop together, at the first exchange after one of
			 * them has run its time. */
			long mine[2] = {rank + round, ran >= run_ns}, got = -1, sum[2] = {0, 0};
			MPI_Sendrecv(&mine[0], 1, MPI_LONG, (rank + 1) % size, 0, &got, 1, MPI_LONG,
				     (rank + size - 1) % size, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
			mine[0] = got;
			MPI_Allreduce(mine, sum, 2, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
			if (got != (rank + size - 1) % size + round ||
			    sum[0] != (long)size * (size - 1) / 2 + (long)size * round) {
				printf("bye WRONG at round %ld\n", round);
				return 1;
			}
			exchanged++;
			if (sum[1] > 0)
				break;
		}
	}
	for (size_t i = 0; i < len; i += 4096)
		if (*(size_t *)(p + i + 64) != i || p[i] != (unsigned char)((i / 4096 % 251) + 1)) {
			printf("bye CORRUPT\n");
			return 1;
		}
	MPI_Barrier(MPI_COMM_WORLD);
	printf("bye ok %ld exchanges\n", exchanged);
	MPI_Finalize();
	return 0;
}
