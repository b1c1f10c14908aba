/* late: an unmodified Open MPI program (issue 16) in which ranks on
 * different nodes talk for the first time after a restart.
 * Arguments: steps, pause after each in milliseconds, the late step L, and
 * optionally a hold file.
 * Every step each rank passes its value to the next rank of a ring
 * (MPI_Sendrecv, neighbours only). From step L on, each rank also swaps a
 * value with the rank half the ring away (rank r with r + size/2): with
 * 2 nodes x 2 ranks, 0 with 2 and 1 with 3, pairs on different nodes. No
 * collective runs before step L, so no other traffic connects them. With
 * a hold file, every rank waits outside MPI before step L while that file
 * exists (the test makes it before the job starts and removes it after
 * the restart): a checkpoint then falls before any of those pairs has
 * exchanged a byte, and they first talk after the restart.
 * Every rank replays the whole exchange by itself and checks what it
 * received; rank 0 prints each step, the RESULT after an allreduce, and
 * PASS. Each rank also prints (to stderr, not compared with a run without
 * ckpt) how many sockets it had after step 1 and at the end: a connection
 * opened after the restart, to an address a peer published before it,
 * shows as one more. */
#include "lib/crtest.h"
#include <dirent.h>
#include <mpi.h>

static long next(long acc, long got)
{
	return (acc * 31 + got) % 1000003;
}

/* The number of this process's descriptors that are sockets. */
static int sockets(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL)
		cr_fail("opendir /proc/self/fd");
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char path[300], target[64];
		snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
		ssize_t len = readlink(path, target, sizeof target - 1);
		if (len > 0) {
			target[len] = 0;
			if (strncmp(target, "socket:", 7) == 0)
				n++;
		}
	}
	closedir(d);
	return n;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		cr_fail("usage: late steps pause_ms late_step [hold_file]");
	int steps = atoi(argv[1]);
	long pause_us = atol(argv[2]) * 1000;
	int late = atoi(argv[3]);
	const char *hold_file = argc > 4 ? argv[4] : NULL;
	MPI_Init(&argc, &argv);
	int rank, size;
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (size < 2 || size > 64 || size % 2 != 0)
		cr_fail("run with an even number of ranks from 2 to 64, not %d", size);
	int half = size / 2;
	/* sim[r] is rank r's value, replayed by every rank. */
	long sim[64], mine = rank + 1;
	for (int r = 0; r < size; r++)
		sim[r] = r + 1;
	if (rank == 0)
		cr_ready();
	int at_start = -1;
	for (int i = 1; i <= steps; i++) {
		if (i == late && hold_file != NULL)
			while (access(hold_file, F_OK) == 0)
				cr_sleep_us(20000);
		long got = -1, prev[64];
		for (int r = 0; r < size; r++)
			prev[r] = sim[r];
		MPI_Sendrecv(&mine, 1, MPI_LONG, (rank + 1) % size, i, &got, 1, MPI_LONG,
			     (rank + size - 1) % size, i, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		if (got != prev[(rank + size - 1) % size])
			cr_fail("rank %d step %d: received %ld from the ring, expected %ld", rank, i,
				got, prev[(rank + size - 1) % size]);
		for (int r = 0; r < size; r++)
			sim[r] = next(prev[r], prev[(r + size - 1) % size]);
		mine = next(mine, got);
		if (i >= late) {
			long across = -1, before[64];
			int peer = (rank + half) % size;
			for (int r = 0; r < size; r++)
				before[r] = sim[r];
			MPI_Sendrecv(&mine, 1, MPI_LONG, peer, 100000 + i, &across, 1, MPI_LONG,
				     peer, 100000 + i, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
			if (across != before[peer])
				cr_fail("rank %d step %d: received %ld from rank %d, expected %ld",
					rank, i, across, peer, before[peer]);
			for (int r = 0; r < size; r++)
				sim[r] = next(before[r], before[(r + half) % size]);
			mine = next(mine, across);
		}
		if (mine != sim[rank])
			cr_fail("rank %d step %d: value %ld, replayed %ld", rank, i, mine, sim[rank]);
		if (i == 1)
			at_start = sockets();
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
	fprintf(stderr, "late: rank %d sockets: %d after step 1, %d at the end\n", rank, at_start,
		sockets());
	if (rank == 0) {
		cr_line("RESULT %ld", sum);
		cr_pass();
	}
	MPI_Finalize();
	return 0;
}
