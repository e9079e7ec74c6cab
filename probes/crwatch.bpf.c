/* crwatch kernel side: syscall and sched tracepoints that say when a task
 * enters or leaves a state a checkpointer cannot handle. The probes are
 * filters: per-task maps decide in the kernel which syscalls matter, and only
 * those leave as records (record.h); the tracker decides what they mean.
 *
 * Configuration (cflags, set by probes/loader.py):
 *   CRWATCH_TGID     the crwatch process: never reported (its own reads would feed back)
 *   RINGBUF_PAGES    ring buffer size in pages, a power of two
 *   MAX_TRACKED_FDS  capacity of the tracked-fd map
 *   MAX_TASKS        capacity of each per-task map
 *   PID_LIMIT        the kernel's highest possible pid + 1 (PID_MAX_LIMIT), a multiple of 64
 *   PAGE_BYTES       the page size
 *   CLOSE_RANGE_SPAN how many fds of a close_range the kernel side untracks itself
 *   <STRUCT>_<FIELD>_OFFSET  where fd_device() finds a field in this kernel's structs
 *                    (probes/kernel_layout.py, from its BTF); without them every
 *                    device open is reported
 *   HAVE_<name>      the tracepoints of that block exist: compile its probes
 *   HAVE_GROUP_DEAD  sched_process_exit has the group_dead field
 *
 * Invariants: nothing goes into a map unless the record that reports it was
 * reserved (a lost record leaves the maps as they were; the tracker re-audits
 * after a loss). Every exit probe that finds a `pending` entry deletes the
 * thread's entry and its bit (forget_pending).
 */
#include "record.h"

/* Slots of the `lost` array. */
#define LOST_RINGBUF 0      /* ringbuf_reserve failed: a record is gone */
#define LOST_MAP_FULL 1     /* a map insert failed: later events of that state will be missed */
#define LOST_SLOTS 2

/* Linux ABI numbers, spelled out so that no uapi header is needed. */
#define ERR_EXIST 17
#define ERR_INPROGRESS 115
#define MAX_ERRNO 4095

#define FAMILY_UNIX 1
#define FAMILY_INET 2
#define FAMILY_INET6 10
#define FAMILY_NETLINK 16
#define FAMILY_PACKET 17
#define SOCK_TYPE_MASK 0xf
#define SOCK_TYPE_DCCP 6
#define PROTO_SCTP 132
#define PROTO_MPTCP 262

#define CLONE_FLAG_THREAD 0x00010000ULL
#define CLONE_FLAG_NEWPID 0x20000000ULL
#define CLOSE_RANGE_FLAG_UNSHARE 2
#define CLOSE_RANGE_FLAG_CLOEXEC 4
#define OPEN_TREE_FLAG_CLONE 1

#define FCNTL_DUPFD 0
#define FCNTL_DUPFD_CLOEXEC 1030
#define LOCK_TYPE_UNLOCK 2      /* F_UNLCK */

#define OPEN_FLAG_PATH 010000000    /* O_PATH */
#define MODE_TYPE_MASK 0170000
#define MODE_CHR 0020000
#define MODE_BLK 0060000
#define KERNEL_MINOR_BITS 20        /* the kernel's dev_t: major << 20 | minor */
#define DEVICE_MAJORS 4096
#define MAX_QUIET_DEVICES 1024

#define FUTEX_CMD_MASK 127
#define FUTEX_CMD_LOCK_PI 6
#define FUTEX_CMD_UNLOCK_PI 7
#define FUTEX_CMD_TRYLOCK_PI 8
#define FUTEX_CMD_WAIT_REQUEUE_PI 11
#define FUTEX_CMD_LOCK_PI2 13

#define PTRACE_REQ_TRACEME 0
#define PTRACE_REQ_ATTACH 16
#define PTRACE_REQ_DETACH 17
#define PTRACE_REQ_SEIZE 0x4206

/* bpf() commands that return a new fd. */
#define BPF_FD_COMMANDS ((1ULL << 0) /* MAP_CREATE */ | (1ULL << 5) /* PROG_LOAD */ |    \
    (1ULL << 7) /* OBJ_GET */ | (1ULL << 13) /* PROG_GET_FD_BY_ID */ |                    \
    (1ULL << 14) /* MAP_GET_FD_BY_ID */ | (1ULL << 17) /* RAW_TRACEPOINT_OPEN */ |        \
    (1ULL << 18) /* BTF_LOAD */ | (1ULL << 19) /* BTF_GET_FD_BY_ID */ |                   \
    (1ULL << 28) /* LINK_CREATE */ | (1ULL << 30) /* LINK_GET_FD_BY_ID */ |               \
    (1ULL << 32) /* ENABLE_STATS */ | (1ULL << 33) /* ITER_CREATE */ |                    \
    (1ULL << 36) /* TOKEN_CREATE */)

/* Which enter probe left a `pending` entry. */
enum pending_op {
    OP_OPEN = 1, OP_FD_MAKER, OP_DUP, OP_DUP2, OP_PI_LOCK, OP_PI_TRYLOCK, OP_REMAP,
    OP_PTRACE, OP_CONNECT, OP_ACCEPT, OP_UNSHARE, OP_SHMAT, OP_SHMDT,
};

/* Bits of pending.b for dup2/dup3. */
#define DUP2_OLD_TRACKED 1
#define DUP2_NEW_TRACKED 2

struct fd_key {
    u32 tgid;
    s32 fd;
};

