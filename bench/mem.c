/* bench/mem.c - the program checkpointed by bench/run.
 * usage: mem SIZE_MIB huge|nohuge
 * Maps SIZE_MIB of anonymous memory with MADV_HUGEPAGE or MADV_NOHUGEPAGE,
 * fills every page with non-zero data, prints "ready <VmRSS kB> <AnonHugePages kB>",
 * then loops on poll(stdin, 1 ms).  Whenever one iteration took more than
 * 3 ms longer than asked (the program stood still: a checkpoint pause, or
 * the time between checkpoint and restart), it prints
 *   "gap <duration us> <CLOCK_REALTIME ns now>"
 * so bench/run sees both the pause as the program felt it and the moment it
 * ran again after a restart; after a gap of more than 200 ms it also prints
 * "mem <VmRSS kB> <AnonHugePages kB>" (after a restart: are the huge pages back?).
 * A line "w P" (P = 1..100) rewrites round(pages * P / 100) of the 4 KiB pages,
 * spread evenly (P = 5: every 20th page), by incrementing word 16 of each (word 8,
 * which the final check reads, stays as it is), and prints
 *   "wrote <pages> <ns per page>"
 * (the loop timed with CLOCK_MONOTONIC: what writing costs the program, e.g. with
 * incremental checkpoints' page tracking armed).  A line "q" or EOF on stdin makes
 * it check word 8 of every page, print "bye ok" (or "bye CORRUPT") and exit 0. */
#define _GNU_SOURCE
#include <poll.h>
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

static void mem_kb(long *rss, long *huge) {
    char line[256];
    *rss = *huge = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "VmRSS:", 6)) *rss = atol(line + 6);
        fclose(f);
    }
    f = fopen("/proc/self/smaps_rollup", "r");
    if (f) {
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "AnonHugePages:", 14)) *huge = atol(line + 14);
        fclose(f);
    }
}

/* "w P": rewrite round(pages * P / 100) pages spread evenly: page i is written when
 * floor((i * P + 50) / 100) steps up at i + 1, which happens that many times over all pages. */
static void rewrite(char *p, size_t size, int pct) {
    if (pct < 1 || pct > 100) {
        printf("wrote 0 0 (bad percentage %d)\n", pct);
        fflush(stdout);
        return;
    }
    size_t pages = size / 4096, n = 0;
    long long t0 = now_ns(CLOCK_MONOTONIC);
    for (size_t i = 0; i < pages; i++)
        if ((i * pct + 50) / 100 != ((i + 1) * pct + 50) / 100) {
            ((volatile unsigned long *)(p + i * 4096))[16]++;
            n++;
        }
    long long t1 = now_ns(CLOCK_MONOTONIC);
    printf("wrote %zu %.1f\n", n, n ? (double)(t1 - t0) / n : 0.0);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: mem SIZE_MIB huge|nohuge\n"); return 2; }
    size_t size = (size_t)atol(argv[1]) << 20;
    int huge = !strcmp(argv[2], "huge");
    /* 2 MiB-aligned so that every huge page can be one */
    char *raw = mmap(NULL, size + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) { perror("mmap"); return 1; }
    char *p = (char *)(((unsigned long)raw + (2 << 20) - 1) & ~((2UL << 20) - 1));
    if (madvise(p, size, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE)) { perror("madvise"); return 1; }
    for (size_t i = 0; i < size; i += 4096) {       /* every page different, none zero */
        unsigned long *w = (unsigned long *)(p + i);
        for (int k = 0; k < 512; k += 8) w[k] = i * 2654435761UL + k + 1;
    }
    long rss, hp;
    mem_kb(&rss, &hp);
    printf("ready %ld %ld\n", rss, hp);
    fflush(stdout);
    long long last = now_ns(CLOCK_REALTIME);
    struct pollfd pfd = {.fd = 0, .events = POLLIN};
    char in[256];
    size_t inlen = 0;
    for (;;) {
        int r = poll(&pfd, 1, 1);
        long long t = now_ns(CLOCK_REALTIME);
        if (t - last > 4000000LL) {
            printf("gap %lld %lld\n", (t - last) / 1000, t);
            fflush(stdout);
            if (t - last > 200000000LL) {   /* after a restart (or a long stop) */
                mem_kb(&rss, &hp);
                printf("mem %ld %ld\n", rss, hp);
                fflush(stdout);
            }
        }
        if (r > 0) {
            /* several lines may arrive in one read, and a line may be split over two */
            ssize_t n = read(0, in + inlen, sizeof in - 1 - inlen);
            int quit = n <= 0;
            if (n > 0) inlen += n;
            char *nl;
            while (!quit && (nl = memchr(in, '\n', inlen))) {
                *nl = 0;
                if (in[0] == 'q') quit = 1;
                else if (in[0] == 'w') rewrite(p, size, atoi(in + 1));
                inlen -= nl + 1 - in;
                memmove(in, nl + 1, inlen);
            }
            if (inlen == sizeof in - 1) inlen = 0;   /* an overlong line: drop it */
            if (quit) {
                size_t bad = 0;   /* the memory is still what was written */
                for (size_t i = 0; i < size; i += 4096)
                    bad += ((unsigned long *)(p + i))[8] != i * 2654435761UL + 9;
                printf("bye %s\n", bad ? "CORRUPT" : "ok");
                fflush(stdout);
                return 0;
            }
        }
        last = now_ns(CLOCK_REALTIME);
    }
}
