/*
 * crwatch: the command a user runs (set-up installs it as .venv/bin/crwatch).
 *
 * `crwatch check` is answered by a running service when one listens on the local
 * socket: one HTTP/1.1 request (GET /check, api/service/routes/check.py), whose body
 * is the command's output and whose X-Crwatch-Exit header is its exit status. No
 * Python starts, which alone costs more than `lsof -p`. Everything else -- another
 * command, an option this file does not know, --local or CRWATCH_LOCAL, no socket,
 * a refused connection, any answer but a whole 200 -- runs the Python command line
 * with the same arguments (`python -P -m api.cli ARGS`), so that what it prints, its
 * errors and its exit status stay exactly its own.
 *
 * Built by scripts/build-launcher.sh, which fixes at build time:
 *   CRWATCH_PYTHON          the venv's interpreter
 *   CRWATCH_SOCKET          the service's default socket (api.service_socket)
 *   CRWATCH_SOCKET_VARIABLE the variable naming another socket
 *   CRWATCH_LOCAL_VARIABLE  the variable that makes `check` audit here
 *   CRWATCH_REFRESH_VARIABLE the variable that has CRIU asked afresh (facts_cache.py)
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#if !defined(CRWATCH_PYTHON) || !defined(CRWATCH_SOCKET) || \
    !defined(CRWATCH_SOCKET_VARIABLE) || !defined(CRWATCH_LOCAL_VARIABLE) || \
    !defined(CRWATCH_REFRESH_VARIABLE)
#error "build with scripts/build-launcher.sh: it defines where Python and the service are"
#endif

#define REQUEST_MAX 16384          /* below h11's limit on a request head */
#define ANSWER_MAX (256u << 20)    /* an answer larger than this is not believed */
#define CONNECT_SECONDS 2          /* a service whose backlog is full: audit here */
#define ANSWER_SECONDS 120         /* a service that does not answer: audit here */
#define PID_DIGITS 10
#define EXIT_CANNOT_RUN 127        /* as a shell says a command it cannot run */

/* The request being written: its bytes, and whether it still fits. */
struct request {
    char text[REQUEST_MAX];
    size_t length;
    int overflow;
};

static void append(struct request *request, const char *text, size_t length)
{
    if (request->overflow || request->length + length >= sizeof(request->text)) {
        request->overflow = 1;
        return;
    }
    memcpy(request->text + request->length, text, length);
    request->length += length;
    request->text[request->length] = '\0';
}

static void append_text(struct request *request, const char *text)
{
    append(request, text, strlen(text));
}

/* A query parameter, its value percent-encoded. */
static void append_parameter(struct request *request, const char *name, const char *value)
{
    static const char hex[] = "0123456789ABCDEF";
    append_text(request, request->text[request->length - 1] == '?' ? "" : "&");
    append_text(request, name);
    append_text(request, "=");
    for (const unsigned char *c = (const unsigned char *)value; *c; c++) {
        if (isalnum(*c) || strchr("-._~", *c)) {
            append(request, (const char *)c, 1);
        } else {
            char escaped[3] = {'%', hex[*c >> 4], hex[*c & 15]};
            append(request, escaped, 3);
        }
    }
}

/* A header value sent as it is: printable ASCII, nothing h11 would trim. */
static int sendable(const char *value)
{
    size_t length = strlen(value);
    if (length == 0 || value[0] == ' ' || value[length - 1] == ' ')
        return 0;
    for (const unsigned char *c = (const unsigned char *)value; *c; c++)
        if (*c < 0x20 || *c > 0x7e)
            return 0;
    return 1;
}

static int set(const char *variable)
{
    const char *value = getenv(variable);
    return value != NULL && value[0] != '\0';
}

/* A pid as argparse's type takes it (ASCII digits, not 0), written without leading zeros;
 * 0 when argparse would refuse it or the service could not be asked for it. */
static int pid_text(const char *argument, char *pid, size_t size)
{
    while (*argument == '0' && argument[1] != '\0')
        argument++;
    size_t length = strlen(argument);
    if (length == 0 || length > PID_DIGITS || length >= size || strcmp(argument, "0") == 0)
        return 0;
    for (size_t i = 0; i < length; i++)
        if (!isdigit((unsigned char)argument[i]))
            return 0;
    memcpy(pid, argument, length + 1);
    return 1;
}

/* The value of an option given as `--name=value` or `--name value` (advancing *index),
 * or NULL when argv[*index] is not that option, or argparse would not take the value
 * (a separate value that looks like an option). */
