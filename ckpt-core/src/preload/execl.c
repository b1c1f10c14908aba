/* The variadic exec wrappers: execl, execlp, execle.
 *
 * glibc implements these by calling its internal execve, which does not go
 * through libckpt's execve wrapper (ckpt-core/src/preload/exec.rs), so a
 * child exec'ing through them would neither keep LD_PRELOAD in a rebuilt
 * environment nor block the checkpoint signal across the exec (a checkpoint
 * arriving at that instant would kill it). Stable Rust cannot define
 * C-variadic functions: the exported symbols are naked Rust functions that
 * jump here with the caller's registers and stack untouched; these collect
 * the arguments into an array on the stack (no allocation: they may run
 * between vfork and exec) and call the array forms, which are libckpt's
 * wrappers. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>

int execve(const char *path, char *const argv[], char *const envp[]);
int execvpe(const char *file, char *const argv[], char *const envp[]);
extern char **environ;

#define HIDDEN __attribute__((visibility("hidden")))
/* Far more than the kernel accepts (MAX_ARG_STRINGS is 0x7fffffff, but the
 * whole argv must fit in the stack limit): refuse instead of overflowing ours. */
#define MAX_ARGS (1u << 20)

/* Count the arguments after `arg` up to the terminating NULL. */
static size_t count(va_list ap)
{
	size_t n = 1;
	while (va_arg(ap, const char *) != NULL && n < MAX_ARGS)
		n++;
	return n;
}

/* argv[0] = arg, then the n-1 arguments that follow and the NULL; *ap is left
 * after the NULL (where execle's envp is). */
static void fill(const char **argv, const char *arg, size_t n, va_list *ap)
{
	argv[0] = arg;
	for (size_t i = 1; i <= n; i++)
		argv[i] = va_arg(*ap, const char *);
}

/* Declares `argv` (on the stack) holding the arguments from `arg` to the
 * NULL, with `ap` open after the NULL; fails with E2BIG when there are too
 * many. The caller ends `ap`. */
#define GATHER(arg, ap, argv)                 \
	va_list ap;                           \
	va_start(ap, arg);                    \
	size_t argc_ = count(ap);             \
	va_end(ap);                           \
	if (argc_ >= MAX_ARGS) {              \
		errno = E2BIG;                \
		return -1;                    \
	}                                     \
	const char *argv[argc_ + 1];          \
	va_start(ap, arg);                    \
	fill(argv, arg, argc_, &ap)

HIDDEN int ckpt_execl(const char *path, const char *arg, ...)
{
	GATHER(arg, ap, argv);
	va_end(ap);
	return execve(path, (char *const *)argv, environ);
}

HIDDEN int ckpt_execlp(const char *file, const char *arg, ...)
{
	GATHER(arg, ap, argv);
	va_end(ap);
	return execvpe(file, (char *const *)argv, environ);
}

HIDDEN int ckpt_execle(const char *path, const char *arg, ...)
{
	GATHER(arg, ap, argv);
	char *const *envp = va_arg(ap, char *const *);
	va_end(ap);
	return execve(path, (char *const *)argv, envp);
}
