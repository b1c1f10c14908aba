/* bigring: an unmodified Open MPI program whose messages are tens of MiB
 * (issue 16). At each step every rank sends MIB mebibytes to the next rank
 * and receives as much from the previous one (MPI_Sendrecv, Open MPI's
 * rendezvous protocol: a first fragment, then the rest once the receiver
 * has matched it), checks every word, and joins an allreduce of the
 * checksums. Rank 0 prints each step's sum, the RESULT (a running mix of
 * every sum) and PASS.
 * Arguments: steps (default 40), mebibytes per message (default 24), and
 * optionally a step H and a file F: at step H the middle rank (size / 2)
 * makes F and waits until F is gone before it joins the exchange, so its
 * sender stands in the middle of sending it a message of MIB mebibytes for
 * as long as the runner wants (a checkpoint taken then has that message in
 * flight: its first fragment queued in the kernel, the rest in the
 * sender's memory). The wait prints nothing: the output is the same with
 * or without it.
 * Each word is a function of the step, the sender's rank, the running mix
 * and its index, so a byte lost, duplicated, moved or from another step is
 * a FAIL. */
#include "lib/crtest.h"
#include <limits.h>
#include <mpi.h>

static uint64_t base_of(int step, int rank, uint64_t total)
{
	return cr_mix(((uint64_t)step << 32) ^ ((uint64_t)rank << 16) ^ total);
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 40;
	size_t words = (size_t)(argc > 2 ? atol(argv[2]) : 24) << 17;
	int hold_step = argc > 4 ? atoi(argv[3]) : 0;
	const char *hold_file = argc > 4 ? argv[4] : NULL;
	MPI_Init(&argc, &argv);
	int rank, size;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (size < 2)
		cr_fail("run with 2 ranks or more, not %d", size);
	if (words > INT_MAX)
		cr_fail("at most %d words per message", INT_MAX);
	uint64_t *out = malloc(words * 8), *in = malloc(words * 8);
	if (out == NULL || in == NULL)
		cr_fail("malloc");
	int next = (rank + 1) % size, prev = (rank + size - 1) % size;
	uint64_t total = 1;
	if (rank == 0)
		cr_ready();
	for (int s = 1; s <= steps; s++) {
		uint64_t mine_base = base_of(s, rank, total), prev_base = base_of(s, prev, total);
		for (size_t i = 0; i < words; i++)
			out[i] = mine_base ^ (i * 0x9e3779b97f4a7c15ULL);
		if (s == hold_step && rank == size / 2 && hold_file != NULL) {
			int fd = open(hold_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
			if (fd < 0)
				cr_fail("create %s", hold_file);
			close(fd);
			while (access(hold_file, F_OK) == 0)
				cr_sleep_us(10000);
		}
		MPI_Sendrecv(out, (int)words, MPI_UINT64_T, next, s, in, (int)words, MPI_UINT64_T, prev, s,
			     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		uint64_t mine = 0;
		for (size_t i = 0; i < words; i++) {
			uint64_t want = prev_base ^ (i * 0x9e3779b97f4a7c15ULL);
			if (in[i] != want)
				cr_fail("rank %d step %d: word %zu from rank %d is %016llx, expected %016llx",
					rank, s, i, prev, (unsigned long long)in[i], (unsigned long long)want);
			mine += in[i];
		}
		/* What every rank's checksum is, replayed from the bases: the sum
		 * must match. */
		uint64_t sum = 0, want = 0;
		MPI_Allreduce(&mine, &sum, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
		for (int r = 0; r < size; r++) {
			uint64_t b = base_of(s, (r + size - 1) % size, total), m = 0;
			for (size_t i = 0; i < words; i++)
				m += b ^ (i * 0x9e3779b97f4a7c15ULL);
			want += m;
		}
		if (sum != want)
			cr_fail("rank %d step %d: sum %016llx, expected %016llx", rank, s,
				(unsigned long long)sum, (unsigned long long)want);
		total = cr_mix(total ^ sum);
		if (rank == 0)
			cr_line("step %d sum %016llx", s, (unsigned long long)sum);
	}
	MPI_Barrier(MPI_COMM_WORLD);
	if (rank == 0) {
		cr_line("RESULT %016llx", (unsigned long long)total);
		cr_pass();
	}
	free(out);
	free(in);
	MPI_Finalize();
	return 0;
}
