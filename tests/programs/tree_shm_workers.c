/* tree_shm_workers: a parent forks workers that share a MAP_SHARED region
 * and each add to their own counters there in rounds; the parent waits for
 * them (wait() must still return each child's status after a restart) and
 * checks every counter. Only the parent prints. (issue 5) */
#include "lib/crtest.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define W 3
#define ROUNDS 120

int main(void)
{
	volatile long *sh = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return 1;
	cr_ready();
	pid_t kids[W];
	for (int w = 0; w < W; w++) {
		kids[w] = fork();
		if (kids[w] == 0) {
			for (int r = 1; r <= ROUNDS; r++) {
				sh[w * 512] += r * (w + 1);
				sh[w * 512 + 1] = r;
				cr_sleep_us(20000);
			}
			_exit(10 + w);
		}
	}
	for (int k = 1; k <= 3; k++) {
		cr_sleep_us(400000);
		cr_gate(k);
	}
	int ok = 1;
	for (int w = 0; w < W; w++) {
		int st = 0;
		if (waitpid(kids[w], &st, 0) != kids[w] || !WIFEXITED(st) || WEXITSTATUS(st) != 10 + w) {
			cr_line("FAIL: worker %d status %d", w, st);
			ok = 0;
		}
	}
	for (int w = 0; w < W; w++) {
		long want = (long)ROUNDS * (ROUNDS + 1) / 2 * (w + 1);
		cr_line("worker %d total %ld rounds %ld", w, sh[w * 512], sh[w * 512 + 1]);
		if (sh[w * 512] != want)
			ok = 0;
	}
	cr_line(ok ? "PASS" : "FAIL: counters");
	return ok ? 0 : 1;
}
