/* Loads for bench/tracker_bench.py, compiled at bench time (gcc -O2 -pthread).
 *
 *   syscall_loops getppid N          N getppid() calls (a syscall no probe looks at)
 *   syscall_loops futex_wake N       N uncontended FUTEX_WAKE on a private word (probed)
 *   syscall_loops open_close N PATH  N open()+close() of PATH (both probed)
 *       each prints: <nanoseconds of the thread's CPU time per call>
 *   syscall_loops workload ITERATIONS LOCK_EVERY DIR
 *       4 threads, each ITERATIONS times: some arithmetic and a 4 KiB pwrite and pread of
 *       its own file; every LOCK_EVERY-th time under a POSIX record lock, every 16th time
 *       after an open+close of that file; prints: <seconds> <lock calls>
 *   syscall_loops events RATE SECONDS [interleaved|reopen]
 *       holds /dev/kvm open (a tracked fd) and dup()s and close()s it, paced to RATE
 *       events per second (each dup+close is two events) for SECONDS; "interleaved"
 *       makes two copies before closing them (dup, dup, close, close), so that no
 *       copy is closed as the process's very next event; "reopen" holds nothing and
 *       open()s and close()s /dev/kvm instead (every event is a state change that the
 *       tracker must apply); prints: <events made> <seconds>
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define THREADS 4
#define BLOCK 4096
#define ROUNDS 20000    /* xorshift rounds per iteration: the "small computation" */
#define PACE_SLICE 256  /* dup+close pairs between clock reads */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The calling thread's CPU time: what the micro loops count, so that time spent
 * waiting for a CPU on a busy host is left out (the probes run on the caller's CPU
 * time, inside its syscalls). */
static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static double loop_getppid(long n)
{
    uint64_t start = cpu_ns();
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid);  /* not getppid(): no libc caching, a real syscall each time */
    return (double)(cpu_ns() - start) / n;
}

static double loop_futex_wake(long n)
{
    static uint32_t word;
    uint64_t start = cpu_ns();
    for (long i = 0; i < n; i++)
        syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    return (double)(cpu_ns() - start) / n;
}

static double loop_open_close(long n, const char *path)
{
    uint64_t start = cpu_ns();
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            die(path);
        close(fd);
    }
    return (double)(cpu_ns() - start) / n;
}

struct worker {
    pthread_t thread;
    long iterations;
    long lock_every;
    char path[4096];
    long lock_calls;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    char block[BLOCK], back[BLOCK];
    int fd = open(w->path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        die(w->path);
    uint64_t state = 88172645463325252ull ^ (uintptr_t)w;
    for (long i = 0; i < w->iterations; i++) {
        for (int k = 0; k < ROUNDS; k++) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
        }
        memset(block, (int)(state & 0xff), sizeof(block));
        off_t where = (off_t)(i % 64) * BLOCK;
        struct flock lock = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = where,
                             .l_len = BLOCK};
        bool locked = i % w->lock_every == 0;
        if (locked && fcntl(fd, F_SETLKW, &lock) < 0)
            die("lock");
        if (pwrite(fd, block, sizeof(block), where) != sizeof(block) ||
            pread(fd, back, sizeof(back), where) != sizeof(back))
            die("io");
        lock.l_type = F_UNLCK;
        if (locked && fcntl(fd, F_SETLK, &lock) < 0)
            die("unlock");
        w->lock_calls += locked ? 2 : 0;
        if (i % 16 == 0) {
            int again = open(w->path, O_RDONLY);
            if (again < 0)
                die("reopen");
            close(again);
        }
    }
    close(fd);
    return (void *)(uintptr_t)state;
}

static void workload(long iterations, long lock_every, const char *dir)
{
    struct worker workers[THREADS];
    memset(workers, 0, sizeof(workers));
    uint64_t start = now_ns();
    for (int t = 0; t < THREADS; t++) {
        workers[t].iterations = iterations;
        workers[t].lock_every = lock_every;
        snprintf(workers[t].path, sizeof(workers[t].path), "%s/worker-%d", dir, t);
        if (pthread_create(&workers[t].thread, NULL, work, &workers[t]))
            die("pthread_create");
    }
    long lock_calls = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(workers[t].thread, NULL);
        lock_calls += workers[t].lock_calls;
    }
    printf("%.6f %ld\n", (double)(now_ns() - start) / 1e9, lock_calls);
}

enum pattern { DUP_CLOSE, INTERLEAVED, REOPEN };

static void one_round(int fd, enum pattern pattern)
{
    if (pattern == REOPEN) {
        int opened = open("/dev/kvm", O_RDONLY);
        if (opened < 0)
            die("/dev/kvm");
        close(opened);
        return;
    }
    bool interleaved = pattern == INTERLEAVED;
    int copy = dup(fd), other = interleaved ? dup(fd) : -1;
    if (copy < 0 || (interleaved && other < 0))
        die("dup");
    close(copy);
    if (interleaved)
        close(other);
}

static void events(double rate, double seconds, enum pattern pattern)
{
    int fd = pattern == REOPEN ? -1 : open("/dev/kvm", O_RDONLY);
    if (fd < 0 && pattern != REOPEN)
        die("/dev/kvm");
    uint64_t start = now_ns(), end = start + (uint64_t)(seconds * 1e9);
    double pair_ns = 2e9 / rate;  /* a dup and a close: two events */
    long pairs = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end)
            break;
        if ((double)pairs * pair_ns > (double)(t - start))
            continue;  /* ahead of the pace: spin */
        for (int k = 0; k < PACE_SLICE; k++)
            one_round(fd, pattern);
        pairs += pattern == INTERLEAVED ? 2 * PACE_SLICE : PACE_SLICE;
    }
    printf("%ld %.6f\n", pairs * 2, (double)(now_ns() - start) / 1e9);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s getppid|futex_wake|open_close|workload|events ...\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    if (!strcmp(mode, "getppid"))
        printf("%.2f\n", loop_getppid(atol(argv[2])));
    else if (!strcmp(mode, "futex_wake"))
        printf("%.2f\n", loop_futex_wake(atol(argv[2])));
    else if (!strcmp(mode, "open_close") && argc == 4)
        printf("%.2f\n", loop_open_close(atol(argv[2]), argv[3]));
    else if (!strcmp(mode, "workload") && argc == 5 && atol(argv[3]) > 0)
        workload(atol(argv[2]), atol(argv[3]), argv[4]);
    else if (!strcmp(mode, "events") && argc == 4)
        events(atof(argv[2]), atof(argv[3]), DUP_CLOSE);
    else if (!strcmp(mode, "events") && argc == 5 && !strcmp(argv[4], "interleaved"))
        events(atof(argv[2]), atof(argv[3]), INTERLEAVED);
    else if (!strcmp(mode, "events") && argc == 5 && !strcmp(argv[4], "reopen"))
        events(atof(argv[2]), atof(argv[3]), REOPEN);
    else {
        fprintf(stderr, "%s: bad arguments\n", argv[0]);
        return 2;
    }
    return 0;
}
