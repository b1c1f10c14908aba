/* mpi_ring: an unmodified Open MPI program (issue 16), built with mpicc and
 * started by mpirun inside the job: every rank passes a token around a ring
 * (MPI_Sendrecv) and joins an allreduce at each step, over shared
 * memory (vader) with mpirun's PMIx server and session directory behind it.
 * Arguments (optional): the number of steps (default 60) and the pause
 * after each in milliseconds (default 20).
 * Rank 0 prints each step's sum and passes the three gates (at steps 15, 30,
 * 45) while the other ranks wait for it inside MPI_Allreduce, so checkpoints
 * catch them in the middle of a collective. Every rank replays the whole
 * ring by itself and checks what it received and every sum, so a message
 * lost, duplicated or reordered across a restart is a FAIL; rank 0 prints
 * PASS. Output identical to an uninterrupted run means the restarted job
 * computed what it would have. */
#include "lib/crtest.h"
#include <mpi.h>


static long next(long acc, long got)
{
	return (acc * 31 + got) % 1000003;
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 60;
	long pause_us = (argc > 2 ? atol(argv[2]) : 20) * 1000;
	MPI_Init(&argc, &argv);
	int rank, size;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (size < 2 || size > 64)
		cr_fail("run with 2 to 64 ranks, not %d", size);
	/* The ring replayed by every rank: sim[r] is rank r's value. */
	long sim[64], mine = rank + 1;
	for (int r = 0; r < size; r++)
		sim[r] = r + 1;
	if (rank == 0)
		cr_ready();
	for (int i = 1; i <= steps; i++) {
		long got = -1, sum = 0;
		MPI_Sendrecv(&mine, 1, MPI_LONG, (rank + 1) % size, i, &got, 1, MPI_LONG,
			     (rank + size - 1) % size, i, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		long prev[64];
		for (int r = 0; r < size; r++)
			prev[r] = sim[r];
		long want_sum = 0;
		for (int r = 0; r < size; r++) {
			sim[r] = next(prev[r], prev[(r + size - 1) % size]);
			want_sum += sim[r];
		}
		if (got != prev[(rank + size - 1) % size])
			cr_fail("rank %d step %d: received %ld, expected %ld", rank, i, got,
				prev[(rank + size - 1) % size]);
		mine = next(mine, got);
		MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
		if (sum != want_sum)
			cr_fail("rank %d step %d: sum %ld, expected %ld", rank, i, sum, want_sum);
		if (rank == 0) {
			cr_line("step %d sum %ld", i, sum);
			if (i % 15 == 0 && i / 15 <= 3)
				cr_gate(i / 15);
		}
		cr_sleep_us(pause_us);
	}
	MPI_Barrier(MPI_COMM_WORLD);
	if (rank == 0) {
		cr_line("RESULT %ld", mine);
		cr_pass();
	}
	MPI_Finalize();
	return 0;
}
