/* busy: a program that is always in the middle of something when the
 * checkpoint signal arrives, and checks afterwards that it all still works.
 *
 * usage: busy MODE WORKDIR        (busy exit N: exits with status N)
 *
 * MODE is one of
 *   fork     fork children that exit with a known status, and reap them
 *   exec     fork children that exec this program ("busy exit N")
 *   execl    the same through execl, execlp and execle (in turn; execle with
 *            an environment without LD_PRELOAD)
 *   popen    popen("exit N") and pclose, over and over
 *   thread   create and join threads that return a known value
 *   pipe     read a pipe whose writer (a thread) writes every 300 ms
 *   sleep    nanosleep(2 s) over and over
 *   signal   a thread sends SIGUSR1 every millisecond; the handler spins
 *   blocked  all signals blocked with pthread_sigmask (from before READY) until
 *            WORKDIR/unblock exists (ckpt keeps its stop signal deliverable)
 *   rawblocked  the same with a raw rt_sigprocmask system call, which libckpt
 *            cannot see: the stop signal is really blocked
 *   rawthread  a thread named "rawblocker" blocks every signal with a raw
 *            rt_sigprocmask until WORKDIR/unblock exists; main runs on
 *   uring    io_uring_setup must fail with ENOSYS, before READY and again after
 *            WORKDIR/go exists (after a restart)
 * Prints READY, works until WORKDIR/go exists, then checks that its own
 * handlers for SIGUSR1, SIGUSR2, SIGTERM and two real-time signals still run,
 * and prints PASS (or FAIL: why).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char go_path[4096], unblock_path[4096];
static const char *self_exe;
static volatile sig_atomic_t got[65];
static volatile uint64_t usr1_count;
static volatile int done;
static int pipefd[2];

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

static void fail(const char *why) {
    char b[512];
    snprintf(b, sizeof b, "FAIL: %s (errno %d)\n", why, errno);
    say(b);
    exit(1);
}

static int go(void) { return access(go_path, F_OK) == 0; }

static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void on_signal(int sig) {
    got[sig] = 1;
    if (sig == SIGUSR1) {
        usr1_count++;
        /* Spin a little so that checkpoints often land in here. */
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        do {
            clock_gettime(CLOCK_MONOTONIC, &b);
        } while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < 200000);
    }
}

static void install(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0)
        fail("sigaction");
}

static void *returner(void *arg) { return arg; }

static void *pipe_writer(void *arg) {
    (void)arg;
    for (uint64_t i = 0; !done; i++) {
        if (write(pipefd[1], &i, sizeof i) != sizeof i)
            break;
        nap_ms(300);
    }
    close(pipefd[1]);
    return NULL;
}

static void *usr1_sender(void *arg) {
    (void)arg;
    while (!done) {
        kill(getpid(), SIGUSR1);
        nap_ms(1);
    }
    return NULL;
}

static void run_fork(int exec) {
    for (int i = 0; !go(); i++) {
        int code = i % 100;
        pid_t c = fork();
        if (c < 0)
            fail("fork");
        if (c == 0) {
            if (exec) {
                char n[16];
                snprintf(n, sizeof n, "%d", code);
                char *args[] = {(char *)self_exe, "exit", n, NULL};
                char *env[] = {"PATH=/usr/bin:/bin", NULL};
                if (exec == 1)
                    execv(self_exe, args);
                else if (i % 3 == 0)
                    execl(self_exe, self_exe, "exit", n, (char *)NULL);
                else if (i % 3 == 1)
                    execlp(self_exe, self_exe, "exit", n, (char *)NULL);
                else
                    execle(self_exe, self_exe, "exit", n, (char *)NULL, env);
                _exit(126);
            }
            _exit(code);
        }
        int st;
        if (waitpid(c, &st, 0) != c)
            fail("waitpid");
        if (!WIFEXITED(st) || WEXITSTATUS(st) != code) {
            char b[128];
            snprintf(b, sizeof b, "child %d ended with status %#x, want exit %d", i, st, code);
            fail(b);
        }
    }
}

static void run_popen(void) {
    for (int i = 0; !go(); i++) {
        char cmd[32];
        snprintf(cmd, sizeof cmd, "exit %d", i % 100);
        FILE *f = popen(cmd, "r");
        if (!f)
            fail("popen");
        int st = pclose(f);
        if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != i % 100) {
            char b[128];
            snprintf(b, sizeof b, "popen %d ended with status %#x, want exit %d", i, st, i % 100);
            fail(b);
        }
    }
}

static void run_thread(void) {
    for (uintptr_t i = 1; !go(); i++) {
        pthread_t t;
        void *r;
        if (pthread_create(&t, NULL, returner, (void *)i) != 0)
            fail("pthread_create");
        if (pthread_join(t, &r) != 0 || r != (void *)i)
            fail("a joined thread returned the wrong value");
    }
}

