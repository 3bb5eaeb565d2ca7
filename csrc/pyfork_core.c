/*
 * pyfork's compiled core: the child's environment block, posix_spawn()
 * with its file actions, payload files, and the child's checked reads.
 * Contracts are stated above each declaration in pyfork_core.h.
 */
#define _GNU_SOURCE

#include "pyfork_core.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef PYFORK_VERSION
#error "PYFORK_VERSION must be defined by the build"
#endif

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif

extern char **environ;

static const unsigned char header_magic[6] = {'P', 'Y', 'F', 'O', 'R', 'K'};

const char *pyfork_core_version(void) { return PYFORK_VERSION; }

/* Environment */

static int entry_has_name(const char *entry, const char *name,
                          size_t name_len)
{
    return strncmp(entry, name, name_len) == 0 && entry[name_len] == '=';
}

char **pyfork_env_build(char *const *base, const char *name,
                        const char *entry)
{
    size_t name_len = strlen(name);
    if (name_len == 0 || strchr(name, '=') != NULL ||
        !entry_has_name(entry, name, name_len)) {
        errno = EINVAL;
        return NULL;
    }
    if (base == NULL) {
        base = environ;
    }

    /* One block: the pointer array, then the strings it points to. */
    size_t count = 0;
    size_t text_size = strlen(entry) + 1;
    for (char *const *p = base; p != NULL && *p != NULL; p++) {
        if (!entry_has_name(*p, name, name_len)) {
            count++;
            text_size += strlen(*p) + 1;
        }
    }
    size_t array_size = (count + 2) * sizeof(char *);
    if (text_size > SIZE_MAX - array_size) {
        errno = ENOMEM;
        return NULL;
    }
    char **env = malloc(array_size + text_size);
    if (env == NULL) {
        return NULL;
    }

    char *text = (char *)env + array_size;
    size_t i = 0;
    for (char *const *p = base; p != NULL && *p != NULL; p++) {
        if (entry_has_name(*p, name, name_len)) {
            continue;
        }
        size_t size = strlen(*p) + 1;
        memcpy(text, *p, size);
        env[i++] = text;
        text += size;
    }
    memcpy(text, entry, strlen(entry) + 1);
    env[i++] = text;
    env[i] = NULL;
    return env;
}

void pyfork_env_free(char **env) { free(env); }

ssize_t pyfork_env_take(const char *name, char *buf, size_t size)
{
    const char *value = getenv(name);
    if (value == NULL) {
        errno = ENOENT;
        return -1;
    }
    size_t len = strlen(value);
    if (len >= size || len > SSIZE_MAX) {
        errno = ERANGE;
        return -1;
    }
    memcpy(buf, value, len + 1);
    if (unsetenv(name) != 0) {
        return -1;
    }
    return (ssize_t)len;
}

/* Spawn */

typedef int (*addchdir_fn)(posix_spawn_file_actions_t *, const char *);
typedef int (*addclosefrom_fn)(posix_spawn_file_actions_t *, int);

/*
 * posix_spawn_file_actions_addchdir_np() came in glibc 2.29 and
 * posix_spawn_file_actions_addclosefrom_np() in 2.34. Looking them up at
 * run time keeps the core loadable on older systems.
 */
static addchdir_fn lookup_addchdir(void)
{
    return (addchdir_fn)dlsym(RTLD_DEFAULT,
                              "posix_spawn_file_actions_addchdir_np");
}

/*
 * dlsym() searches every loaded library, which costs microseconds on each
 * spawn of a process with many extension modules, so the result is kept.
 * Threads that race here store the same value.
 */
static _Atomic(addclosefrom_fn) cached_addclosefrom;
static atomic_int addclosefrom_looked_up;

static addclosefrom_fn lookup_addclosefrom(void)
{
    if (atomic_load(&addclosefrom_looked_up)) {
        return atomic_load(&cached_addclosefrom);
    }
    addclosefrom_fn found = (addclosefrom_fn)dlsym(
        RTLD_DEFAULT, "posix_spawn_file_actions_addclosefrom_np");
    atomic_store(&cached_addclosefrom, found);
    atomic_store(&addclosefrom_looked_up, 1);
    return found;
}

static int is_kept(int fd, const int *keep_fds, size_t n_keep_fds)
{
    for (size_t i = 0; i < n_keep_fds; i++) {
        if (keep_fds[i] == fd) {
            return 1;
        }
    }
    return 0;
}