/* What an enter probe hands to the exit probe of the same thread. */
struct pending {
    u32 op;
    s32 fd;
    u64 a;
    u64 b;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_ARRAY(lost, u64, LOST_SLOTS);
/* (tgid, fd) -> when it was tracked (CLOCK_MONOTONIC): the tracker untracks an fd
 * only if nothing tracked it again since the /proc read that judged it. */
BPF_HASH(tracked_fds, struct fd_key, u64, MAX_TRACKED_FDS);
BPF_HASH(watched, u32, u8, MAX_TASKS);          /* pids (tgids, or tids of tracees) with any state */
BPF_HASH(lock_holders, u32, u8, MAX_TASKS);     /* tgids that took a file lock */
BPF_HASH(locks_reported, u32, u8, MAX_TASKS);   /* tgids whose lock change the tracker has not read */
BPF_HASH(memory_marked, u32, u8, MAX_TASKS);    /* tgids with nonlinear or shm mappings */
BPF_HASH(pi_held, u32, u32, MAX_TASKS);         /* tid -> PI futexes it holds */
BPF_HASH(pending, u32, struct pending, MAX_TASKS);
/* The threads with an entry in `pending`, a bit each, set and cleared by the thread
 * itself (atomically: a word holds 64 threads' bits): the exit probe of a call that
 * left nothing pending (most futex, dup and fcntl calls) costs an array lookup, not
 * a hash lookup. */
BPF_ARRAY(pending_threads, u64, PID_LIMIT / 64);
/* The character devices whose opens stay in the kernel (tracker.checks.devices.QUIET_DEVICES,
 * filled by the loader before anything is reported): every minor of a major set in
 * quiet_majors, and the kernel dev_t numbers in quiet_devices. */
BPF_ARRAY(quiet_majors, u8, DEVICE_MAJORS);
BPF_HASH(quiet_devices, u32, u8, MAX_QUIET_DEVICES);
/* The tgids that may hold tracked fds, a bit each: a close (or dup) by any other
 * process is passed over without a look in tracked_fds. Two bitmaps, each with one
 * writer: the kernel side sets its bits atomically and clears them when the process
 * dies, the loader sets and clears its own (a word written by both would lose one's
 * bit to the other's read-modify-write). A set bit with nothing tracked costs a
 * lookup, never a missed close. */
BPF_ARRAY(kernel_fd_holders, u64, PID_LIMIT / 64);
BPF_ARRAY(user_fd_holders, u64, PID_LIMIT / 64);

/* ------------------------------------------------------------ helpers */

static __always_inline u32 current_tgid(void)
{
    return bpf_get_current_pid_tgid() >> 32;
}

static __always_inline u32 current_tid(void)
{
    return (u32)bpf_get_current_pid_tgid();
}

static __always_inline bool ignored(void)
{
    return current_tgid() == CRWATCH_TGID;
}

static __always_inline void count_insert(long ret)
{
    if (ret < 0 && ret != -ERR_EXIST)
        lost.atomic_increment(LOST_MAP_FULL);
}

static __always_inline struct record *reserve(u32 kind)
{
    struct record *r = events.ringbuf_reserve(sizeof(struct record));
    if (!r) {
        lost.atomic_increment(LOST_RINGBUF);
        return 0;
    }
    u64 id = bpf_get_current_pid_tgid();
    r->kind = kind;
    r->tgid = id >> 32;
    r->tid = (u32)id;
    r->ts_ns = bpf_ktime_get_ns();
    bpf_get_current_comm(r->comm, sizeof(r->comm));
    r->fd = -1;
    r->arg = 0;
    r->arg2 = 0;
    r->special = SPECIAL_NONE;
    r->path[0] = 0;
    return r;
}

static __always_inline bool emit(u32 kind, s32 fd, u64 arg, u64 arg2)
{
    struct record *r = reserve(kind);
    if (!r)
        return false;
    r->fd = fd;
    r->arg = arg;
    r->arg2 = arg2;
    events.ringbuf_submit(r, 0);
    return true;
}

static __always_inline void watch(u32 pid)
{
    u8 one = 1;
    count_insert(watched.insert(&pid, &one));
}

static __always_inline void mark_lock_holder(u32 tgid)
{
    u8 one = 1;
    count_insert(lock_holders.insert(&tgid, &one));
    watch(tgid);
}

static __always_inline void mark_memory(u32 tgid)
{
    u8 one = 1;
    count_insert(memory_marked.insert(&tgid, &one));
    watch(tgid);
}

static __always_inline bool may_hold_tracked_fds(u32 tgid)
{
    u32 word = tgid / 64;
    u64 bit = 1ULL << (tgid % 64);
    u64 *by_kernel = kernel_fd_holders.lookup(&word);
    u64 *by_user = user_fd_holders.lookup(&word);
    return (by_kernel && (*by_kernel & bit)) || (by_user && (*by_user & bit));
}

/* Set before the fd goes into tracked_fds, so that no close can miss it. */
static __always_inline void mark_fd_holder(u32 tgid)
{
    u32 word = tgid / 64;
    u64 *bits = kernel_fd_holders.lookup(&word);
    if (bits)
        __sync_fetch_and_or(bits, 1ULL << (tgid % 64));
}

static __always_inline void unmark_fd_holder(u32 tgid)
{
    u32 word = tgid / 64;
    u64 *bits = kernel_fd_holders.lookup(&word);
    if (bits)
        __sync_fetch_and_and(bits, ~(1ULL << (tgid % 64)));
}

static __always_inline void track_fd(u32 tgid, s32 fd)
{
    struct fd_key key = {.tgid = tgid, .fd = fd};
    u64 now = bpf_ktime_get_ns();
    mark_fd_holder(tgid);
    count_insert(tracked_fds.update(&key, &now));
    watch(tgid);
}

/* A record about a new fd that is tracked from now on: put in the map before
 * the record is submitted, so that the tracker never untracks it first. */
static __always_inline void emit_tracked(u32 kind, s32 fd, u64 arg)
{
    struct record *r = reserve(kind);
    if (!r)
        return;
    r->fd = fd;
    r->arg = arg;
    track_fd(r->tgid, fd);
    events.ringbuf_submit(r, 0);
}

static __always_inline bool is_tracked(u32 tgid, s32 fd)
{
    struct fd_key key = {.tgid = tgid, .fd = fd};
    return may_hold_tracked_fds(tgid) && tracked_fds.lookup(&key) != 0;
}

static __always_inline void untrack_fd(u32 tgid, s32 fd)
{
    struct fd_key key = {.tgid = tgid, .fd = fd};
    tracked_fds.delete(&key);
}

static __always_inline void remember(struct pending *p)
{
    u32 tid = current_tid();
    u32 word = tid / 64;
    u64 *bits = pending_threads.lookup(&word);
    if (bits)
        __sync_fetch_and_or(bits, 1ULL << (tid % 64));
    count_insert(pending.update(&tid, p));
}

static __always_inline void remember_op(u32 op, s32 fd, u64 a, u64 b)
{
    struct pending p = {.op = op, .fd = fd, .a = a, .b = b};
    remember(&p);
}

static __always_inline void forget_pending(void)
{
    u32 tid = current_tid();
    u32 word = tid / 64;
    pending.delete(&tid);
    u64 *bits = pending_threads.lookup(&word);
    if (bits)
        __sync_fetch_and_and(bits, ~(1ULL << (tid % 64)));
}

/* The callers test for NULL and then check p->op: the verifier loses a map
 * value pointer that a helper returns as "p if p->op matches, else 0". */
static __always_inline struct pending *pending_here(void)
{
    u32 tid = current_tid();
    u32 word = tid / 64;
    u64 *bits = pending_threads.lookup(&word);
    if (!bits || !(*bits & (1ULL << (tid % 64))))
        return 0;
    return pending.lookup(&tid);
}

/* A new fd that may be special: report it (with the path of a device open, read from
 * the caller's memory, and what `arg` and `arg2` say of it) and track it. */
static __always_inline void report_fd_opened_with(long ret, u32 special, const char *path,
                                                  u64 arg, u64 arg2)
{
    if (ret < 0)
        return;
    struct record *r = reserve(KIND_FD_OPENED);
    if (!r)
        return;
    r->fd = ret;
    r->special = special;
    r->arg = arg;
    r->arg2 = arg2;
    if (path)
        bpf_probe_read_user_str(r->path, sizeof(r->path), path);
    track_fd(r->tgid, ret);
    events.ringbuf_submit(r, 0);
}

static __always_inline void report_fd_opened(long ret, u32 special, const char *path)
{
    report_fd_opened_with(ret, special, path, 0, 0);
}

static __always_inline void report_new_fd(long ret, u32 special)
{
    if (!ignored())
        report_fd_opened(ret, special, 0);
}

/* An exit probe for a syscall whose enter probe decided it makes a special fd. */
static __always_inline void report_pending_new_fd(long ret, u32 special)
{
    struct pending *p = pending_here();
    if (!p)
        return;
    if (p->op == OP_FD_MAKER)
        report_fd_opened(ret, special, 0);
    forget_pending();
}

/* One report until the tracker has read the process's locks again (it clears
 * the flag before it reads): a process that locks thousands of times a second
 * costs the tracker one read per interval, not one per call. */
static __always_inline void report_locks_changed(void)
{
    u32 tgid = current_tgid();
    u8 one = 1;
    if (locks_reported.lookup(&tgid))
        return;
    if (emit(KIND_LOCKS_CHANGED, -1, 0, 0)) {
        count_insert(locks_reported.update(&tgid, &one));
        mark_lock_holder(tgid);
    }
}

static __always_inline bool is_lock_holder(u32 tgid)
{
    return lock_holders.lookup(&tgid) != 0;
}

/* ------------------------------------------------------------ device opens */

static __always_inline bool under_dev(const char *filename)
{
    char head[5];
    if (bpf_probe_read_user(head, sizeof(head), filename) < 0)
        return false;
    return head[0] == '/' && head[1] == 'd' && head[2] == 'e' && head[3] == 'v' && head[4] == '/';
}

#ifdef TASK_FILES_OFFSET
/* A device open's new fd is told apart at exit by its inode, read through this kernel's
 * own layout (the offsets come from its BTF): a block device, or a character device
 * that is not quiet or is opened with O_PATH, is reported. Every open pays for that
 * look, so it is kept short: the task's fd table is reached by plain loads through
 * the BTF task pointer (the verifier checks each offset against the kernel's own
 * types), and what lies beyond it by three copies (the file pointer, the file's
 * flags and inode, the inode's mode and rdev). The enter probe only leaves the path
 * pointer in a per-CPU slot, for the record of the rare open that is reported; the
 * slot is the caller's own only if it ran without a context switch since (else it
 * may have moved, and another task may have used the slot), else the record goes
 * without its path. */
struct open_path {
    u64 task;           /* the caller's task_struct */
    u64 switches;       /* its context switches at enter */
    u64 filename;       /* the path in the caller's memory */
};
BPF_PERCPU_ARRAY(open_paths, struct open_path, 1);

/* Two fields of one kernel struct, copied at once when they sit close together. */
#define SPAN_LOW(a, b) ((a) < (b) ? (a) : (b))
#define SPAN_END(a, a_size, b, b_size) ((a) + (a_size) > (b) + (b_size) ? (a) + (a_size) : (b) + (b_size))
#define FILE_LOW SPAN_LOW(FILE_FLAGS_OFFSET, FILE_INODE_OFFSET)
#define FILE_SPAN (SPAN_END(FILE_FLAGS_OFFSET, 4, FILE_INODE_OFFSET, 8) - FILE_LOW)
#define INODE_LOW SPAN_LOW(INODE_MODE_OFFSET, INODE_RDEV_OFFSET)
#define INODE_SPAN (SPAN_END(INODE_MODE_OFFSET, 2, INODE_RDEV_OFFSET, 4) - INODE_LOW)
#define MAX_SPAN 128

static __always_inline char *current_task(void)
{
    return (char *)bpf_get_current_task_btf();
}

static __always_inline u64 context_switches(char *task)
{
    return *(unsigned long *)(task + TASK_NVCSW_OFFSET) +
           *(unsigned long *)(task + TASK_NIVCSW_OFFSET);
}

static __always_inline void remember_device_open(const char *filename)
{
    u32 zero = 0;
    struct open_path *slot = open_paths.lookup(&zero);
    if (!slot)
        return;
    char *task = current_task();
    slot->task = (u64)task;
    slot->switches = context_switches(task);
    slot->filename = (u64)filename;
}

/* The path the caller's enter probe left, or 0 when the slot is not the caller's. */
static __always_inline const char *open_path_here(char *task)
{
    u32 zero = 0;
    struct open_path *slot = open_paths.lookup(&zero);
    if (!slot || slot->task != (u64)task || slot->switches != context_switches(task))
        return 0;
    return (const char *)slot->filename;
}

/* Copy `size` bytes at `from` + `offset` into `to` (size is a compile-time constant). */
#define COPY_FIELDS(to, from, offset, size)                                                 \
    (bpf_probe_read_kernel((to), (size), (char *)(from) + (offset)) == 0)

/* The file and inode fields of the caller's fd; false when a read fails. */
static __always_inline bool fd_device(char *task, s32 fd, u32 *flags, u16 *mode, u32 *rdev)
{
    char *files = *(char **)(task + TASK_FILES_OFFSET);
    if (!files)
        return false;
    char *fdt = *(char **)(files + FILES_FDT_OFFSET);
    if (!fdt || (u32)fd >= *(u32 *)(fdt + FDTABLE_MAX_FDS_OFFSET))
        return false;
    u64 fds = *(u64 *)(fdt + FDTABLE_FD_OFFSET);   /* struct file **: a number to the verifier */
    char *file = 0, *inode = 0;
    if (!fds || !COPY_FIELDS(&file, fds, (u64)(u32)fd * sizeof(void *), sizeof(file)) || !file)
        return false;
#if FILE_SPAN <= MAX_SPAN
    char file_fields[FILE_SPAN];
    if (!COPY_FIELDS(file_fields, file, FILE_LOW, sizeof(file_fields)))
        return false;
    *flags = *(u32 *)(file_fields + FILE_FLAGS_OFFSET - FILE_LOW);
    inode = *(char **)(file_fields + FILE_INODE_OFFSET - FILE_LOW);
#else
    if (!COPY_FIELDS(flags, file, FILE_FLAGS_OFFSET, sizeof(*flags)) ||
        !COPY_FIELDS(&inode, file, FILE_INODE_OFFSET, sizeof(inode)))
        return false;
#endif
    if (!inode)
        return false;
#if INODE_SPAN <= MAX_SPAN
    char inode_fields[INODE_SPAN];
    if (!COPY_FIELDS(inode_fields, inode, INODE_LOW, sizeof(inode_fields)))
        return false;
    *mode = *(u16 *)(inode_fields + INODE_MODE_OFFSET - INODE_LOW);
    *rdev = *(u32 *)(inode_fields + INODE_RDEV_OFFSET - INODE_LOW);
    return true;
#else
    return COPY_FIELDS(mode, inode, INODE_MODE_OFFSET, sizeof(*mode)) &&
           COPY_FIELDS(rdev, inode, INODE_RDEV_OFFSET, sizeof(*rdev));
#endif
}

static __always_inline bool quiet_device(u32 rdev)
{
    u32 major = rdev >> KERNEL_MINOR_BITS;
    u8 *whole = quiet_majors.lookup(&major);
    return (whole && *whole) || quiet_devices.lookup(&rdev);
}

static __always_inline void report_device_open(long ret)
{
    if (ret < 0)
        return;
    char *task = current_task();
    u32 flags = 0, rdev = 0;
    u16 mode = 0;
    if (fd_device(task, ret, &flags, &mode, &rdev)) {
        u32 type = mode & MODE_TYPE_MASK;
        if (type != MODE_BLK &&
            (type != MODE_CHR || (!(flags & OPEN_FLAG_PATH) && quiet_device(rdev))))
            return;
        /* The inode read here goes with the record, so that the tracker need not read /proc. */
        if (!ignored())
            report_fd_opened_with(ret, SPECIAL_DEVICE, open_path_here(task), rdev,
                                  (u64)flags << 32 | mode);
        return;
    }
    /* unreadable: judged by its path, as without the layout */
    const char *path = open_path_here(task);
    if (path && under_dev(path) && !ignored())
        report_fd_opened(ret, SPECIAL_DEVICE, path);
}
#else
/* Without the layout: every open of a path under /dev/ is reported, its path handed
 * from enter to exit in `pending`. */
static __always_inline void remember_device_open(const char *filename)
{
    if (!ignored() && under_dev(filename))
        remember_op(OP_OPEN, -1, (u64)filename, 0);
}

static __always_inline void report_device_open(long ret)
{
    struct pending *p = pending_here();
    if (!p)
        return;
    u32 op = p->op;
    const char *path = (const char *)p->a;
    forget_pending();
    if (op == OP_OPEN && ret >= 0)
        report_fd_opened(ret, SPECIAL_DEVICE, path);
}
#endif

#ifdef HAVE_open
TRACEPOINT_PROBE(syscalls, sys_enter_open) { remember_device_open(args->filename); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_open) { report_device_open(args->ret); return 0; }
#endif
#ifdef HAVE_openat
TRACEPOINT_PROBE(syscalls, sys_enter_openat) { remember_device_open(args->filename); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_openat) { report_device_open(args->ret); return 0; }
#endif
#ifdef HAVE_openat2
TRACEPOINT_PROBE(syscalls, sys_enter_openat2) { remember_device_open(args->filename); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { report_device_open(args->ret); return 0; }
#endif

/* ------------------------------------------------------------ other special fds */

#ifdef HAVE_perf_event_open
TRACEPOINT_PROBE(syscalls, sys_exit_perf_event_open)
{
    report_new_fd(args->ret, SPECIAL_PERF_EVENT);
    return 0;
}
#endif
#ifdef HAVE_io_uring_setup
TRACEPOINT_PROBE(syscalls, sys_exit_io_uring_setup)
{
    report_new_fd(args->ret, SPECIAL_IO_URING);
    return 0;
}
#endif
#ifdef HAVE_userfaultfd
TRACEPOINT_PROBE(syscalls, sys_exit_userfaultfd)
{
    report_new_fd(args->ret, SPECIAL_USERFAULTFD);
    return 0;
}
#endif
#ifdef HAVE_fanotify_init
TRACEPOINT_PROBE(syscalls, sys_exit_fanotify_init)
{
    report_new_fd(args->ret, SPECIAL_FANOTIFY);
    return 0;
}
#endif
/* Anonymous-inode fds CRIU does not dump, or pidfds it dumps only inside the tree. */
#ifdef HAVE_landlock_create_ruleset
TRACEPOINT_PROBE(syscalls, sys_exit_landlock_create_ruleset)
{
    report_new_fd(args->ret, SPECIAL_OTHER);
    return 0;
}
#endif
#ifdef HAVE_fsopen
TRACEPOINT_PROBE(syscalls, sys_exit_fsopen) { report_new_fd(args->ret, SPECIAL_OTHER); return 0; }
#endif
#ifdef HAVE_fspick
TRACEPOINT_PROBE(syscalls, sys_exit_fspick) { report_new_fd(args->ret, SPECIAL_OTHER); return 0; }
#endif
#ifdef HAVE_fsmount
TRACEPOINT_PROBE(syscalls, sys_exit_fsmount) { report_new_fd(args->ret, SPECIAL_OTHER); return 0; }
#endif
#ifdef HAVE_memfd_secret
TRACEPOINT_PROBE(syscalls, sys_exit_memfd_secret)
{
    report_new_fd(args->ret, SPECIAL_OTHER);
    return 0;
}
#endif
#ifdef HAVE_pidfd_open
TRACEPOINT_PROBE(syscalls, sys_exit_pidfd_open)
{
    report_new_fd(args->ret, SPECIAL_OTHER);
    return 0;
}
#endif
#ifdef HAVE_pidfd_getfd
TRACEPOINT_PROBE(syscalls, sys_exit_pidfd_getfd)
{
    report_new_fd(args->ret, SPECIAL_OTHER);
    return 0;
}
#endif

#ifdef HAVE_open_tree
/* Only a detached copy of a mount (OPEN_TREE_CLONE) is special. */
TRACEPOINT_PROBE(syscalls, sys_enter_open_tree)
{
    if (!ignored() && (args->flags & OPEN_TREE_FLAG_CLONE))
        remember_op(OP_FD_MAKER, -1, 0, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_open_tree)
{
    report_pending_new_fd(args->ret, SPECIAL_OTHER);
    return 0;
}
#endif

#ifdef HAVE_bpf
TRACEPOINT_PROBE(syscalls, sys_enter_bpf)
{
    u32 cmd = args->cmd;
    if (cmd < 64 && (BPF_FD_COMMANDS >> cmd) & 1 && !ignored())
        remember_op(OP_FD_MAKER, -1, cmd, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_bpf)
{
    report_pending_new_fd(args->ret, SPECIAL_BPF);
    return 0;
}
#endif

#ifdef HAVE_socket
/* CRIU dumps unix, inet, netlink and packet sockets; inet only for TCP, UDP, ICMP and raw. */
static __always_inline bool unsupported_socket(int family, int type, int protocol)
{
    if (family == FAMILY_INET || family == FAMILY_INET6)
        return protocol == PROTO_SCTP || protocol == PROTO_MPTCP ||
               (type & SOCK_TYPE_MASK) == SOCK_TYPE_DCCP;
    return family != FAMILY_UNIX && family != FAMILY_NETLINK && family != FAMILY_PACKET;
}

TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{
    if (unsupported_socket(args->family, args->type, args->protocol) && !ignored())
        remember_op(OP_FD_MAKER, -1, args->family, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_socket)
{
    report_pending_new_fd(args->ret, SPECIAL_OTHER);
    return 0;
}
#endif

/* ------------------------------------------------------------ close and dup */

#ifdef HAVE_close
/* Untracked at enter, while the fd still holds its number: once the close has
 * run, another thread may get the same number and track it. (The locks a
 * close drops are reported by the filelock probes.) */
TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    u32 tgid = current_tgid();
    s32 fd = args->fd;
    if (is_tracked(tgid, fd) && emit(KIND_FD_CLOSED, fd, 0, 0))
        untrack_fd(tgid, fd);
    return 0;
}
#endif

#ifdef HAVE_close_range
/* Reported and untracked at enter, like close. With valid flags and first <=
 * last it cannot fail (but for memory with CLOSE_RANGE_UNSHARE). The first
 * CLOSE_RANGE_SPAN numbers are untracked here; the loader untracks tracked
 * fds above them, which are rare. */
TRACEPOINT_PROBE(syscalls, sys_enter_close_range)
{
    u32 tgid = current_tgid();
    u32 first = args->fd, last = args->max_fd, flags = args->flags;
    if (flags & ~(CLOSE_RANGE_FLAG_UNSHARE | CLOSE_RANGE_FLAG_CLOEXEC) || first > last ||
        (flags & CLOSE_RANGE_FLAG_CLOEXEC) || !watched.lookup(&tgid))
        return 0;
    if (!emit(KIND_FD_RANGE_CLOSED, -1, first, last))
        return 0;
    for (u32 i = 0; i < CLOSE_RANGE_SPAN; i++) {
        if (first + i > last || first + i < first)
            break;
        untrack_fd(tgid, first + i);
    }
    return 0;
}
#endif

static __always_inline void remember_dup(s32 oldfd)
{
    if (is_tracked(current_tgid(), oldfd))
        remember_op(OP_DUP, oldfd, 0, 0);
}

static __always_inline void report_duped(s32 oldfd, long newfd)
{
    emit_tracked(KIND_FD_DUPED, newfd, oldfd);
}

static __always_inline void report_dup(long ret)
{
    struct pending *p = pending_here();
    if (!p)
        return;
    if (p->op == OP_DUP && ret >= 0)
        report_duped(p->fd, ret);
    forget_pending();
}

#ifdef HAVE_dup
TRACEPOINT_PROBE(syscalls, sys_enter_dup) { remember_dup(args->fildes); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_dup) { report_dup(args->ret); return 0; }
#endif

/* dup2/dup3 onto an open newfd closes it first (its locks: see the filelock probes). */
static __always_inline void remember_dup2(s32 oldfd, s32 newfd)
{
    u32 tgid = current_tgid();
    if (oldfd == newfd)
        return;
    u64 bits = 0;
    if (is_tracked(tgid, oldfd))
        bits |= DUP2_OLD_TRACKED;
    if (is_tracked(tgid, newfd))
        bits |= DUP2_NEW_TRACKED;
    if (bits)
        remember_op(OP_DUP2, oldfd, newfd, bits);
}

static __always_inline void report_dup2(long ret)
{
    struct pending *p = pending_here();
    if (!p)
        return;
    if (p->op == OP_DUP2 && ret >= 0) {
        u32 tgid = current_tgid();
        s32 oldfd = p->fd;
        u64 bits = p->b;
        if ((bits & DUP2_NEW_TRACKED) && emit(KIND_FD_CLOSED, ret, 0, 0))
            untrack_fd(tgid, ret);
        if (bits & DUP2_OLD_TRACKED)
            report_duped(oldfd, ret);
    }
    forget_pending();
}

#ifdef HAVE_dup2
TRACEPOINT_PROBE(syscalls, sys_enter_dup2) { remember_dup2(args->oldfd, args->newfd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_dup2) { report_dup2(args->ret); return 0; }
#endif
#ifdef HAVE_dup3
TRACEPOINT_PROBE(syscalls, sys_enter_dup3) { remember_dup2(args->oldfd, args->newfd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_dup3) { report_dup2(args->ret); return 0; }
#endif

#ifdef HAVE_fcntl
TRACEPOINT_PROBE(syscalls, sys_enter_fcntl)
{
    u32 cmd = args->cmd;
    if (cmd == FCNTL_DUPFD || cmd == FCNTL_DUPFD_CLOEXEC)
        remember_dup(args->fd);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_fcntl) { report_dup(args->ret); return 0; }
#endif

/* ------------------------------------------------------------ file locks */

/* The lock code's own tracepoints, in the task whose locks change: fcntl and
 * OFD locks, flock, leases, and the unlocks that close and exit do. They cost
 * nothing to syscalls, unlike probes on fcntl/flock/close. A lock taken makes
 * its process a lock holder; an unlock matters only for a lock holder. */
#ifdef HAVE_filelock
/* Named in these tracepoints' argument structs (linux/fs.h would cost a
 * second of compile time for one typedef). */
typedef void *fl_owner_t;

static __always_inline void report_lock_change(int ret, unsigned char type)
{
    if (ret != 0 || ignored())
        return;
    u32 tgid = current_tgid();
    if (type == LOCK_TYPE_UNLOCK && !is_lock_holder(tgid))
        return;
    report_locks_changed();
}

TRACEPOINT_PROBE(filelock, posix_lock_inode) { report_lock_change(args->ret, args->type); return 0; }
TRACEPOINT_PROBE(filelock, flock_lock_inode) { report_lock_change(args->ret, args->type); return 0; }
/* Fired before the lease is set or removed: the tracker reads the result later. */
TRACEPOINT_PROBE(filelock, generic_add_lease) { report_lock_change(0, args->type); return 0; }
TRACEPOINT_PROBE(filelock, generic_delete_lease) { report_lock_change(0, LOCK_TYPE_UNLOCK); return 0; }
#endif

/* ------------------------------------------------------------ PI futexes */

#ifdef HAVE_futex
static __always_inline void report_pi_waiting(u64 addr)
{
    if (!ignored() && emit(KIND_PI_WAITING, -1, addr, 0))
        remember_op(OP_PI_LOCK, -1, addr, 0);
}

static __always_inline void count_pi_held(u32 tid, bool acquired);

/* Released at enter: a waiter handed the lock may report it before the
 * unlocker's syscall returns, so the release must be in the ring first.
 * UNLOCK_PI fails only for a caller that does not own the futex. */
static __always_inline void report_pi_released(u64 addr)
{
    if (!ignored() && emit(KIND_PI_RELEASED, -1, addr, 0))
        count_pi_held(current_tid(), false);
}

/* WAIT_REQUEUE_PI waits on a plain futex to be requeued onto the PI futex
 * uaddr2. CMP_REQUEUE_PI gives its caller no PI state: the waiter it
 * requeues reports the lock when its WAIT_REQUEUE_PI returns. */
TRACEPOINT_PROBE(syscalls, sys_enter_futex)
{
    u32 cmd = args->op & FUTEX_CMD_MASK;
    if (cmd == FUTEX_CMD_LOCK_PI || cmd == FUTEX_CMD_LOCK_PI2)
        report_pi_waiting((u64)args->uaddr);
    else if (cmd == FUTEX_CMD_WAIT_REQUEUE_PI)
        report_pi_waiting((u64)args->uaddr2);
    else if (cmd == FUTEX_CMD_UNLOCK_PI)
        report_pi_released((u64)args->uaddr);
    else if (cmd == FUTEX_CMD_TRYLOCK_PI && !ignored())
        remember_op(OP_PI_TRYLOCK, -1, (u64)args->uaddr, 0);
    return 0;
}

static __always_inline void count_pi_held(u32 tid, bool acquired)
{
    u32 *held = pi_held.lookup(&tid);
    if (acquired) {
        if (held) {
            *held += 1;
        } else {
            u32 one = 1;
            count_insert(pi_held.insert(&tid, &one));
        }
    } else if (held) {
        if (*held > 1)
            *held -= 1;
        else
            pi_held.delete(&tid);
    }
}

TRACEPOINT_PROBE(syscalls, sys_exit_futex)
{
    struct pending *p = pending_here();
    if (!p)
        return 0;
    u32 tid = current_tid();
    u32 op = p->op;
    u64 addr = p->a;
    forget_pending();
    bool done = args->ret == 0;
    if (op == OP_PI_LOCK) {
        if (emit(done ? KIND_PI_ACQUIRED : KIND_PI_NOT_ACQUIRED, -1, addr, 0) && done)
            count_pi_held(tid, true);
    } else if (op == OP_PI_TRYLOCK && done) {
        if (emit(KIND_PI_ACQUIRED, -1, addr, 0))
            count_pi_held(tid, true);
    }
    return 0;
}
#endif

/* ------------------------------------------------------------ memory */

#ifdef HAVE_remap_file_pages
TRACEPOINT_PROBE(syscalls, sys_enter_remap_file_pages)
{
    if (!ignored())
        remember_op(OP_REMAP, -1, args->start, args->size);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_remap_file_pages)
{
    struct pending *p = pending_here();
    if (!p)
        return 0;
    if (p->op == OP_REMAP && args->ret == 0 && emit(KIND_NONLINEAR, -1, p->a, p->b))
        mark_memory(current_tgid());
    forget_pending();
    return 0;
}
#endif

#ifdef HAVE_munmap
/* Reported at enter: munmap is frequent, and with an aligned address and a
 * non-zero length it cannot fail but for lack of memory. */
TRACEPOINT_PROBE(syscalls, sys_enter_munmap)
{
    u32 tgid = current_tgid();
    u64 addr = args->addr, len = args->len;
    if (memory_marked.lookup(&tgid) && (addr & (PAGE_BYTES - 1)) == 0 && len)
        emit(KIND_UNMAPPED, -1, addr, len);
    return 0;
}
#endif

#ifdef HAVE_shmat
TRACEPOINT_PROBE(syscalls, sys_enter_shmat)
{
    if (!ignored())
        remember_op(OP_SHMAT, -1, 0, args->shmid);
    return 0;
}
/* shmat returns the address, or -errno. */
TRACEPOINT_PROBE(syscalls, sys_exit_shmat)
{
    struct pending *p = pending_here();
    if (!p)
        return 0;
    u64 addr = args->ret;
    if (p->op == OP_SHMAT && addr < (u64)-MAX_ERRNO && emit(KIND_SHM_ATTACHED, -1, addr, p->b))
        mark_memory(current_tgid());
    forget_pending();
    return 0;
}
#endif

#ifdef HAVE_shmdt
TRACEPOINT_PROBE(syscalls, sys_enter_shmdt)
{
    u32 tgid = current_tgid();
    if (memory_marked.lookup(&tgid))
        remember_op(OP_SHMDT, -1, (u64)args->shmaddr, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_shmdt)
{
    struct pending *p = pending_here();
    if (!p)
        return 0;
    if (p->op == OP_SHMDT && args->ret == 0)
        emit(KIND_SHM_DETACHED, -1, p->a, 0);
    forget_pending();
    return 0;
}
#endif

/* ------------------------------------------------------------ ptrace */

#ifdef HAVE_ptrace
TRACEPOINT_PROBE(syscalls, sys_enter_ptrace)
{
    long request = args->request;
    if ((request == PTRACE_REQ_TRACEME || request == PTRACE_REQ_ATTACH ||
         request == PTRACE_REQ_SEIZE || request == PTRACE_REQ_DETACH) && !ignored())
        remember_op(OP_PTRACE, -1, request, args->pid);
    return 0;
}
/* TRACEME: the caller is the tracee (arg == tid) and its parent the tracer. */
TRACEPOINT_PROBE(syscalls, sys_exit_ptrace)
{
    struct pending *p = pending_here();
    if (!p)
        return 0;
    if (p->op == OP_PTRACE && args->ret == 0) {
        u64 request = p->a;
        u32 tracee = request == PTRACE_REQ_TRACEME ? current_tid() : (u32)p->b;
        if (request == PTRACE_REQ_DETACH) {
            emit(KIND_UNTRACED, -1, tracee, 0);
        } else if (emit(KIND_TRACED, -1, tracee, 0)) {
            watch(current_tgid());
            watch(tracee);
        }
    }
    forget_pending();
    return 0;
}
#endif

/* ------------------------------------------------------------ TCP */

#ifdef HAVE_connect
TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    u16 family = 0;
    if (args->addrlen < (int)sizeof(family) || ignored())
        return 0;
    bpf_probe_read_user(&family, sizeof(family), args->uservaddr);
    if (family == FAMILY_INET || family == FAMILY_INET6)
        remember_op(OP_CONNECT, args->fd, 0, 0);
    return 0;
}
/* A non-blocking connect is reported when it starts (EINPROGRESS). */
TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    struct pending *p = pending_here();
    if (!p)
        return 0;
    if (p->op == OP_CONNECT && (args->ret == 0 || args->ret == -ERR_INPROGRESS)) {
        emit_tracked(KIND_TCP_CONNECTED, p->fd, 0);
    }
    forget_pending();
    return 0;
}
#endif

static __always_inline void remember_accept(const void *peer)
{
    if (!ignored())
        remember_op(OP_ACCEPT, -1, (u64)peer, 0);
}

/* The peer address the kernel wrote tells unix connections apart; without
 * one, the tracker checks the fd. */
static __always_inline void report_accept(long ret)
{
    struct pending *p = pending_here();
    if (!p)
        return;
    if (p->op == OP_ACCEPT && ret >= 0) {
        u16 family = FAMILY_INET;
        if (p->a)
            bpf_probe_read_user(&family, sizeof(family), (const void *)p->a);
        if (family == FAMILY_INET || family == FAMILY_INET6)
            emit_tracked(KIND_TCP_CONNECTED, ret, 0);
    }
    forget_pending();
}

#ifdef HAVE_accept
TRACEPOINT_PROBE(syscalls, sys_enter_accept) { remember_accept(args->upeer_sockaddr); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { report_accept(args->ret); return 0; }
#endif
#ifdef HAVE_accept4
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { remember_accept(args->upeer_sockaddr); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { report_accept(args->ret); return 0; }
#endif

/* ------------------------------------------------------------ pid namespaces and new processes */

#ifdef HAVE_unshare
TRACEPOINT_PROBE(syscalls, sys_enter_unshare)
{
    if ((args->unshare_flags & CLONE_FLAG_NEWPID) && !ignored())
        remember_op(OP_UNSHARE, -1, 0, 0);
    return 0;
}
/* The caller stays where it is; its next child is pid 1 of the new namespace. */
TRACEPOINT_PROBE(syscalls, sys_exit_unshare)
{
    struct pending *p = pending_here();
    if (!p)
        return 0;
    if (p->op == OP_UNSHARE && args->ret == 0 && emit(KIND_NEW_PID_NS, -1, 0, 0))
        watch(current_tgid());
    forget_pending();
    return 0;
}
#endif

/* Runs in the parent when a task is created by any path (fork, vfork, clone,
 * clone3), with its clone flags; threads are not reported. The child of a
 * watched process is watched (the tracker may unwatch it: the loader's
 * unwatch); the tracker reads its fds from /proc and tracks those that
 * matter; its locks (flock locks are shared) and mappings are marked here. */
TRACEPOINT_PROBE(task, task_newtask)
{
    u64 flags = args->clone_flags;
    if (flags & CLONE_FLAG_THREAD || ignored())
        return 0;
    u32 tgid = current_tgid();
    u32 child = args->pid;
    if ((flags & CLONE_FLAG_NEWPID) && emit(KIND_NEW_PID_NS, -1, child, 0))
        watch(child);
    if (watched.lookup(&tgid) && emit(KIND_FORKED, -1, child, 0)) {
        watch(child);
        if (is_lock_holder(tgid))
            mark_lock_holder(child);
        if (memory_marked.lookup(&tgid))
            mark_memory(child);
    }
    return 0;
}

/* ------------------------------------------------------------ exec and exit */

/* After exec the caller's tid is its tgid (args->old_pid is the tid it had).
 * Its mappings and PI futexes are gone; the tracker re-checks which fds survived. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 tgid = current_tgid();
    u32 old_tid = args->old_pid;
    bool held_pi = pi_held.delete(&old_tid) == 0;
    memory_marked.delete(&tgid);
    if (held_pi || watched.lookup(&tgid))
        emit(KIND_EXECED, -1, old_tid, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u32 tgid = current_tgid();
    u32 tid = current_tid();
#ifdef HAVE_GROUP_DEAD
    bool group_dead = args->group_dead;
#else
    bool group_dead = tid == tgid;
#endif
    bool held_pi = pi_held.delete(&tid) == 0;
    bool tracee = tid != tgid && watched.delete(&tid) == 0;
    forget_pending();
    if (held_pi || tracee || watched.lookup(&tgid))
        emit(KIND_EXITED, -1, group_dead, 0);
    if (group_dead) {
        watched.delete(&tgid);
        lock_holders.delete(&tgid);
        locks_reported.delete(&tgid);
        memory_marked.delete(&tgid);
        unmark_fd_holder(tgid);
    }
    return 0;
}
