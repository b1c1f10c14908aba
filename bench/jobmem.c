/* bench/jobmem.c - one task of the whole-job benchmark (bench/run --only job).
 * usage: jobmem SIZE_MIB SECONDS
 * Maps SIZE_MIB of anonymous memory (4 KiB pages), fills every page with
 * non-zero data, prints "ready <VmRSS kB>", then sleeps 2 ms at a time for
 * SECONDS of its own running time.  Whenever one iteration took more than
 * 3 ms longer than asked, by the wall clock (the task stood still: a
 * checkpoint pause, or the time from checkpoint to restart), it prints
 *   "gap <duration us> <CLOCK_REALTIME ns now>"
 * so that bench/run sees the pause as the task felt it and the moment it ran
 * again after a restart.  At the end it checks every page and prints
 * "bye ok" (or "bye CORRUPT"). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kb) == 1) break;
    fclose(f);
    return kb;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: jobmem SIZE_MIB SECONDS\n");
        return 2;
    }
    size_t len = (size_t)atol(argv[1]) << 20;
    long long run_ns = atoll(argv[2]) * 1000000000LL;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    madvise(p, len, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < len; i += 4096) {
        memset(p + i, (int)(i / 4096 % 251) + 1, 64);
        *(size_t *)(p + i + 64) = i;
    }
    printf("ready %ld\n", rss_kb());
    fflush(stdout);
    long long ran = 0, last = now_ns(CLOCK_REALTIME);
    while (ran < run_ns) {
        struct timespec d = {0, 2000000};
        nanosleep(&d, NULL);
        long long t = now_ns(CLOCK_REALTIME);
        long long dt = t - last;
        last = t;
        if (dt > 5000000LL) {
            printf("gap %lld %lld\n", dt / 1000, t);
            fflush(stdout);
            dt = 2000000;
        }
        ran += dt;
    }
    for (size_t i = 0; i < len; i += 4096)
        if (*(size_t *)(p + i + 64) != i || p[i] != (unsigned char)((i / 4096 % 251) + 1)) {
            printf("bye CORRUPT\n");
            return 1;
        }
    printf("bye ok\n");
    return 0;
}