static int is_inheritable(int fd)
{
    int flags = fcntl(fd, F_GETFD);
    return flags != -1 && (flags & FD_CLOEXEC) == 0;
}

/*
 * Add a close action for every inheritable fd >= 3 that is not kept.
 * Fds at or above the fd limit are skipped, because glibc rejects close
 * actions for them. Such an fd, inherited from a parent with a higher
 * limit, therefore reaches the child.
 */
static int close_inheritable_by_scan(posix_spawn_file_actions_t *actions,
                                     const int *keep_fds, size_t n_keep_fds)
{
    long open_max = sysconf(_SC_OPEN_MAX);
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL) {
        return errno;
    }
    int dir_fd = dirfd(dir);
    int error = 0;
    struct dirent *ent;
    while (error == 0 && (ent = readdir(dir)) != NULL) {
        char *end;
        long fd = strtol(ent->d_name, &end, 10);
        if (end == ent->d_name || *end != '\0' || fd < 3 || fd > INT_MAX ||
            (open_max > 0 && fd >= open_max) || fd == dir_fd ||
            is_kept((int)fd, keep_fds, n_keep_fds) ||
            !is_inheritable((int)fd)) {
            continue;
        }
        error = posix_spawn_file_actions_addclose(actions, (int)fd);
    }
    closedir(dir);
    return error;
}

/*
 * Add the actions that give the child its stdio and leave it with fds 0-2
 * and `keep_fds` only. Close-on-exec fds close by themselves, so only
 * inheritable ones need an action. Returns 0 or an error number.
 */
static int add_fd_actions(posix_spawn_file_actions_t *actions,
                          const int stdio[3], const int *keep_fds,
                          size_t n_keep_fds)
{
    for (int target = 0; target < 3; target++) {
        /* The caller moves sources in 0-2 out of the way first. */
        if (stdio[target] >= 0) {
            int error = posix_spawn_file_actions_adddup2(
                actions, stdio[target], target);
            if (error != 0) {
                return error;
            }
        }
    }

    int max_kept = 2;
    for (size_t i = 0; i < n_keep_fds; i++) {
        int fd = keep_fds[i];
        if (fd < 0) {
            return EBADF;
        }
        /* dup2() onto itself clears close-on-exec in the child. */
        int error = posix_spawn_file_actions_adddup2(actions, fd, fd);
        if (error != 0) {
            return error;
        }
        if (fd > max_kept) {
            max_kept = fd;
        }
    }

    /* glibc rejects a closefrom() start at or above the fd limit. */
    long open_max = sysconf(_SC_OPEN_MAX);
    addclosefrom_fn addclosefrom = lookup_addclosefrom();
    if (addclosefrom == NULL || (open_max > 0 && max_kept + 1 >= open_max)) {
        return close_inheritable_by_scan(actions, keep_fds, n_keep_fds);
    }
    /* Close every fd between the kept ones, inheritable or not: checking
     * the flag here would race with other threads that change it. glibc
     * ignores close actions for fds that are not open. */
    for (int fd = 3; fd < max_kept; fd++) {
        if (!is_kept(fd, keep_fds, n_keep_fds)) {
            int error = posix_spawn_file_actions_addclose(actions, fd);
            if (error != 0) {
                return error;
            }
        }
    }
    return addclosefrom(actions, max_kept + 1);
}

static int set_spawn_attributes(posix_spawnattr_t *attr, int flags,
                                pid_t pgroup)
{
    sigset_t mask;
    sigset_t defaults;
    short spawn_flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;

    sigemptyset(&mask);
    sigemptyset(&defaults);
    /* CPython ignores both at start-up, and exec keeps ignored signals. */
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGXFSZ);

    int error = posix_spawnattr_setsigmask(attr, &mask);
    if (error == 0) {
        error = posix_spawnattr_setsigdefault(attr, &defaults);
    }
    if (error == 0 && (flags & PYFORK_SPAWN_SETPGROUP)) {
        spawn_flags |= POSIX_SPAWN_SETPGROUP;
        error = posix_spawnattr_setpgroup(attr, pgroup);
    }
    if (flags & PYFORK_SPAWN_SETSID) {
        spawn_flags |= POSIX_SPAWN_SETSID;
    }
    if (error == 0) {
        error = posix_spawnattr_setflags(attr, spawn_flags);
    }
    return error;
}

