/*
 * Task states Python cannot set up safely, for the task agreement tests.
 * Started by a subject (tests/support/subjects.py) through exec, it reports on the
 * subject's ready pipe (SUBJECT_READY_FD) once the state is set up, then waits.
 *
 *   task_states vfork        a parent blocked in vfork(); the child never execs
 *   task_states clone FLAGS  a child cloned with FLAGS (e.g. CLONE_VM) but no CLONE_THREAD
 *   task_states pi-futex     a thread blocked on a PTHREAD_PRIO_INHERIT mutex another holds
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void ready(const char *note)
{
	int fd = atoi(getenv("SUBJECT_READY_FD"));
	char line[64];
	int n = snprintf(line, sizeof(line), "%s\n", note);

	if (write(fd, line, n) != n)
		_exit(1);
	close(fd);
}

static void hold(void)
{
	for (;;)
		pause();
}

static void vfork_in_progress(void)
{
	char note[32];

	if (vfork() == 0) {
		/* Only async-safe calls here: the parent's memory is ours until exec. */
		snprintf(note, sizeof(note), "%d", getpid());
		ready(note);
		hold();
	}
	hold();
}

static char clone_stack[1 << 16];

static int clone_child(void *arg)
{
	(void)arg;
	hold();
	return 0;
}

static void clone_without_thread(int flags)
{
	char note[32];
	pid_t pid = clone(clone_child, clone_stack + sizeof(clone_stack), flags | SIGCHLD, NULL);

	if (pid < 0) {
		perror("clone");
		exit(1);
	}
	snprintf(note, sizeof(note), "%d", pid);
	ready(note);
	hold();
}

static pthread_mutex_t pi_lock;
static volatile pid_t waiter_tid;

static void *pi_waiter(void *arg)
{
	(void)arg;
	waiter_tid = (pid_t)syscall(SYS_gettid);
	pthread_mutex_lock(&pi_lock);
	return NULL;
}

/* Is the thread inside futex() now? /proc/self/task/TID/syscall starts with the number. */
static int in_futex(pid_t tid)
{
	char path[64], text[32] = "";
	FILE *file;

	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", tid);
	file = fopen(path, "r");
	if (!file)
		return 0;
	if (!fgets(text, sizeof(text), file))
		text[0] = 0;
	fclose(file);
	return atoi(text) == SYS_futex;
}

static void pi_futex_waiter(void)
{
	const struct timespec tick = { 0, 1000000 };
	pthread_mutexattr_t attr;
	pthread_t waiter;
	char note[32];

	pthread_mutexattr_init(&attr);
	pthread_mutexattr_setprotocol(&attr, PTHREAD_PRIO_INHERIT);
	pthread_mutex_init(&pi_lock, &attr);
	pthread_mutex_lock(&pi_lock);
	pthread_create(&waiter, NULL, pi_waiter, NULL);
	while (!waiter_tid || !in_futex(waiter_tid))
		nanosleep(&tick, NULL);
	snprintf(note, sizeof(note), "%d", waiter_tid);
	ready(note);
	hold();
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "vfork") == 0)
		vfork_in_progress();
	else if (argc >= 3 && strcmp(argv[1], "clone") == 0)
		clone_without_thread((int)strtol(argv[2], NULL, 0));
	else if (argc >= 2 && strcmp(argv[1], "pi-futex") == 0)
		pi_futex_waiter();
	fprintf(stderr, "usage: %s vfork | clone FLAGS | pi-futex\n", argv[0]);
	return 2;
}
