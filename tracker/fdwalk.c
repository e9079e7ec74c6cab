/* _crwatch_fdwalk: a process's fd table in one call (built by scripts/setup.sh).
 *
 * read_fds(fd_dir, fdinfo_dir) lists fd_dir (/proc/PID/fd), reads each link and
 * the fd's fdinfo record, and returns [(fd, target, fdinfo, fields), ...] by
 * ascending fd:
 *   target  the link text as os.readlink() returns it (at most PATH_MAX bytes),
 *           or None when the kernel cannot name its path (ENAMETOOLONG);
 *   fdinfo  the record decoded as tracker.procfs.Proc.read_record() decodes it
 *           (UTF-8, surrogateescape); None for an fd whose link is a path (the
 *           checks seldom ask for its record: the caller reads it when asked)
 *           and when it could not be read (the caller reads it again when
 *           needed, and meets the error then);
 *   fields  the record's key/value pairs as tracker.procfs.OpenFd.fdinfo makes
 *           them (per line of str.splitlines(): partition at the first ":",
 *           both sides str.strip()ped, the first of a repeated key kept), for a
 *           record in ASCII, whose line breaks and blanks are all ASCII; None for
 *           any other (the caller makes them from the text).
 * An fd closed between the listing and its readlink is left out. Any other error
 * of the listing or a readlink raises OSError, its filename "fd" or "fd/N", for
 * tracker.procfs to translate as it translates its own reads.
 *
 * tracker.procfs does the same in Python when this module is not built: a test
 * holds both to the same answer on real processes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What one read() asks, as tracker.procfs.RECORD_READ_SIZE: an fdinfo record is
 * made whole before the first read, so a shorter read holds all of it. */
#define RECORD_READ_SIZE 65536

struct entry {
    int fd;
    PyObject *target;   /* str, or Py_None */
    PyObject *fdinfo;   /* str, or Py_None */
    PyObject *fields;   /* dict, or Py_None */
};

/* str.splitlines() breaks and str.strip() blanks, among ASCII characters */
static int line_break(char c)
{
    return c == '\n' || c == '\r' || c == '\v' || c == '\f' || (c >= 0x1c && c <= 0x1e);
}

static int blank(char c)
{
    return c == ' ' || c == '\t' || line_break(c) || c == 0x1f;
}

static PyObject *stripped(const char *start, const char *end)
{
    while (start < end && blank(*start))
        start++;
    while (end > start && blank(end[-1]))
        end--;
    return PyUnicode_DecodeASCII(start, end - start, "strict");
}

/* The key/value pairs of an ASCII record, as OpenFd.fdinfo makes them; None for
 * a record with any other byte. */
static PyObject *fields_of(const char *text, size_t length)
{
    PyObject *fields;
    const char *at = text, *end = text + length;

    for (size_t i = 0; i < length; i++)
        if ((unsigned char)text[i] >= 0x80)
            Py_RETURN_NONE;
    if (!(fields = PyDict_New()))
        return NULL;
    while (at < end) {
        const char *line_end = at, *colon;
        PyObject *key, *value = NULL;

        while (line_end < end && !line_break(*line_end))
            line_end++;
        colon = memchr(at, ':', (size_t)(line_end - at));
        key = stripped(at, colon ? colon : line_end);
        if (key)
            value = colon ? stripped(colon + 1, line_end) : PyUnicode_New(0, 0);
        if (!value || !PyDict_SetDefault(fields, key, value)) {
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_DECREF(fields);
            return NULL;
        }
        Py_DECREF(key);
        Py_DECREF(value);
        /* one break ends the line; \r\n is one break */
        if (line_end < end && *line_end == '\r' && line_end + 1 < end && line_end[1] == '\n')
            line_end++;
        at = line_end + 1;
    }
    return fields;
}

static int by_fd(const void *a, const void *b)
{
    int x = ((const struct entry *)a)->fd, y = ((const struct entry *)b)->fd;
    return (x > y) - (x < y);
}

static PyObject *raise_for(int error, const char *what)
{
    errno = error;
    return PyErr_SetFromErrnoWithFilename(PyExc_OSError, what);
}

/* The fdinfo record of fd `name` under the directory `info_dir` into `at` (its
 * text and fields, each None when it could not be read); -1 with an exception set
 * when Python could not make them. */
static int read_record(int info_dir, const char *name, char **buffer, size_t *size,
                       struct entry *at)
{
    int fd = openat(info_dir, name, O_RDONLY | O_CLOEXEC);
    size_t used = 0;