int pyfork_spawn(pid_t *pid, const char *path, char *const argv[],
                 char *const envp[],
                 const struct pyfork_spawn_options *options)
{
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;

    int error = posix_spawn_file_actions_init(&actions);
    if (error != 0) {
        errno = error;
        return -1;
    }
    error = posix_spawnattr_init(&attr);
    if (error != 0) {
        posix_spawn_file_actions_destroy(&actions);
        errno = error;
        return -1;
    }

    error = add_fd_actions(&actions, options->stdio, options->keep_fds,
                           options->n_keep_fds);
    if (error == 0 && options->cwd != NULL) {
        addchdir_fn addchdir = lookup_addchdir();
        error = addchdir != NULL ? addchdir(&actions, options->cwd) : ENOSYS;
    }
    if (error == 0) {
        error = set_spawn_attributes(&attr, options->flags, options->pgroup);
    }
    if (error == 0) {
        error = posix_spawn(pid, path, &actions, &attr, argv, envp);
    }

    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    if (error != 0) {
        errno = error;
        return -1;
    }
    return 0;
}

/* Payload files */

/*
 * Move a new fd to 3 or above, keeping close-on-exec. With 0, 1 or 2
 * closed in the parent, a new file lands there, and the child's stdio
 * would then be that file. Closes `fd` and returns -1 on failure.
 */
static int move_above_stdio(int fd)
{
    if (fd < 0 || fd > 2) {
        return fd;
    }
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int saved = errno;
    close(fd);
    errno = saved;
    return moved;
}

