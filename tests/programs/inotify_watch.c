/* inotify_watch: inotify instances and their watches across checkpoints (issue 12).
 *
 * - A blocking instance with a watch on a directory (IN_CREATE | IN_DELETE, added by a
 *   relative path) and one on a file (IN_MODIFY), with a removed watch between them (a
 *   gap in the watch descriptors: 1 and 3), also open as a dup'ed descriptor;
 * - a nonblocking instance watching the same directory (IN_DELETE | IN_ONLYDIR).
 * Each round after the gate creates a file, writes to the watched file and removes the
 * new file; the events read (watch descriptor, kind, name) are printed, and the
 * nonblocking instance reports its one deletion then EAGAIN. No event is left unread at a
 * checkpoint (ckpt refuses those, and tries again).
 *
 * usage: inotify_watch */
#include "lib/crtest.h"
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>

static void must(int ok, const char *what)
{
	if (!ok)
		cr_fail("%s: %s", what, strerror(errno));
}

/* Read events from `fd` until none arrives for 200 ms; print each (consecutive duplicates
 * merged, as the kernel may merge them or not). */
static int print_events(int fd, const char *who)
{
	char buf[4096] __attribute__((aligned(8)));
	char last[300] = "";
	int n_events = 0;
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 200) <= 0)
			break;
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		for (char *q = buf; q < buf + n;) {
			struct inotify_event *e = (struct inotify_event *)q;
			char line[300];
			snprintf(line, sizeof(line), "%s: wd %d %s%s%s", who, e->wd,
				 e->mask & IN_CREATE ? "IN_CREATE" :
				 e->mask & IN_DELETE ? "IN_DELETE" :
				 e->mask & IN_MODIFY ? "IN_MODIFY" : "OTHER",
				 e->len ? " " : "", e->len ? e->name : "");
			if (strcmp(line, last) != 0) {
				cr_line("%s", line);
				snprintf(last, sizeof(last), "%s", line);
			}
			n_events++;
			q += sizeof(*e) + e->len;
		}
	}
	return n_events;
}

int main(void)
{
	int fd, fd2, dupfd, wd_dir, wd_gone, wd_log, wd2;
	must(mkdir("watched", 0700) == 0 || errno == EEXIST, "mkdir");
	{
		FILE *f = fopen("watched/log", "w");
		must(f != NULL, "create log");
		fclose(f);
		f = fopen("other", "w");
		must(f != NULL, "create other");
		fclose(f);
	}
	fd = inotify_init1(0);
	fd2 = inotify_init1(IN_NONBLOCK);
	must(fd >= 0 && fd2 >= 0, "inotify_init1");
	wd_dir = inotify_add_watch(fd, "watched", IN_CREATE | IN_DELETE);
	wd_gone = inotify_add_watch(fd, "other", IN_MODIFY);
	wd_log = inotify_add_watch(fd, "watched/log", IN_MODIFY);
	must(wd_dir > 0 && wd_gone > 0 && wd_log > 0, "inotify_add_watch");
	must(inotify_rm_watch(fd, wd_gone) == 0, "inotify_rm_watch");
	wd2 = inotify_add_watch(fd2, "watched", IN_DELETE | IN_ONLYDIR);
	must(wd2 > 0, "inotify_add_watch nonblocking");
	dupfd = dup2(fd, 20);
	must(dupfd == 20, "dup2");
	cr_line("watch descriptors: %d %d (%d removed), %d", wd_dir, wd_log, wd_gone, wd2);
	print_events(fd, "setup");
	cr_ready();

	for (int k = 1; k <= 3; k++) {
		char name[64];
		char b[64];
		cr_gate(k);
		cr_line("round %d", k);
		snprintf(name, sizeof(name), "watched/f%d", k);
		FILE *f = fopen(name, "w");
		must(f != NULL, "create");
		fclose(f);
		f = fopen("watched/log", "a");
		must(f != NULL, "open log");
		fprintf(f, "round %d\n", k);
		fclose(f);
		must(unlink(name) == 0, "unlink");
		print_events(k % 2 ? fd : dupfd, "A");
		ssize_t n = read(fd2, b, sizeof(b));
		struct inotify_event *e = (struct inotify_event *)b;
		cr_line("B: %s", n > 0 && (e->mask & IN_DELETE) ? "one deletion" : "NOTHING");
		n = read(fd2, b, sizeof(b));
		cr_line("B then: %s", n < 0 && errno == EAGAIN ? "EAGAIN" : "SOMETHING");
	}
	cr_pass();
	return 0;
}
