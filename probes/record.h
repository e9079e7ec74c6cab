/* The wire record crwatch.bpf.c sends to user space: one fixed-size struct
 * per event, a common header (kind, tgid, ts_ns, tid, comm) then the fields.
 * probes/wire.py mirrors it and a test compares both layouts with the
 * compiled one. Kind and special numbers are those of probes/events.py. */
#ifndef CRWATCH_RECORD_H
#define CRWATCH_RECORD_H

#define COMM_LEN 16
#define PATH_LEN 128

enum record_kind {
    KIND_FD_OPENED = 1,
    KIND_FD_CLOSED = 2,
    KIND_FD_RANGE_CLOSED = 3,
    KIND_FD_DUPED = 4,
    KIND_PI_WAITING = 5,
    KIND_PI_ACQUIRED = 6,
    KIND_PI_NOT_ACQUIRED = 7,
    KIND_PI_RELEASED = 8,
    KIND_NONLINEAR = 9,
    KIND_UNMAPPED = 10,
    KIND_TRACED = 11,
    KIND_UNTRACED = 12,
    KIND_LOCKS_CHANGED = 13,
    KIND_NEW_PID_NS = 14,
    KIND_SHM_ATTACHED = 15,
    KIND_SHM_DETACHED = 16,
    KIND_FORKED = 17,
    KIND_EXECED = 18,
    KIND_EXITED = 19,
    KIND_TCP_CONNECTED = 20,
};

enum record_special {
    SPECIAL_NONE = 0,
    SPECIAL_DEVICE = 1,
    SPECIAL_PERF_EVENT = 2,
    SPECIAL_IO_URING = 3,
    SPECIAL_USERFAULTFD = 4,
    SPECIAL_BPF = 5,
    SPECIAL_FANOTIFY = 6,
    SPECIAL_OTHER = 7,
};

struct record {
    u32 kind;
    u32 tgid;
    u64 ts_ns;              /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
    u32 tid;
    char comm[COMM_LEN];
    s32 fd;
    u64 arg;                /* FD_OPENED of a device whose inode was read: its dev_t */
    u64 arg2;               /* ... and the file's flags << 32 | the inode's mode */
    u32 special;
    char path[PATH_LEN];    /* NUL-terminated; only FD_OPENED of a device fills it */
};

#endif
