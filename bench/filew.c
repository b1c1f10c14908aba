/* bench/filew.c - a job that keeps a large file open for writing (issue 14).
 *   filew FILE MIB     create FILE (MIB MiB of non-zero data), keep it open O_RDWR,
 *                      print "ready", then answer lines on stdin:
 *     "w PCT"          rewrite PCT% of its 4 KiB blocks (spread evenly, new data),
 *                      print "wrote BLOCKS"
 *     anything else    print "bye ok" and exit
 * Also prints "gap <us> <realtime ns>" when its 1 ms loop stalled (unused here,
 * kept for the same Program helper). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLK 4096

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: filew FILE MIB\n");
        return 2;
    }
    size_t blocks = strtoull(argv[2], NULL, 10) * 256;
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    static char buf[8 << 20];
    for (size_t i = 0; i < sizeof buf; i += 8) *(unsigned long *)(buf + i) = i * 2654435761UL + 1;
    for (size_t done = 0; done < blocks * BLK; done += sizeof buf)
        if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) {
            perror("write");
            return 1;
        }
    fdatasync(fd);
    printf("ready %zu\n", blocks * BLK);
    fflush(stdout);
    char line[64];
    unsigned round = 0;
    while (fgets(line, sizeof line, stdin)) {
        unsigned pct;
        if (sscanf(line, "w %u", &pct) != 1)
            break;
        round++;
        size_t every = pct ? 100 / pct : 0, n = 0;
        char b[BLK];
        memset(b, (int)(round & 0xff) | 1, sizeof b);
        for (size_t k = 0; every && k < blocks; k += every, n++)
            if (pwrite(fd, b, BLK, (off_t)(k * BLK)) != BLK) {
                perror("pwrite");
                return 1;
            }
        printf("wrote %zu\n", n);
        fflush(stdout);
    }
    printf("bye ok\n");
    fflush(stdout);
    return 0;
}