static void run_pipe(void) {
    if (pipe(pipefd) != 0)
        fail("pipe");
    pthread_t t;
    if (pthread_create(&t, NULL, pipe_writer, NULL) != 0)
        fail("pthread_create");
    uint64_t want = 0, v;
    while (!go()) {
        ssize_t n = read(pipefd[0], &v, sizeof v);
        if (n != sizeof v)
            fail("short read from the pipe");
        if (v != want)
            fail("the pipe lost or repeated data");
        want++;
    }
    done = 1;
    pthread_join(t, NULL);
}

static void run_sleep(void) {
    while (!go()) {
        struct timespec ts = {2, 0};
        while (nanosleep(&ts, &ts) != 0) {
            if (errno != EINTR)
                fail("nanosleep");
        }
    }
}

static void run_signal(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, usr1_sender, NULL) != 0)
        fail("pthread_create");
    while (!go())
        nap_ms(1);
    done = 1;
    pthread_join(t, NULL);
    if (usr1_count == 0)
        fail("the SIGUSR1 handler never ran");
}

static sigset_t before_block;

static void block_all(void) {
    sigset_t all;
    sigfillset(&all);
    if (pthread_sigmask(SIG_SETMASK, &all, &before_block) != 0)
        fail("sigprocmask");
}

static void run_blocked(void) {
    while (access(unblock_path, F_OK) != 0)
        nap_ms(5);
    if (pthread_sigmask(SIG_SETMASK, &before_block, NULL) != 0)
        fail("sigprocmask");
    while (!go())
        nap_ms(5);
}

/* rt_sigprocmask straight to the kernel (as the Go runtime does). */
static void raw_setmask(const sigset_t *set, sigset_t *old) {
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, set, old, 8) != 0)
        fail("rt_sigprocmask");
}

static void raw_block_all(void) {
    sigset_t all;
    sigfillset(&all);
    raw_setmask(&all, &before_block);
}

static void run_rawblocked(void) {
    while (access(unblock_path, F_OK) != 0)
        nap_ms(5);
    raw_setmask(&before_block, NULL);
    while (!go())
        nap_ms(5);
}

static void *raw_blocker(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "rawblocker");
    sigset_t all, old;
    sigfillset(&all);
    raw_setmask(&all, &old);
    while (access(unblock_path, F_OK) != 0)
        nap_ms(5);
    raw_setmask(&old, NULL);
    return NULL;
}

static void run_rawthread(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, raw_blocker, NULL) != 0)
        fail("pthread_create");
    while (!go())
        nap_ms(5);
    pthread_join(t, NULL);
}

static void check_uring(void) {
    char params[120]; /* struct io_uring_params */
    memset(params, 0, sizeof params);
    errno = 0;
    long fd = syscall(425 /* io_uring_setup */, 4, params);
    if (fd >= 0 || errno != ENOSYS) {
        char b[128];
        snprintf(b, sizeof b, "io_uring_setup returned %ld, errno %d (%s), want ENOSYS", fd, errno,
                 strerror(errno));
        fail(b);
    }
}

static void run_uring(void) {
    while (!go())
        nap_ms(5);
    check_uring();
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "exit") == 0)
        return atoi(argv[2]);
    if (argc != 3)
        fail("usage: busy MODE WORKDIR");
    self_exe = "/proc/self/exe";
    snprintf(go_path, sizeof go_path, "%s/go", argv[2]);
    snprintf(unblock_path, sizeof unblock_path, "%s/unblock", argv[2]);
    int sigs[] = {SIGUSR1, SIGUSR2, SIGTERM, SIGRTMIN + 1, SIGRTMAX - 1};
    for (int i = 0; i < 5; i++)
        install(sigs[i]);
    const char *m = argv[1];
    if (!strcmp(m, "blocked"))
        block_all(); /* before READY: the test checkpoints right after it */
    if (!strcmp(m, "rawblocked"))
        raw_block_all();
    if (!strcmp(m, "uring"))
        check_uring();
    say("READY\n");
    if (!strcmp(m, "fork"))
        run_fork(0);
    else if (!strcmp(m, "exec"))
        run_fork(1);
    else if (!strcmp(m, "execl"))
        run_fork(2);
    else if (!strcmp(m, "popen"))
        run_popen();
    else if (!strcmp(m, "thread"))
        run_thread();
    else if (!strcmp(m, "pipe"))
        run_pipe();
    else if (!strcmp(m, "sleep"))
        run_sleep();
    else if (!strcmp(m, "signal"))
        run_signal();
    else if (!strcmp(m, "blocked"))
        run_blocked();
    else if (!strcmp(m, "rawblocked"))
        run_rawblocked();
    else if (!strcmp(m, "rawthread"))
        run_rawthread();
    else if (!strcmp(m, "uring"))
        run_uring();
    else
        fail("unknown mode");
    for (int i = 0; i < 5; i++) {
        got[sigs[i]] = 0;
        if (raise(sigs[i]) != 0 || !got[sigs[i]]) {
            char b[64];
            snprintf(b, sizeof b, "the handler of signal %d did not run", sigs[i]);
            fail(b);
        }
    }
    say("PASS\n");
    return 0;
}
