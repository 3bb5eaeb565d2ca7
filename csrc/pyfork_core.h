/*
 * The C surface of pyfork's compiled core.
 *
 * csrc/build_core.py feeds the declarations between the cdef markers to
 * cffi, so that block contains plain declarations only: no preprocessor lines.
 * Functions return -1 and leave errno set when a system call fails.
 * Payload checks that fail return a positive PYFORK_E_* code instead.
 */
#ifndef PYFORK_CORE_H
#define PYFORK_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* cdef begin */

#define PYFORK_TOKEN_SIZE 16
#define PYFORK_HEADER_SIZE 32
#define PYFORK_PROTOCOL_VERSION 1

/* Flags of pyfork_spawn(). */
#define PYFORK_SPAWN_SETSID 1
#define PYFORK_SPAWN_SETPGROUP 2

/* Reasons a payload file is rejected. */
#define PYFORK_E_NOT_REGULAR 1
#define PYFORK_E_OWNER 2
#define PYFORK_E_MODE 3
#define PYFORK_E_LINKS 4
#define PYFORK_E_MAGIC 5
#define PYFORK_E_VERSION 6
#define PYFORK_E_TOKEN 7
#define PYFORK_E_SIZE 8

struct pyfork_payload_info {
    int encoding;
    uint64_t body_size;
};

/* Return the version of the core, which must equal pyfork.__version__. */
const char *pyfork_core_version(void);

/*
 * Build the environment block of a child: the entries of `base` (the
 * process environment when `base` is NULL) without any entry named `name`,
 * then `entry` ("NAME=VALUE", whose NAME must equal `name`).
 * The array and its strings are one malloc() block: release it with
 * pyfork_env_free(). Returns NULL with errno set to EINVAL or ENOMEM.
 * Reading the process environment races with setenv(), putenv() and
 * unsetenv() in other threads: the caller must exclude them.
 */
char **pyfork_env_build(char *const *base, const char *name,
                        const char *entry);

/* Release an environment block from pyfork_env_build(). */
void pyfork_env_free(char **env);

/*
 * Copy the value of the environment variable `name` into `buf` and remove
 * the variable, so no later getenv() or exec finds it.
 * Returns the length of the value; -1 with errno ENOENT when it is not
 * set, or ERANGE when `buf` is too small (the variable is then kept).
 * The same exclusion as pyfork_env_build() applies.
 */
ssize_t pyfork_env_take(const char *name, char *buf, size_t size);

/* The setup of pyfork_spawn()'s child besides argv and envp. */
struct pyfork_spawn_options {
    /* Fds the child keeps at the same numbers, even close-on-exec ones. */
    const int *keep_fds;
    size_t n_keep_fds;
    /* Fds that become the child's 0, 1 and 2; -1 keeps the parent's. */
    int stdio[3];
    /* The directory the child starts in, or NULL for the parent's. */
    const char *cwd;
    /* PYFORK_SPAWN_* flags. */
    int flags;
    /* The process group for PYFORK_SPAWN_SETPGROUP; 0 makes a new one. */
    pid_t pgroup;
};

/*
 * Start `path` with `argv` and `envp` through posix_spawn(), set up as
 * `options` specifies. Every inheritable fd other than 0-2 and the kept fds is
 * closed in the child. The child starts with an empty signal mask and
 * default SIGPIPE and SIGXFSZ dispositions.
 * Stores the child's pid in `*pid` and returns 0, or returns -1 with
 * errno set (ENOSYS when `cwd` is set but glibc is older than 2.29).
 * Allocates nothing that outlives the call and is safe to call from
 * several threads at once.
 */
int pyfork_spawn(pid_t *pid, const char *path, char *const argv[],
                 char *const envp[],
                 const struct pyfork_spawn_options *options);

/*
 * Create an anonymous payload file, open for reading and writing, with
 * close-on-exec set and an fd of 3 or above. It is a memfd. Where
 * memfd_create() fails and `fallback_dir` is not NULL, it is a file in
 * `fallback_dir` that is unlinked before this returns.
 * Returns the fd, or -1 with errno set.
 */
int pyfork_payload_create_anonymous(const char *fallback_dir);

