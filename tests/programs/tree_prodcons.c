/* tree_prodcons: a producer and a consumer process connected by a pipe with
 * data in flight (the producer runs ahead until the pipe is full), the
 * consumer's running sum in MAP_SHARED memory, and the parent's waitpid()
 * status of the consumer checked at the end. (issue 5) */
#include "lib/crtest.h"
#include <sys/mman.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 60000;
	int p[2];
	if (pipe(p) != 0)
		return 1;
	volatile long *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return 1;
	cr_ready();
	pid_t c = fork();
	if (c == 0) {
		close(p[1]);
		long v, sum = 0, got = 0;
		while (read(p[0], &v, sizeof v) == (ssize_t)sizeof v) {
			if (v != got + 1)
				_exit(3);
			sum += v;
			got++;
			sh[0] = sum;
			sh[1] = got;
			if (got % 2000 == 0)
				cr_sleep_us(40000);
		}
		_exit(got == n ? 0 : 4);
	}
	close(p[0]);
	for (long i = 1; i <= n; i++) {
		if (write(p[1], &i, sizeof i) != (ssize_t)sizeof i)
			return 1;
		if (i % 10000 == 0)
			cr_line("produced %ld", i);
		if (i == n / 4)
			cr_gate(1);
		if (i == n / 2)
			cr_gate(2);
		if (i == 3 * n / 4)
			cr_gate(3);
	}
	close(p[1]);
	int st = 0;
	if (waitpid(c, &st, 0) != c) {
		cr_line("FAIL: waitpid");
		return 1;
	}
	long want = n * (n + 1) / 2;
	cr_line("consumer exit %d sum %ld items %ld", WIFEXITED(st) ? WEXITSTATUS(st) : -1, sh[0], sh[1]);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && sh[0] == want && sh[1] == n)
		cr_line("PASS");
	else {
		cr_line("FAIL: sum %ld want %ld", sh[0], want);
		return 1;
	}
	return 0;
}