static const char *option_value(char **argv, int argc, int *index, const char *name,
                                int *matched)
{
    size_t length = strlen(name);
    const char *argument = argv[*index];
    *matched = 0;
    if (strncmp(argument, name, length) != 0)
        return NULL;
    if (argument[length] == '=') {
        *matched = 1;
        return argument + length + 1;
    }
    if (argument[length] != '\0')
        return NULL;
    *matched = 1;
    if (*index + 1 >= argc || argv[*index + 1][0] == '-')
        return NULL;
    return argv[++*index];
}

/* The request for `crwatch check ARGS`, or 0 when only the Python command line can run
 * it as asked. */
static int check_request(int argc, char **argv, struct request *request)
{
    int json = 0, only = 0, tree = 0, holders = 0, pids = 0, pids_ended = 0, matched;
    const char *profile = "criu", *criu_version = NULL;
    struct request query = {.text = "", .length = 0, .overflow = 0};

    append_text(&query, "?");
    for (int i = 2; i < argc; i++) {
        const char *argument = argv[i], *value;
        char pid[PID_DIGITS + 1];
        if (pids > 0 && !pid_text(argument, pid, sizeof(pid)))
            pids_ended = 1;  /* argparse takes the pids as one run of arguments */
        if (strcmp(argument, "--json") == 0) {
            json = 1;
        } else if (strcmp(argument, "--only") == 0) {
            only = 1;
        } else if (strcmp(argument, "--tree") == 0) {
            tree = 1;
        } else if (strcmp(argument, "--holders") == 0) {
            holders = 1;
        } else if ((value = option_value(argv, argc, &i, "--allow", &matched)) || matched) {
            if (value == NULL || value[0] == '\0')
                return 0;
            append_parameter(&query, "allow", value);
        } else if ((value = option_value(argv, argc, &i, "--profile", &matched)) || matched) {
            if (value == NULL || (strcmp(value, "criu") != 0 && strcmp(value, "strict") != 0))
                return 0;
            profile = value;
        } else if ((value = option_value(argv, argc, &i, "--criu-version", &matched)) ||
                   matched) {
            if (value == NULL || value[0] == '\0' || strspn(value, "0123456789.") != strlen(value))
                return 0;
            criu_version = value;
        } else if (!pids_ended && pid_text(argument, pid, sizeof(pid))) {
            append_parameter(&query, "pid", pid);
            pids++;
        } else {
            return 0;  /* --local, --help, `--`, an abbreviation, a mistake: argparse's */
        }
    }
    if (pids == 0 || (only && tree))
        return 0;
    append_parameter(&query, "profile", profile);
    if (criu_version != NULL)
        append_parameter(&query, "criu_version", criu_version);
    if (only)
        append_parameter(&query, "tree", "false");
    if (json)
        append_parameter(&query, "json", "true");
    if (holders)
        append_parameter(&query, "holders", "true");

    append_text(request, "GET /check");
    append(request, query.text, query.length);
    append_text(request, " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    /* What decides the caller's own dumper: the service answers only for the same. */
    const char *path = getenv("PATH"), *criu = getenv("CRWATCH_CRIU");
    if (path != NULL) {
        if (!sendable(path))
            return 0;
        append_text(request, "X-Crwatch-Path: ");
        append_text(request, path);
        append_text(request, "\r\n");
    }
    if (criu != NULL && criu[0] != '\0') {
        if (!sendable(criu))
            return 0;
        append_text(request, "X-Crwatch-Criu: ");
        append_text(request, criu);
        append_text(request, "\r\n");
    }
    append_text(request, "\r\n");
    return !query.overflow && !request->overflow;
}

static int write_all(int fd, const char *data, size_t length)
{
    while (length > 0) {
        ssize_t written = write(fd, data, length);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += written;
        length -= (size_t)written;
    }
    return 0;
}

/* The answer of the service on `socket_path` to the request, whole (NULL: none). */
static char *ask(const char *socket_path, const struct request *request, size_t *length)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof(address.sun_path))
        return NULL;
    strcpy(address.sun_path, socket_path);
    int service = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (service < 0)
        return NULL;
    struct timeval connecting = {.tv_sec = CONNECT_SECONDS}, answering = {.tv_sec = ANSWER_SECONDS};
    setsockopt(service, SOL_SOCKET, SO_SNDTIMEO, &connecting, sizeof(connecting));
    setsockopt(service, SOL_SOCKET, SO_RCVTIMEO, &answering, sizeof(answering));
    char *answer = NULL;
    size_t size = 0;
    *length = 0;
    if (connect(service, (struct sockaddr *)&address, sizeof(address)) != 0 ||
        write_all(service, request->text, request->length) != 0)
        goto failed;
    for (;;) {
        if (*length == size) {
            size = size ? size * 2 : 65536;
            char *larger = size <= ANSWER_MAX ? realloc(answer, size + 1) : NULL;
            if (larger == NULL)
                goto failed;
            answer = larger;
        }
        ssize_t got = read(service, answer + *length, size - *length);
        if (got == 0)
            break;
        if (got < 0) {
            if (errno == EINTR)
                continue;
            goto failed;  /* a timeout too */
        }
        *length += (size_t)got;
    }
    close(service);
    answer[*length] = '\0';
    return answer;
