/* shm_sem_late: a POSIX named semaphore that no other process has opened
 * yet when the checkpoint is taken.
 *
 * glibc's sem_open maps /dev/shm/sem.XXXXXX, links it to its final name and
 * unlinks the temporary one, so the creator's mapping reads "(deleted)". If,
 * at the checkpoint, no process maps the final name, the restore must still
 * map the creator's semaphore from that name: a process that opens it by name
 * after the restart (here a child started after the first gate; in Python, a
 * pool worker that had not unpickled its locks yet) must find the same
 * object. Otherwise the parent's post is never seen and the program hangs.
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
	unsigned char r[8];
	if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
		fail("getrandom");
	char go_name[64], back_name[64];
	snprintf(go_name, sizeof(go_name), "/crtest-late-go-%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1],
		 r[2], r[3], r[4], r[5], r[6], r[7]);
	snprintf(back_name, sizeof(back_name), "/crtest-late-back-%02x%02x%02x%02x%02x%02x%02x%02x", r[0],
		 r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
	sem_t *go = sem_open(go_name, O_CREAT | O_EXCL, 0600, 0);
	sem_t *back = sem_open(back_name, O_CREAT | O_EXCL, 0600, 0);
	if (go == SEM_FAILED || back == SEM_FAILED)
		fail("sem_open (create)");
	/* Posted before any other process has the names open: the value (1)
	 * must come back with the object. */
	if (sem_post(go) != 0)
		fail("sem_post (first)");
	cr_ready();
	cr_gate(1);
	/* Only now a process opens the names (a fresh image: glibc would reuse
	 * a mapping inherited through fork). */
	pid_t child = fork();
	if (child < 0)
		fail("fork");
	if (child == 0) {
		execl("/proc/self/exe", "shm_sem_late", "child", go_name, back_name, (char *)NULL);
		_exit(127);
	}
	for (int k = 1; k <= ROUNDS; k++) {
		if (k > 1) {
			cr_gate(k);
			if (sem_post(go) != 0)
				fail("sem_post");
		}
		while (sem_wait(back) != 0)
			if (errno != EINTR)
				fail("sem_wait");
		cr_line("round %d: the child answered", k);
	}
	int st = 0;
	if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("child status");
	sem_unlink(go_name);
	sem_unlink(back_name);
	cr_line("PASS");
	return 0;
}
