/*
 * PI futex states driven step by step, for the tracking tests. Started by a
 * subject (tests/support/subjects.py) through exec: it reports on SUBJECT_READY_FD
 * once the state is set up, then waits for SIGUSR1, leaves the state, and
 * writes the CLOCK_MONOTONIC time the step began on ACK_FD. Raw futex calls,
 * not pthread mutexes, so that every lock and unlock is a syscall the probes see.
 *
 *   pi_futex hold      this thread holds a PI futex (FUTEX_LOCK_PI on a free word);
 *                      the step unlocks it (FUTEX_UNLOCK_PI)
 *   pi_futex contend   this thread holds it and a second thread waits in FUTEX_LOCK_PI;
 *                      the step unlocks: the waiter gets the lock and unlocks it at once
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint32_t word;
static volatile pid_t waiter_tid;

static long futex(int op)
{
	return syscall(SYS_futex, &word, op, 0, NULL, NULL, 0);
}

static void say(const char *variable, const char *note)
{
	int fd = atoi(getenv(variable));
	char line[64];
	int n = snprintf(line, sizeof(line), "%s\n", note);

	if (write(fd, line, n) != n)
		_exit(1);
	if (strcmp(variable, "SUBJECT_READY_FD") == 0)
		close(fd);
}

static void ready_with_tid(pid_t tid)
{
	char note[32];

	snprintf(note, sizeof(note), "%d", tid);
	say("SUBJECT_READY_FD", note);
}

/* Wait for SIGUSR1 (blocked since the start), and say when the step began. */
static long long step(void)
{
	sigset_t usr1;
	struct timespec now;
	int signal_number;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigwait(&usr1, &signal_number);
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec * 1000000000LL + now.tv_nsec;
}

static void ack(long long started)
{
	char note[32];

	snprintf(note, sizeof(note), "%lld", started);
	say("ACK_FD", note);
}

static void hold(void)
{
	for (;;)
		pause();
}

static void lock_or_die(void)
{
	if (futex(FUTEX_LOCK_PI) != 0) {
		perror("FUTEX_LOCK_PI");
		exit(1);
	}
}

static void *waiter(void *arg)
{
	(void)arg;
	waiter_tid = (pid_t)syscall(SYS_gettid);
	lock_or_die();
	futex(FUTEX_UNLOCK_PI);
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

int main(int argc, char **argv)
{
	const struct timespec tick = { 0, 1000000 };
	sigset_t usr1;
	pthread_t thread;
	long long started;

	if (argc != 2 || (strcmp(argv[1], "hold") != 0 && strcmp(argv[1], "contend") != 0)) {
		fprintf(stderr, "usage: %s hold | contend\n", argv[0]);
		return 2;
	}
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	lock_or_die();
	if (strcmp(argv[1], "hold") == 0) {
		ready_with_tid((pid_t)syscall(SYS_gettid));
		started = step();
		futex(FUTEX_UNLOCK_PI);
		ack(started);
		hold();
	}
	pthread_create(&thread, NULL, waiter, NULL);
	while (!waiter_tid || !in_futex(waiter_tid))
		nanosleep(&tick, NULL);
	ready_with_tid(waiter_tid);
	started = step();
	futex(FUTEX_UNLOCK_PI);
	pthread_join(thread, NULL);
	ack(started);
	hold();
}
