/* bench/startup.c - program start-up cost.  usage: startup N PROGRAM [VAR=VALUE...]
 * Runs PROGRAM N times (fork + execve + waitpid), with the current
 * environment plus the given variables, and prints each run's microseconds. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: startup N PROGRAM [VAR=VALUE...]\n"); return 2; }
    int n = atoi(argv[1]);
    for (int i = 3; i < argc; i++) putenv(argv[i]);
    char *args[] = {argv[2], NULL};
    for (int i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        pid_t p = fork();
        if (p == 0) { execve(argv[2], args, environ); _exit(127); }
        int st;
        waitpid(p, &st, 0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) { fprintf(stderr, "startup: %s failed (status %d)\n", argv[2], st); return 1; }
        printf("%.1f\n", (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3);
    }
    return 0;
}
