/* threads_futex: one producer (the main thread) and several consumer threads sharing a
 * bounded queue under a mutex and two condition variables. The producer is throttled, so
 * consumers spend most of their time blocked in futex waits; at each gate the producer
 * stops and every consumer waits in pthread_cond_wait. Each consumer keeps its partial
 * sums in __thread variables and checks its pid/tid never change (they must survive a
 * restart). The checksum of all consumed items is printed at the end.
 *
 * usage: threads_futex [ITEMS [CONSUMERS]]   (defaults 400000, 4) */
#include "lib/crtest.h"
#include <pthread.h>
#include <sys/syscall.h>

#define QCAP 64
#define MAXCONS 16

static uint64_t queue[QCAP];
static unsigned qhead, qcount;
static int done;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER;

static uint64_t total_sum, total_items;
static int bad_tls, bad_ids;
static pid_t main_pid;

static __thread uint64_t tls_sum;
static __thread uint64_t tls_items;
static __thread uint64_t tls_magic = 0x1111;

static void *consumer(void *arg)
{
	uint64_t me = (uint64_t)(uintptr_t)arg;
	pid_t tid = (pid_t)syscall(SYS_gettid);
	uint64_t magic = cr_mix(me + 1000);

	tls_magic = magic;
	for (;;) {
		uint64_t v;

		pthread_mutex_lock(&lock);
		while (qcount == 0 && !done)
			pthread_cond_wait(&not_empty, &lock);
		if (qcount == 0 && done) {
			pthread_mutex_unlock(&lock);
			break;
		}
		v = queue[qhead];
		qhead = (qhead + 1) % QCAP;
		qcount--;
		pthread_cond_signal(&not_full);
		pthread_mutex_unlock(&lock);

		if (tls_magic != magic)
			__atomic_store_n(&bad_tls, 1, __ATOMIC_RELAXED);
		tls_sum += cr_mix(v);
		tls_items++;
		if ((tls_items & 1023) == 0 &&
		    ((pid_t)syscall(SYS_gettid) != tid || getpid() != main_pid))
			__atomic_store_n(&bad_ids, 1, __ATOMIC_RELAXED);
	}
	if ((pid_t)syscall(SYS_gettid) != tid || getpid() != main_pid)
		__atomic_store_n(&bad_ids, 1, __ATOMIC_RELAXED);

	pthread_mutex_lock(&lock);
	total_sum += tls_sum;
	total_items += tls_items;
	pthread_mutex_unlock(&lock);
	return NULL;
}

int main(int argc, char **argv)
{
	uint64_t items = argc > 1 ? strtoull(argv[1], NULL, 0) : 400000;
	unsigned ncons = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 0) : 4;
	pthread_t th[MAXCONS];
	uint64_t expect = 0;

	if (items < 16 || ncons < 1 || ncons > MAXCONS)
		cr_fail("bad arguments");
	main_pid = getpid();
	for (unsigned i = 0; i < ncons; i++)
		if (pthread_create(&th[i], NULL, consumer, (void *)(uintptr_t)i) != 0)
			cr_fail("pthread_create");
	cr_line("consumers %u items %llu", ncons, (unsigned long long)items);
	cr_ready();

	for (uint64_t i = 0; i < items; i++) {
		uint64_t v = cr_mix(i);

		if (i > 0 && i % (items / 16) == 0)
			cr_line("produced %llu", (unsigned long long)i);
		if (i > 0 && i % (items / 4) == 0 && i / (items / 4) <= 3)
			cr_gate((int)(i / (items / 4)));
		pthread_mutex_lock(&lock);
		while (qcount == QCAP)
			pthread_cond_wait(&not_full, &lock);
		queue[(qhead + qcount) % QCAP] = v;
		qcount++;
		pthread_cond_signal(&not_empty);
		pthread_mutex_unlock(&lock);
		expect += cr_mix(v);
		/* Throttle so consumers keep draining the queue and block in futex waits. */
		if (i % 128 == 127)
			cr_sleep_us(300);
	}
	pthread_mutex_lock(&lock);
	done = 1;
	pthread_cond_broadcast(&not_empty);
	pthread_mutex_unlock(&lock);
	for (unsigned i = 0; i < ncons; i++)
		pthread_join(th[i], NULL);

	cr_line("consumed %llu checksum %016llx", (unsigned long long)total_items,
		(unsigned long long)total_sum);
	if (total_items != items)
		cr_fail("consumed %llu items, expected %llu", (unsigned long long)total_items,
			(unsigned long long)items);
	if (total_sum != expect)
		cr_fail("checksum %016llx, expected %016llx", (unsigned long long)total_sum,
			(unsigned long long)expect);
	if (bad_tls)
		cr_fail("a __thread variable changed under a consumer");
	if (bad_ids)
		cr_fail("getpid()/gettid() changed during the run");
	cr_pass();
	return 0;
}