    if (fd < 0)
        goto unread;
    for (;;) {
        ssize_t got;

        if (*size - used < RECORD_READ_SIZE) {
            char *grown = realloc(*buffer, *size * 2);

            if (!grown) {
                close(fd);
                PyErr_NoMemory();
                return -1;
            }
            *buffer = grown;
            *size *= 2;
        }
        got = read(fd, *buffer + used, RECORD_READ_SIZE);
        if (got < 0) {
            close(fd);
            goto unread;
        }
        used += (size_t)got;
        if (got < RECORD_READ_SIZE)
            break;
    }
    close(fd);
    at->fdinfo = PyUnicode_DecodeUTF8(*buffer, (Py_ssize_t)used, "surrogateescape");
    if (!at->fdinfo)
        return -1;
    at->fields = fields_of(*buffer, used);
    return at->fields ? 0 : -1;
unread:
    Py_INCREF(Py_None);
    at->fdinfo = Py_None;
    Py_INCREF(Py_None);
    at->fields = Py_None;
    return 0;
}

static void release(struct entry *entries, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        Py_XDECREF(entries[i].target);
        Py_XDECREF(entries[i].fdinfo);
        Py_XDECREF(entries[i].fields);
    }
    free(entries);
}

static PyObject *read_fds(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *fd_dir_arg, *info_dir_arg, *result = NULL;
    struct entry *entries = NULL;
    size_t count = 0, capacity = 0, size = 2 * RECORD_READ_SIZE;
    char *buffer = NULL, link[PATH_MAX + 1], what[sizeof("fd/") + NAME_MAX];
    int fd_dir = -1, info_dir = -1;
    DIR *listing = NULL;
    struct dirent *dirent;

    if (!PyArg_ParseTuple(args, "O&O&", PyUnicode_FSConverter, &fd_dir_arg,
                          PyUnicode_FSConverter, &info_dir_arg))
        return NULL;
    fd_dir = open(PyBytes_AS_STRING(fd_dir_arg), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_dir < 0) {
        raise_for(errno, "fd");
        goto out;
    }
    info_dir = open(PyBytes_AS_STRING(info_dir_arg), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    listing = fdopendir(dup(fd_dir));
    buffer = malloc(size);
    if (!listing || !buffer) {
        if (!buffer)
            PyErr_NoMemory();
        else
            raise_for(errno, "fd");
        goto out;
    }
    for (errno = 0; (dirent = readdir(listing)) != NULL; errno = 0) {
        char *end;
        long number = strtol(dirent->d_name, &end, 10);
        ssize_t length;
        struct entry *at;

        if (dirent->d_name[0] < '0' || dirent->d_name[0] > '9' || *end)
            continue;   /* "." and ".." */
        length = readlinkat(fd_dir, dirent->d_name, link, PATH_MAX);  /* os.readlink's size */
        if (length < 0 && errno == ENOENT)
            continue;   /* closed meanwhile */
        if (length < 0 && errno != ENAMETOOLONG) {
            snprintf(what, sizeof(what), "fd/%s", dirent->d_name);
            raise_for(errno, what);
            goto out;
        }
        if (count == capacity) {
            struct entry *grown;

            capacity = capacity ? capacity * 2 : 64;
            grown = realloc(entries, capacity * sizeof(*entries));
            if (!grown) {
                PyErr_NoMemory();
                goto out;
            }
            entries = grown;
        }
        at = &entries[count];
        at->fd = (int)number;
        at->target = at->fdinfo = at->fields = NULL;
        count++;
        if (length < 0) {
            Py_INCREF(Py_None);
            at->target = Py_None;
        } else {
            at->target = PyUnicode_DecodeFSDefaultAndSize(link, length);
            if (!at->target)
                goto out;
        }
        /* A path's record is read when a check asks for it (most never do); every
         * pipe, socket and anon inode's is asked for. */
        if (read_record(length > 0 && link[0] == '/' ? -1 : info_dir, dirent->d_name,
                        &buffer, &size, at) < 0)
            goto out;
    }
    if (errno) {
        raise_for(errno, "fd");
        goto out;
    }
    qsort(entries, count, sizeof(*entries), by_fd);
    result = PyList_New((Py_ssize_t)count);
    for (size_t i = 0; result && i < count; i++) {
        PyObject *item = Py_BuildValue("(iOOO)", entries[i].fd, entries[i].target,
                                       entries[i].fdinfo, entries[i].fields);

        if (!item) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, item);
    }
out:
    release(entries, count);
    free(buffer);
    if (listing)
        closedir(listing);
    if (info_dir >= 0)
        close(info_dir);
    if (fd_dir >= 0)
        close(fd_dir);
    Py_DECREF(fd_dir_arg);
    Py_DECREF(info_dir_arg);
    return result;
}

static PyMethodDef methods[] = {
    {"read_fds", read_fds, METH_VARARGS,
     "read_fds(fd_dir, fdinfo_dir) -> [(fd, target, fdinfo text, fdinfo fields)] by fd"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_crwatch_fdwalk",
    "A process's fd table (links and fdinfo records) in one call.", -1, methods,
};

PyMODINIT_FUNC PyInit__crwatch_fdwalk(void)
{
    return PyModule_Create(&module);
}
