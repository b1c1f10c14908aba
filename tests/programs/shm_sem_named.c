/* shm_sem_named: two processes synchronised by POSIX named semaphores.
 *
 * glibc's sem_open creates /dev/shm/sem.XXXXXX, maps it, links it to its
 * final name and unlinks the temporary one: the creator's mapping shows the
 * temporary name "(deleted)" while a process that opens the semaphore by
 * name maps /dev/shm/sem.NAME, one object under two names (Python's
 * multiprocessing locks with the forkserver and spawn start methods are made
 * this way). At each gate the child is blocked in sem_wait on `go` and the
 * parent then posts it and waits for `back`: if a restart made two objects of
 * one, the post is never seen and the program hangs.
 *
 * Checkpointed at each gate; every round trip happens exactly once. */
#include "lib/crtest.h"

#include <semaphore.h>
#include <sys/random.h>
#include <sys/wait.h>

#define ROUNDS 3

static void fail(const char *why)
{
	cr_line("FAIL: %s (errno %d)", why, errno);
	exit(1);
}

static int child_main(const char *go_name, const char *back_name)
{
	sem_t *g = sem_open(go_name, 0);
	sem_t *b = sem_open(back_name, 0);
	if (g == SEM_FAILED || b == SEM_FAILED)
		return 2;
	/* One post on `back`: the parent knows the child has the names open. */
	sem_post(b);
	for (int k = 0; k < ROUNDS; k++) {
		while (sem_wait(g) != 0)
			if (errno != EINTR)
				return 3;
		sem_post(b);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "child") == 0)
		return child_main(argv[2], argv[3]);
	/* A random name (kept in memory, so a restart uses it again): copies of
	 * this program running at once never share a semaphore. */
	unsigned char r[8];
	if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
		fail("getrandom");
	char go_name[64], back_name[64];
	snprintf(go_name, sizeof(go_name), "/crtest-go-%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2],
		 r[3], r[4], r[5], r[6], r[7]);
	snprintf(back_name, sizeof(back_name), "/crtest-back-%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1],
		 r[2], r[3], r[4], r[5], r[6], r[7]);
	sem_t *go = sem_open(go_name, O_CREAT | O_EXCL, 0600, 0);
	sem_t *back = sem_open(back_name, O_CREAT | O_EXCL, 0600, 0);
	if (go == SEM_FAILED || back == SEM_FAILED)
		fail("sem_open (create)");
	/* The child opens both by name after the creator's temporary name is
	 * gone, in a fresh image (glibc reuses a mapping inherited through fork). */
	pid_t child = fork();
	if (child < 0)
		fail("fork");
	if (child == 0) {
		execl("/proc/self/exe", "shm_sem_named", "child", go_name, back_name, (char *)NULL);
		_exit(127);
	}
	while (sem_wait(back) != 0)
		if (errno != EINTR)
			fail("sem_wait (child ready)");
	cr_ready();
	for (int k = 1; k <= ROUNDS; k++) {
		/* Give the child time to block on `go`. */
		cr_sleep_us(20000);
		cr_gate(k);
		if (sem_post(go) != 0)
			fail("sem_post");
		while (sem_wait(back) != 0)
			if (errno != EINTR)
				fail("sem_wait");
		int v = -1;
		sem_getvalue(back, &v);
		cr_line("round %d: the child answered, back=%d", k, v);
	}
	int st = 0;
	if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("child status");
	sem_unlink(go_name);
	sem_unlink(back_name);
	cr_line("PASS");
	return 0;
}
