/* fence: an unmodified Open MPI program (issue 16) whose rank 0 reaches
 * MPI_Finalize long before the others. Arguments: steps, pause after each
 * in milliseconds, and optionally a hold file.
 * The ranks pass values around a ring (MPI_Sendrecv) for the given steps,
 * checking each value; then rank 0 creates the hold file, all ranks meet
 * in a barrier (so every rank knows the file exists), and rank 0 enters
 * MPI_Finalize, where Open MPI waits in a PMIx fence until every rank has
 * joined it. The other ranks wait outside MPI until the hold file is gone,
 * then finalize too (without a hold file, at once). A checkpoint taken while rank 0 waits in that fence
 * would keep a request its PMIx server took and no server answers after a
 * restart. Rank 0 prints each step, RESULT and PASS (before finalizing). */
#include "lib/crtest.h"
#include <fcntl.h>
#include <mpi.h>

static long next(long acc, long got)
{
	return (acc * 31 + got) % 1000003;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		cr_fail("usage: fence steps pause_ms [hold_file]");
	int steps = atoi(argv[1]);
	long pause_us = atol(argv[2]) * 1000;
	const char *hold_file = argc > 3 ? argv[3] : NULL;
	MPI_Init(&argc, &argv);
	int rank, size;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (size < 2 || size > 64)
		cr_fail("run with 2 to 64 ranks, not %d", size);
	long sim[64], mine = rank + 1;
	for (int r = 0; r < size; r++)
		sim[r] = r + 1;
	if (rank == 0)
		cr_ready();
	for (int i = 1; i <= steps; i++) {
		long got = -1, prev[64];
		for (int r = 0; r < size; r++)
			prev[r] = sim[r];
		MPI_Sendrecv(&mine, 1, MPI_LONG, (rank + 1) % size, i, &got, 1, MPI_LONG,
			     (rank + size - 1) % size, i, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		if (got != prev[(rank + size - 1) % size])
			cr_fail("rank %d step %d: received %ld, expected %ld", rank, i, got,
				prev[(rank + size - 1) % size]);
		for (int r = 0; r < size; r++)
			sim[r] = next(prev[r], prev[(r + size - 1) % size]);
		mine = next(mine, got);
		if (rank == 0)
			cr_line("step %d value %ld", i, mine);
		cr_sleep_us(pause_us);
	}
	long sum = 0, want = 0;
	MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
	for (int r = 0; r < size; r++)
		want += sim[r];
	if (sum != want)
		cr_fail("rank %d: sum %ld, expected %ld", rank, sum, want);
	if (rank == 0 && hold_file != NULL) {
		int fd = open(hold_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
		if (fd < 0)
			cr_fail("create %s", hold_file);
		close(fd);
	}
	MPI_Barrier(MPI_COMM_WORLD);
	if (rank == 0) {
		cr_line("RESULT %ld", sum);
		cr_pass();
	} else if (hold_file != NULL) {
		while (access(hold_file, F_OK) == 0)
			cr_sleep_us(20000);
	}
	MPI_Finalize();
	return 0;
}
