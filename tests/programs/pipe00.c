/* pipe00: a pipe holding unread data at the checkpoint, and a thread blocked in read()
 * on a second, empty pipe. After the restore the buffered bytes must come out in order
 * and the blocked reader must get what is written later.
 *
 * usage: pipe00 */
#include "lib/crtest.h"
#include <pthread.h>

#define BUFFERED 40000

static int p_full[2], p_empty[2];
static unsigned char got[4096];
static ssize_t got_len = -1;

static void *reader(void *arg)
{
	(void)arg;
	got_len = read(p_empty[0], got, sizeof(got));
	return NULL;
}

int main(void)
{
	static unsigned char buf[BUFFERED];
	pthread_t th;
	size_t off = 0;

	if (pipe(p_full) != 0 || pipe(p_empty) != 0)
		cr_fail("pipe: %s", strerror(errno));
	for (size_t i = 0; i < BUFFERED; i++)
		buf[i] = (unsigned char)cr_mix(i);
	if (write(p_full[1], buf, BUFFERED) != BUFFERED)
		cr_fail("fill the pipe");
	if (pthread_create(&th, NULL, reader, NULL) != 0)
		cr_fail("pthread_create");
	cr_ready();
	cr_gate(1);
	while (off < BUFFERED) {
		ssize_t n = read(p_full[0], buf, BUFFERED - off);
		if (n <= 0)
			cr_fail("read from the full pipe after %zu bytes: %zd", off, n);
		for (ssize_t k = 0; k < n; k++)
			if (buf[k] != (unsigned char)cr_mix(off + (size_t)k))
				cr_fail("pipe byte %zu differs", off + (size_t)k);
		off += (size_t)n;
	}
	cr_line("pipe drained %zu bytes", off);
	if (write(p_empty[1], "hello", 5) != 5)
		cr_fail("write to the second pipe");
	pthread_join(th, NULL);
	if (got_len != 5 || memcmp(got, "hello", 5) != 0)
		cr_fail("the blocked reader got %zd bytes", got_len);
	cr_line("blocked reader got %zd bytes", got_len);
	cr_gate(2);
	cr_gate(3);
	cr_pass();
	return 0;
}
