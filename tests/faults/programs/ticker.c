/* ticker: a two-thread program whose memory is checked after a restore.
 *
 * usage: ticker WORKDIR HEAP_MIB [churn]
 *
 * Prints READY, then "ticks" every millisecond (nanosleep): each tick adds a
 * pseudo-random amount to one word of a HEAP_MIB heap buffer and to a running
 * total kept in .data; a second thread does the same on a buffer on its own
 * stack. A restore that mixed pages of two checkpoints, lost a page or
 * restored a stale register breaks "sum of the buffer == total". When
 * WORKDIR/go exists, both stop, check their invariants, print 20 numbered
 * lines and PASS (or FAIL: why). It also keeps 4096 bytes unread in a pipe
 * from start to end, and checks them at the end. The output is the same whatever happened
 * before "go", so a restored run can be compared byte for byte. Built with
 * -DWITH_LIB it takes each tick's amount from libtick.so. With "churn",
 * each tick also swaps words of 256 random pages (the sum stays the same), so
 * that a copy-on-write snapshot copies most of the heap while it writes.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char go_path[4096];
static uint64_t *heap;
static size_t words;
static uint64_t heap_total, heap_state = 88172645463325252ull, ticks;
static uint64_t churn_state = 0x2545f4914f6cdd1dull;
static int churn;
static volatile int stop;
static int thread_ok;

#ifdef WITH_LIB
extern uint64_t tick_mix(uint64_t x);
#else
static uint64_t tick_mix(uint64_t x) { return x >> 32; }
#endif

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void say(const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w <= 0)
            _exit(3);
        s += w;
        n -= (size_t)w;
    }
}

static void nap(void) {
    struct timespec ts = {0, 1000000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void *worker(void *arg) {
    (void)arg;
    uint64_t local[8192]; /* 64 KiB on this thread's stack */
    uint64_t total = 0, st = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < 8192; i++) {
        local[i] = i;
        total += i;
    }
    while (!stop) {
        uint64_t r = next(&st);
        local[r % 8192] += r >> 40;
        total += r >> 40;
        nap();
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < 8192; i++)
        sum += local[i];
    thread_ok = sum == total;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3 && !(argc == 4 && strcmp(argv[3], "churn") == 0)) {
        say("FAIL: usage: ticker WORKDIR HEAP_MIB [churn]\n");
        return 2;
    }
    churn = argc == 4;
    snprintf(go_path, sizeof go_path, "%s/go", argv[1]);
    words = (size_t)atoi(argv[2]) * (1 << 20) / 8;
    heap = malloc(words * 8);
    if (!heap) {
        say("FAIL: malloc\n");
        return 1;
    }
    for (size_t i = 0; i < words; i++) {
        heap[i] = i * 2654435761u;
        heap_total += heap[i];
    }
    int held[2];
    unsigned char pb[4096];
    for (int i = 0; i < 4096; i++)
        pb[i] = (unsigned char)(i * 7 + 1);
    if (pipe(held) != 0 || write(held[1], pb, sizeof pb) != (ssize_t)sizeof pb) {
        say("FAIL: pipe\n");
        return 1;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0) {
        say("FAIL: pthread_create\n");
        return 1;
    }
    say("READY\n");
    time_t start = time(NULL);
    while (access(go_path, F_OK) != 0) {
        uint64_t r = next(&heap_state);
        uint64_t add = tick_mix(r);
        heap[r % words] += add;
        heap_total += add;
        ticks++;
        if (churn) {
            size_t stride = 4096 / 8, pages = words / stride;
            for (int k = 0; k < 256 && pages > 1; k++) {
                size_t a = next(&churn_state) % pages * stride;
                size_t b = next(&churn_state) % pages * stride + k % stride;
                uint64_t t = heap[a];
                heap[a] = heap[b];
                heap[b] = t;
            }
        }
        nap();
        if (time(NULL) - start > 600) {
            say("FAIL: no go file after 600 s\n");
            return 1;
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    uint64_t sum = 0;
    for (size_t i = 0; i < words; i++)
        sum += heap[i];
    if (sum != heap_total) {
        say("FAIL: heap sum differs from the recorded total\n");
        return 1;
    }
    if (!thread_ok) {
        say("FAIL: the worker thread's stack buffer differs from its total\n");
        return 1;
    }
    memset(pb, 0, sizeof pb);
    if (read(held[0], pb, sizeof pb) != (ssize_t)sizeof pb) {
        say("FAIL: short read of the held pipe\n");
        return 1;
    }
    for (int i = 0; i < 4096; i++) {
        if (pb[i] != (unsigned char)(i * 7 + 1)) {
            say("FAIL: the held pipe's data changed\n");
            return 1;
        }
    }
    char line[64];
    for (int i = 0; i < 20; i++) {
        snprintf(line, sizeof line, "line %d\n", i);
        say(line);
    }
    say("PASS\n");
    return 0;
}