failed:
    close(service);
    free(answer);
    return NULL;
}

/* The value of a header in the head (NUL-terminated), or NULL. */
static const char *header(const char *head, const char *name, size_t *length)
{
    size_t name_length = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line != NULL; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, name_length) == 0 && line[name_length] == ':') {
            const char *value = line + name_length + 1;
            value += strspn(value, " \t");
            const char *end = strstr(value, "\r\n");
            *length = end ? (size_t)(end - value) : strlen(value);
            return value;
        }
    }
    return NULL;
}

/* A number of at most `most` written in the header's value (-1: none). */
static long header_number(const char *head, const char *name, long most)
{
    size_t length;
    const char *value = header(head, name, &length);
    if (value == NULL || length == 0 || length > 12 || strspn(value, "0123456789") != length)
        return -1;
    long number = strtol(value, NULL, 10);
    return number <= most ? number : -1;
}

/* Prints the service's answer to `crwatch check` and exits with its status; returns
 * when there is no whole 200 answer to print. */
static void answer_from_service(const struct request *request)
{
    const char *socket_path = getenv(CRWATCH_SOCKET_VARIABLE);
    if (socket_path == NULL || socket_path[0] == '\0')
        socket_path = CRWATCH_SOCKET;
    size_t length;
    char *answer = ask(socket_path, request, &length);
    if (answer == NULL)
        return;
    char *end = strstr(answer, "\r\n\r\n");
    if (end == NULL || strncmp(answer, "HTTP/1.1 200 ", 13) != 0) {
        free(answer);
        return;
    }
    *end = '\0';
    const char *body = end + 4;
    size_t body_length = length - (size_t)(body - answer), stream_length;
    long status = header_number(answer, "X-Crwatch-Exit", 255);
    long content_length = header_number(answer, "Content-Length", ANSWER_MAX);
    const char *stream = header(answer, "X-Crwatch-Stream", &stream_length);
    size_t encoding_length;
    int fd = stream == NULL ? -1
             : stream_length == 6 && strncmp(stream, "stdout", 6) == 0 ? STDOUT_FILENO
             : stream_length == 6 && strncmp(stream, "stderr", 6) == 0 ? STDERR_FILENO : -1;
    if (status < 0 || fd < 0 || content_length != (long)body_length ||
        header(answer, "Transfer-Encoding", &encoding_length) != NULL) {
        free(answer);
        return;
    }
    /* As the Python command line: a reader gone (crwatch check ... | head) is no error. */
    signal(SIGPIPE, SIG_IGN);
    if (write_all(fd, body, body_length) != 0 && errno == EPIPE)
        status = 0;
    exit((int)status);
}

static void run_python(int argc, char **argv)
{
    char **python_argv = calloc((size_t)argc + 4, sizeof(char *));
    if (python_argv == NULL) {
        perror("crwatch");
        exit(EXIT_CANNOT_RUN);
    }
    /* -P: nothing of the current directory shadows crwatch's packages. */
    python_argv[0] = CRWATCH_PYTHON;
    python_argv[1] = "-P";
    python_argv[2] = "-m";
    python_argv[3] = "api.cli";
    for (int i = 1; i < argc; i++)
        python_argv[i + 3] = argv[i];
    execv(CRWATCH_PYTHON, python_argv);
    fprintf(stderr, "crwatch: cannot run %s: %s\n", CRWATCH_PYTHON, strerror(errno));
    exit(EXIT_CANNOT_RUN);
}

int main(int argc, char **argv)
{
    static struct request request;
    /* Asked afresh, or with a loader's variables: CRIU's facts could differ from the
     * service's, which it learnt in its own environment. */
    if (argc >= 3 && strcmp(argv[1], "check") == 0 && !set(CRWATCH_LOCAL_VARIABLE) &&
        !set(CRWATCH_REFRESH_VARIABLE) && !set("LD_PRELOAD") && !set("LD_LIBRARY_PATH") &&
        check_request(argc, argv, &request))
        answer_from_service(&request);
    run_python(argc, argv);
    return EXIT_CANNOT_RUN;
}
