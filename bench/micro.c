/* bench/micro.c - system-call and library micro-benchmarks, run plainly and
 * under `ckpt launch` by bench/run.  usage: micro SCRATCH_FILE
 * Prints "<name> <ns per operation>" for each benchmark. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void *nop(void *a) { return a; }

int main(int argc, char **argv) {
    const char *file = argc > 1 ? argv[1] : "/etc/hostname";
    double t;
    long n;

    n = 200000;
    t = now();
    for (long i = 0; i < n; i++) {
        int fd = open(file, O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
    }
    printf("open_close %.2f\n", (now() - t) / n);

    n = 20000000;
    t = now();
    for (long i = 0; i < n; i++) {
        void *volatile p = malloc(64 + (i & 255));
        free(p);
    }
    printf("malloc_free %.2f\n", (now() - t) / n);

    n = 20000000;
    struct timespec ts;
    t = now();
    for (long i = 0; i < n; i++) clock_gettime(CLOCK_MONOTONIC, &ts);
    printf("clock_gettime %.2f\n", (now() - t) / n);

    n = 2000;
    t = now();
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        if (p < 0) { perror("fork"); return 1; }
        int st;
        waitpid(p, &st, 0);
    }
    printf("fork_wait %.2f\n", (now() - t) / n);

    n = 20000;
    t = now();
    for (long i = 0; i < n; i++) {
        pthread_t th;
        if (pthread_create(&th, NULL, nop, NULL)) { perror("pthread_create"); return 1; }
        pthread_join(th, NULL);
    }
    printf("pthread_create_join %.2f\n", (now() - t) / n);
    return 0;
}
