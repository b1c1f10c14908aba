/* bench/rawio.c - the disk baselines bench/run compares checkpoints with.
 *   rawio write FILE SIZE_BYTES   write SIZE_BYTES of non-zero data from memory
 *                                 (8 MiB write() calls) into a new FILE, fdatasync
 *   rawio read huge|nohuge FILE...  read the files sequentially (8 MiB read() calls)
 *                                 into fresh anonymous memory (MADV_HUGEPAGE or
 *                                 MADV_NOHUGEPAGE, like the checkpointed program)
 * Prints the elapsed seconds (open to fdatasync/close, buffer preparation excluded). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (8UL << 20)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[1], "write")) {
        size_t size = strtoull(argv[3], NULL, 10);
        char *buf = malloc(CHUNK);
        for (size_t i = 0; i < CHUNK; i += 8) *(unsigned long *)(buf + i) = i * 2654435761UL + 1;
        double t = now();
        int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) { perror("open"); return 1; }
        for (size_t done = 0; done < size;) {
            size_t n = size - done < CHUNK ? size - done : CHUNK;
            ssize_t w = write(fd, buf, n);
            if (w <= 0) { perror("write"); return 1; }
            done += w;
        }
        if (fdatasync(fd) || close(fd)) { perror("fdatasync"); return 1; }
        printf("%.6f\n", now() - t);
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "read")) {
        int huge = !strcmp(argv[2], "huge");
        double t = now();
        size_t total = 0;
        for (int a = 3; a < argc; a++) {
            int fd = open(argv[a], O_RDONLY | O_CLOEXEC);
            struct stat st;
            if (fd < 0 || fstat(fd, &st)) { perror(argv[a]); return 1; }
            size_t len = (st.st_size + 4095) & ~4095UL;
            char *p = mmap(NULL, len + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) { perror("mmap"); return 1; }
            p = (char *)(((unsigned long)p + (2 << 20) - 1) & ~((2UL << 20) - 1));
            madvise(p, len, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
            for (size_t off = 0; off < (size_t)st.st_size;) {
                ssize_t r = read(fd, p + off, CHUNK);
                if (r < 0) { perror("read"); return 1; }
                if (r == 0) break;
                off += r;
                total += r;
            }
            close(fd);
        }
        printf("%.6f %zu\n", now() - t, total);
        return 0;
    }
    fprintf(stderr, "usage: rawio write FILE SIZE | rawio read huge|nohuge FILE...\n");
    return 2;
}