/*
 * Create a named payload file "DIR/pyfork-XXXXXX" with O_EXCL, mode 0600
 * and close-on-exec, at an fd of 3 or above, and write its path into
 * `path`.
 * Returns the fd, or -1 with errno set (ENAMETOOLONG when the path does
 * not fit in `path_size`).
 */
int pyfork_payload_create_named(const char *dir, char *path,
                                size_t path_size);

/*
 * Replace the contents of `fd` with the payload header and `body`,
 * retrying short writes and EINTR. Returns 0, or -1 with errno set.
 */
int pyfork_payload_write(int fd, const unsigned char *token, int encoding,
                         const void *body, size_t body_size);

/*
 * Write the payload header at offset 0 of `fd`, for a body of `body_size`
 * bytes already written after it. Returns 0, or -1 with errno set.
 */
int pyfork_payload_write_header(int fd, const unsigned char *token,
                                int encoding, uint64_t body_size);

/*
 * Open a named payload file for reading without following a symbolic
 * link at `path` (which fails with ELOOP) and without blocking on a FIFO.
 * Returns the fd, or -1 with errno set.
 */
int pyfork_payload_open_named(const char *path);

/*
 * Check an open payload file and its header against `token`: a regular
 * file, owned by the effective uid, without group or other permission
 * bits and with one link when `named` is non-zero, and exactly as long as
 * its header states. Fills `info` and returns 0, returns a PYFORK_E_* code, or returns
 * -1 with errno set.
 */
int pyfork_payload_check(int fd, int named, const unsigned char *token,
                         struct pyfork_payload_info *info);

/*
 * Read exactly `size` bytes at `offset` of `fd` into `buf`, retrying
 * short reads and EINTR. Returns 0, PYFORK_E_SIZE when the file ends
 * first, or -1 with errno set.
 */
int pyfork_read_at(int fd, void *buf, size_t size, uint64_t offset);

/* Remove a named payload file. Returns 0, or -1 with errno set. */
int pyfork_unlink(const char *path);

/* The steps of pyfork_start(), as struct pyfork_started names the one
 * that failed: creating a file, writing it, or the spawn. */
#define PYFORK_START_RESULT_FILE 1
#define PYFORK_START_PAYLOAD_FILE 2
#define PYFORK_START_SPAWN 3
#define PYFORK_START_RESULT_WRITE 4
#define PYFORK_START_PAYLOAD_WRITE 5

/* pyfork_env_build(), or a wrapper of it that excludes other threads. */
typedef char **(*pyfork_env_builder)(char *const *base, const char *name,
                                     const char *entry);

/* The child that pyfork_start() starts. */
struct pyfork_start_request {
    const char *executable;
    char *const *argv;
    /* The child's environment before the marker, or NULL for the
     * process environment. */
    char *const *env;
    /* The marker variable's name, and the token that the marker and both
     * files carry. */
    const char *marker_name;
    const unsigned char *token;
    /* A file that contains the payload already, with its path when it is
     * named. With -1, the body below goes into a new anonymous file. */
    int payload_fd;
    const char *payload_path;
    int encoding;
    const void *body;
    size_t body_size;
    /* The directory of anonymous files when memfd_create() fails, or
     * NULL. */
    const char *fallback_dir;
};

struct pyfork_started {
    pid_t pid;
    /* The result file, which contains an empty record with the token. */
    int result_fd;
    /* 0, or the PYFORK_START_* step that failed. */
    int failed_step;
};

/*
 * Start a pyfork child in one call: create the anonymous result file
 * with an empty record, create and write the anonymous payload file
 * unless request->payload_fd is set, add the marker to the environment
 * through `build_env`, and spawn as pyfork_spawn() does, with the result
 * fd, the payload fd (unless the file is named) and options->keep_fds
 * kept in the child. A payload file created here is closed again in the
 * parent.
 * Fills `started` and returns 0, or returns -1 with errno set and
 * started->failed_step, with every fd it created closed.
 */
int pyfork_start(const struct pyfork_start_request *request,
                 const struct pyfork_spawn_options *options,
                 pyfork_env_builder build_env,
                 struct pyfork_started *started);

/* cdef end */

#endif