int pyfork_payload_create_anonymous(const char *fallback_dir)
{
    int fd;
#ifdef SYS_memfd_create
    /* The raw system call needs no glibc 2.27 symbol. */
    fd = (int)syscall(SYS_memfd_create, "pyfork", MFD_CLOEXEC);
    if (fd >= 0) {
        return move_above_stdio(fd);
    }
    /* Other errors mean memfd is missing or filtered: use the fallback. */
    if (fallback_dir == NULL || errno == EMFILE || errno == ENFILE ||
        errno == ENOMEM) {
        return -1;
    }
#else
    if (fallback_dir == NULL) {
        errno = ENOSYS;
        return -1;
    }
#endif
    char path[PATH_MAX];
    fd = pyfork_payload_create_named(fallback_dir, path, sizeof path);
    if (fd < 0) {
        return -1;
    }
    if (unlink(path) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int pyfork_payload_create_named(const char *dir, char *path,
                                size_t path_size)
{
    int n = snprintf(path, path_size, "%s/pyfork-XXXXXX", dir);
    if (n < 0) {
        return -1;
    }
    if ((size_t)n >= path_size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    /* mkostemp() creates the file with O_EXCL and mode 0600. */
    int created = mkostemp(path, O_CLOEXEC);
    if (created < 0) {
        return -1;
    }
    int fd = move_above_stdio(created);
    if (fd < 0) {
        int saved = errno;
        unlink(path);
        errno = saved;
    }
    return fd;
}

static void store_u64_le(unsigned char *out, uint64_t value)
{
    for (int i = 0; i < 8; i++) {
        out[i] = (unsigned char)(value >> (8 * i));
    }
}

static uint64_t load_u64_le(const unsigned char *in)
{
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--) {
        value = (value << 8) | in[i];
    }
    return value;
}

/*
 * Header layout, 32 bytes: magic "PYFORK", protocol version (1 byte),
 * body encoding (1 byte), token (16 bytes), body size (u64 little-endian).
 */
static void build_header(unsigned char *header, const unsigned char *token,
                         int encoding, uint64_t body_size)
{
    memcpy(header, header_magic, sizeof header_magic);
    header[6] = PYFORK_PROTOCOL_VERSION;
    header[7] = (unsigned char)encoding;
    memcpy(header + 8, token, PYFORK_TOKEN_SIZE);
    store_u64_le(header + 24, body_size);
}

/*
 * Write the header and `body` at offset 0 of `fd`, retrying short writes
 * and EINTR, and return the size written or -1 with errno set. Bytes
 * beyond it stay.
 */
static off_t write_record(int fd, const unsigned char *token, int encoding,
                          const void *body, size_t body_size)
{
    unsigned char header[PYFORK_HEADER_SIZE];
    build_header(header, token, encoding, body_size);

    struct iovec iov[2] = {
        {.iov_base = header, .iov_len = sizeof header},
        {.iov_base = (void *)body, .iov_len = body_size},
    };
    struct iovec *next = iov;
    int count = 2;
    off_t offset = 0;
    while (count > 0) {
        ssize_t n = pwritev(fd, next, count, offset);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        offset += n;
        size_t written = (size_t)n;
        while (count > 0 && written >= next->iov_len) {
            written -= next->iov_len;
            next++;
            count--;
        }
        if (count > 0) {
            next->iov_base = (char *)next->iov_base + written;
            next->iov_len -= written;
        }
    }
    return offset;
}

int pyfork_payload_write(int fd, const unsigned char *token, int encoding,
                         const void *body, size_t body_size)
{
    off_t offset = write_record(fd, token, encoding, body, body_size);
    if (offset < 0) {
        return -1;
    }
    /* Drop what a longer, earlier record left beyond this one. */
    while (ftruncate(fd, offset) != 0) {
        if (errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

int pyfork_payload_write_header(int fd, const unsigned char *token,
                                int encoding, uint64_t body_size)
{
    unsigned char header[PYFORK_HEADER_SIZE];
    build_header(header, token, encoding, body_size);

    size_t done = 0;
    while (done < sizeof header) {
        ssize_t n = pwrite(fd, header + done, sizeof header - done,
                           (off_t)done);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

int pyfork_payload_open_named(const char *path)
{
    return open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
}

int pyfork_payload_check(int fd, int named, const unsigned char *token,
                         struct pyfork_payload_info *info)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        return PYFORK_E_NOT_REGULAR;
    }
    if (st.st_uid != geteuid()) {
        return PYFORK_E_OWNER;
    }
    /* A memfd has mode 0777 and no link, and no other process can name
     * it, so these checks apply to named files only. */
    if (named && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        return PYFORK_E_MODE;
    }
    if (named && st.st_nlink != 1) {
        return PYFORK_E_LINKS;
    }

    unsigned char header[PYFORK_HEADER_SIZE];
    int status = pyfork_read_at(fd, header, sizeof header, 0);
    if (status != 0) {
        return status;
    }
    if (memcmp(header, header_magic, sizeof header_magic) != 0) {
        return PYFORK_E_MAGIC;
    }
    if (header[6] != PYFORK_PROTOCOL_VERSION) {
        return PYFORK_E_VERSION;
    }
    if (memcmp(header + 8, token, PYFORK_TOKEN_SIZE) != 0) {
        return PYFORK_E_TOKEN;
    }
    uint64_t body_size = load_u64_le(header + 24);
    if ((uint64_t)st.st_size < PYFORK_HEADER_SIZE ||
        (uint64_t)st.st_size - PYFORK_HEADER_SIZE != body_size) {
        return PYFORK_E_SIZE;
    }
    info->encoding = header[7];
    info->body_size = body_size;
    return 0;
}

int pyfork_read_at(int fd, void *buf, size_t size, uint64_t offset)
{
    char *out = buf;
    while (size > 0) {
        if (offset > (uint64_t)INT64_MAX) {
            return PYFORK_E_SIZE;
        }
        ssize_t n = pread(fd, out, size, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (n == 0) {
            return PYFORK_E_SIZE;
        }
        out += n;
        size -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

int pyfork_unlink(const char *path) { return unlink(path); }

/* Starting a child */

/*
 * Return the marker entry "NAME=VERSION:TOKEN:RESULT:fd:N" or
 * "NAME=VERSION:TOKEN:RESULT:path:PATH" in a malloc() block, or NULL with
 * errno set.
 */
static char *format_marker_entry(const struct pyfork_start_request *request,
                                 int result_fd, int payload_fd)
{
    static const char digits[] = "0123456789abcdef";
    char token_hex[2 * PYFORK_TOKEN_SIZE + 1];
    for (size_t i = 0; i < PYFORK_TOKEN_SIZE; i++) {
        token_hex[2 * i] = digits[request->token[i] >> 4];
        token_hex[2 * i + 1] = digits[request->token[i] & 0xf];
    }
    token_hex[2 * PYFORK_TOKEN_SIZE] = '\0';

    const char *path = request->payload_path;
    /* The fixed part is the version, two ints and the separators. */
    size_t size = strlen(request->marker_name) + sizeof token_hex + 64;
    if (path != NULL) {
        size += strlen(path);
    }
    char *entry = malloc(size);
    if (entry == NULL) {
        return NULL;
    }
    int n;
    if (path != NULL) {
        n = snprintf(entry, size, "%s=%d:%s:%d:path:%s", request->marker_name,
                     PYFORK_PROTOCOL_VERSION, token_hex, result_fd, path);
    } else {
        n = snprintf(entry, size, "%s=%d:%s:%d:fd:%d", request->marker_name,
                     PYFORK_PROTOCOL_VERSION, token_hex, result_fd,
                     payload_fd);
    }
    if (n < 0 || (size_t)n >= size) {
        free(entry);
        errno = EOVERFLOW;
        return NULL;
    }
    return entry;
}

/*
 * Create an anonymous file that contains a header and `body`. Returns the
 * fd, or -1 with errno set and *failed_step set to `create_step` or
 * `write_step`.
 */
static int create_written(const struct pyfork_start_request *request,
                          int encoding, const void *body, size_t body_size,
                          int create_step, int write_step, int *failed_step)
{
    int fd = pyfork_payload_create_anonymous(request->fallback_dir);
    if (fd < 0) {
        *failed_step = create_step;
        return -1;
    }
    /* A new file is empty, so nothing is left to truncate. */
    if (write_record(fd, request->token, encoding, body, body_size) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        *failed_step = write_step;
        return -1;
    }
    return fd;
}

/* Spawn the child of `request` with the result and payload fds kept. */
static int spawn_with_marker(const struct pyfork_start_request *request,
                             const struct pyfork_spawn_options *options,
                             pyfork_env_builder build_env, int result_fd,
                             int payload_fd, pid_t *pid)
{
    /* A named payload file is opened by path, so its fd stays behind. */
    int passes_payload = request->payload_path == NULL;
    size_t n_keep = options->n_keep_fds + (passes_payload ? 2 : 1);
    int *keep = malloc(n_keep * sizeof *keep);
    if (keep == NULL) {
        return -1;
    }
    size_t i = 0;
    keep[i++] = result_fd;
    if (passes_payload) {
        keep[i++] = payload_fd;
    }
    for (size_t j = 0; j < options->n_keep_fds; j++) {
        keep[i++] = options->keep_fds[j];
    }
    struct pyfork_spawn_options with_files = *options;
    with_files.keep_fds = keep;
    with_files.n_keep_fds = n_keep;

    int status = -1;
    char **env = NULL;
    char *entry = format_marker_entry(request, result_fd, payload_fd);
    if (entry != NULL) {
        env = build_env(request->env, request->marker_name, entry);
    }
    if (env != NULL) {
        status = pyfork_spawn(pid, request->executable, request->argv, env,
                              &with_files);
    }
    int saved = errno;
    pyfork_env_free(env);
    free(entry);
    free(keep);
    errno = saved;
    return status;
}

int pyfork_start(const struct pyfork_start_request *request,
                 const struct pyfork_spawn_options *options,
                 pyfork_env_builder build_env, struct pyfork_started *started)
{
    started->pid = -1;
    started->result_fd = -1;
    started->failed_step = 0;
    /* The empty record carries the token, so the child can tell that the
     * fd it is given is this file. */
    int result_fd = create_written(request, 0, NULL, 0,
                                   PYFORK_START_RESULT_FILE,
                                   PYFORK_START_RESULT_WRITE,
                                   &started->failed_step);
    if (result_fd < 0) {
        return -1;
    }

    int payload_fd = request->payload_fd;
    if (payload_fd < 0) {
        payload_fd = create_written(
            request, request->encoding, request->body, request->body_size,
            PYFORK_START_PAYLOAD_FILE, PYFORK_START_PAYLOAD_WRITE,
            &started->failed_step);
        if (payload_fd < 0) {
            int saved = errno;
            close(result_fd);
            errno = saved;
            return -1;
        }
    }

    started->failed_step = PYFORK_START_SPAWN;
    pid_t pid;
    int status = spawn_with_marker(request, options, build_env, result_fd,
                                   payload_fd, &pid);
    int saved = errno;
    if (payload_fd != request->payload_fd) {
        close(payload_fd); /* the child has its own copy now */
    }
    if (status != 0) {
        close(result_fd);
        errno = saved;
        return -1;
    }
    started->pid = pid;
    started->result_fd = result_fd;
    started->failed_step = 0;
    return 0;
}
