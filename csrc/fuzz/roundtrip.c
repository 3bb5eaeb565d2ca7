/*
 * A round trip through every function of pyfork's C core, for valgrind.
 *
 * It writes, checks and reads an anonymous and a named payload. It builds
 * a child environment and spawns /bin/sh with it, a kept fd and a pipe as
 * its stdout. It takes a variable out of the environment, and checks the
 * error paths on the way. It exits 0 when every step gives the documented result, and
 * prints the failed step and exits 1 otherwise. It must also leave no fd
 * open and, under valgrind, no leak and no invalid access.
 *
 * .ci/sanitize builds it without sanitizers and runs it:
 *   gcc -g -O0 -DPYFORK_VERSION='"roundtrip"' -Icsrc
 *       csrc/fuzz/roundtrip.c csrc/pyfork_core.c -ldl
 *   valgrind --error-exitcode=1 --leak-check=full ./roundtrip [DIR]
 * DIR is where the named payload goes, by default /tmp.
 */
#define _GNU_SOURCE

#include "pyfork_core.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

static const unsigned char token[PYFORK_TOKEN_SIZE] = {
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
    0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
};
static const char body[] = "the body of the round trip";
static const char long_body[] =
    "a longer body that the next, shorter write must cut off";

static int failures = 0;

static void check(int ok, const char *step)
{
    if (!ok) {
        fprintf(stderr, "roundtrip: %s failed (errno %d: %s)\n", step, errno,
                strerror(errno));
        failures++;
    }
}

/* Return the lowest free fd, which is the same before and after a run
 * that leaks none. */
static int lowest_free_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
    }
    return fd;
}

/* Check a payload file and read its body back. */
static void check_and_read(int fd, int named, const char *step)
{
    struct pyfork_payload_info info;
    char read_back[sizeof body];

    int status = pyfork_payload_check(fd, named, token, &info);
    check(status == 0, step);
    if (status != 0) {
        return;
    }
    check(info.encoding == 1, "the encoding byte");
    check(info.body_size == sizeof body, "the body size");
    check(pyfork_read_at(fd, read_back, sizeof read_back,
                         PYFORK_HEADER_SIZE) == 0,
          "pyfork_read_at() of the body");
    check(memcmp(read_back, body, sizeof body) == 0, "the body read back");
    check(pyfork_read_at(fd, read_back, sizeof read_back,
                         PYFORK_HEADER_SIZE + 1) == PYFORK_E_SIZE,
          "pyfork_read_at() past the end");

    unsigned char other[PYFORK_TOKEN_SIZE];
    memcpy(other, token, sizeof other);
    other[0] ^= 1;
    check(pyfork_payload_check(fd, named, other, &info) == PYFORK_E_TOKEN,
          "the check with another token");
}

static void round_trip_anonymous(const char *dir)
{
    int fd = pyfork_payload_create_anonymous(dir);
    check(fd >= 0, "pyfork_payload_create_anonymous()");
    if (fd < 0) {
        return;
    }
    check(fcntl(fd, F_GETFD) == FD_CLOEXEC, "close-on-exec on the memfd");
    /* A longer record first: the second write must truncate it. */
    check(pyfork_payload_write(fd, token, 1, long_body, sizeof long_body) ==
              0,
          "pyfork_payload_write() of the longer body");
    check(pyfork_payload_write(fd, token, 1, body, sizeof body) == 0,
          "pyfork_payload_write() of the body");
    check_and_read(fd, 0, "pyfork_payload_check() of the memfd");
    close(fd);
}

static void round_trip_named(const char *dir)
{
    char path[PATH_MAX];
    char short_path[8];

    errno = 0;
    check(pyfork_payload_create_named(dir, short_path, sizeof short_path) ==
                  -1 &&
              errno == ENAMETOOLONG,
          "ENAMETOOLONG for a short path buffer");

    int fd = pyfork_payload_create_named(dir, path, sizeof path);
    check(fd >= 0, "pyfork_payload_create_named()");
    if (fd < 0) {
        return;
    }
    check(pyfork_payload_write(fd, token, 1, body, sizeof body) == 0,
          "pyfork_payload_write() of the named file");
    close(fd);

    fd = pyfork_payload_open_named(path);
    check(fd >= 0, "pyfork_payload_open_named()");
    if (fd >= 0) {
        check_and_read(fd, 1, "pyfork_payload_check() of the named file");
        close(fd);
    }
    check(pyfork_unlink(path) == 0, "pyfork_unlink()");
    errno = 0;
    check(pyfork_unlink(path) == -1 && errno == ENOENT,
          "ENOENT from pyfork_unlink() of a removed file");
    errno = 0;
    check(pyfork_payload_open_named(path) == -1 && errno == ENOENT,
          "ENOENT from pyfork_payload_open_named() of a removed file");
}

static int run_child(const char *path, char *const argv[], char *const envp[],
                     const struct pyfork_spawn_options *options)
{
    pid_t pid;
    if (pyfork_spawn(&pid, path, argv, envp, options) != 0) {
        return -1;
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            return -1;
        }
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void round_trip_spawn(void)
{
    char **env = pyfork_env_build(NULL, "PYFORK_CHILD",
                                  "PYFORK_CHILD=roundtrip");
    check(env != NULL, "pyfork_env_build() of the process environment");
    if (env == NULL) {
        return;
    }

    /* A kept fd above 2 that is close-on-exec in this process, and a pipe
     * that becomes the child's stdout. */
    int kept = fcntl(0, F_DUPFD_CLOEXEC, 50);
    check(kept >= 0, "fcntl(F_DUPFD_CLOEXEC)");
    int pipe_fds[2] = {-1, -1};
    check(pipe2(pipe_fds, O_CLOEXEC) == 0, "pipe2()");
    char script[200];
    snprintf(script, sizeof script,
             "[ \"$PYFORK_CHILD\" = roundtrip ] && [ -e /proc/self/fd/%d ]"
             " && [ \"$(pwd)\" = / ] && echo through-the-pipe",
             kept);
    char *sh_argv[] = {"/bin/sh", "-c", script, NULL};
    struct pyfork_spawn_options options = {
        .keep_fds = &kept,
        .n_keep_fds = 1,
        .stdio = {-1, pipe_fds[1], -1},
        .cwd = "/",
        .flags = PYFORK_SPAWN_SETSID,
        .pgroup = 0,
    };
    check(run_child("/bin/sh", sh_argv, env, &options) == 0,
          "spawning /bin/sh with the environment, a kept fd, a cwd and a "
          "stdout pipe");
    if (pipe_fds[1] >= 0) {
        close(pipe_fds[1]);
    }
    char output[32] = {0};
    ssize_t n = pipe_fds[0] >= 0
                    ? read(pipe_fds[0], output, sizeof output - 1)
                    : -1;
    check(n > 0 && strcmp(output, "through-the-pipe\n") == 0,
          "the child's stdout through the pipe");
    if (pipe_fds[0] >= 0) {
        close(pipe_fds[0]);
    }

    char *true_argv[] = {"/bin/true", NULL};
    struct pyfork_spawn_options plain = {
        .keep_fds = NULL,
        .n_keep_fds = 0,
        .stdio = {-1, -1, -1},
        .cwd = NULL,
        .flags = PYFORK_SPAWN_SETPGROUP,
        .pgroup = 0,
    };
    check(run_child("/bin/true", true_argv, env, &plain) == 0,
          "spawning /bin/true in a new process group");

    plain.flags = 0;
    errno = 0;
    int missing = run_child("/nonexistent/pyfork", true_argv, env, &plain);
    if (RUNNING_ON_VALGRIND) {
        /* valgrind runs the CLONE_VFORK child of posix_spawn() as a fork,
         * so the exec error only shows as glibc's exit code 127. */
        check(missing == 127, "exit 127 from spawning a missing executable");
    } else {
        check(missing == -1 && errno == ENOENT,
              "ENOENT from spawning a missing executable");
    }
    int bad_fd = -1;
    plain.keep_fds = &bad_fd;
    plain.n_keep_fds = 1;
    errno = 0;
    check(run_child("/bin/true", true_argv, env, &plain) == -1 &&
              errno == EBADF,
          "EBADF from a negative kept fd");

    if (kept >= 0) {
        close(kept);
    }
    pyfork_env_free(env);

    errno = 0;
    check(pyfork_env_build(NULL, "A=B", "A=B=c") == NULL && errno == EINVAL,
          "EINVAL from a name with '='");
}

/* Start /bin/sh through pyfork_start(); it exits 0 when the marker is
 * the expected one and the payload fd it names is open. */
static void round_trip_start(const char *dir)
{
    char *sh_argv[] = {
        "/bin/sh", "-c",
        "case $PYFORK_CHILD in"
        " 1:00112233445566778899aabbccddeeff:*:fd:*)"
        " [ -e /proc/self/fd/${PYFORK_CHILD##*:} ] ;;"
        " 1:00112233445566778899aabbccddeeff:*:path:*) true ;;"
        " *) false ;; esac",
        NULL};
    struct pyfork_start_request request = {
        .executable = "/bin/sh",
        .argv = sh_argv,
        .env = NULL,
        .marker_name = "PYFORK_CHILD",
        .token = token,
        .payload_fd = -1,
        .payload_path = NULL,
        .encoding = 1,
        .body = body,
        .body_size = sizeof body,
        .fallback_dir = NULL,
    };
    struct pyfork_spawn_options options = {
        .keep_fds = NULL,
        .n_keep_fds = 0,
        .stdio = {-1, -1, -1},
        .cwd = NULL,
        .flags = 0,
        .pgroup = 0,
    };
    struct pyfork_started started;
    int status = -1;

    check(pyfork_start(&request, &options, pyfork_env_build, &started) == 0,
          "pyfork_start() with an anonymous payload");
    if (started.pid > 0 && waitpid(started.pid, &status, 0) == started.pid) {
        check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the marker and payload fd seen by pyfork_start()'s child");
    }
    if (started.result_fd >= 0) {
        struct pyfork_payload_info info;
        check(pyfork_payload_check(started.result_fd, 0, token, &info) == 0 &&
                  info.body_size == 0,
              "the empty record in pyfork_start()'s result file");
        close(started.result_fd);
    }

    /* A named payload file that the caller created and still owns. */
    char path[PATH_MAX];
    int payload_fd = pyfork_payload_create_named(dir, path, sizeof path);
    check(payload_fd >= 0, "pyfork_payload_create_named() for the start");
    request.payload_fd = payload_fd;
    request.payload_path = path;
    check(pyfork_start(&request, &options, pyfork_env_build, &started) == 0,
          "pyfork_start() with a named payload");
    if (started.pid > 0 && waitpid(started.pid, &status, 0) == started.pid) {
        check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the marker seen by pyfork_start()'s child, named payload");
    }
    if (started.result_fd >= 0) {
        close(started.result_fd);
    }
    check(fcntl(payload_fd, F_GETFD) >= 0,
          "the caller's payload fd left open by pyfork_start()");
    close(payload_fd);
    unlink(path);

    /* A missing executable fails in the spawn step. Under valgrind the
     * failure is the child's exit code 127 instead. */
    request.payload_fd = -1;
    request.payload_path = NULL;
    request.executable = "/nonexistent/pyfork";
    errno = 0;
    int started_missing =
        pyfork_start(&request, &options, pyfork_env_build, &started);
    if (RUNNING_ON_VALGRIND) {
        check(started_missing == 0, "pyfork_start() of a missing executable");
        if (started_missing == 0) {
            waitpid(started.pid, &status, 0);
            close(started.result_fd);
        }
    } else {
        check(started_missing == -1 && errno == ENOENT &&
                  started.failed_step == PYFORK_START_SPAWN &&
                  started.result_fd == -1,
              "ENOENT from pyfork_start() of a missing executable");
    }
}

static void round_trip_take(void)
{
    char buffer[16];
    char tiny[4];

    check(setenv("PYFORK_ROUNDTRIP", "value", 1) == 0, "setenv()");
    errno = 0;
    check(pyfork_env_take("PYFORK_ROUNDTRIP", tiny, sizeof tiny) == -1 &&
              errno == ERANGE,
          "ERANGE from pyfork_env_take() with a small buffer");
    check(getenv("PYFORK_ROUNDTRIP") != NULL,
          "the variable kept after ERANGE");
    check(pyfork_env_take("PYFORK_ROUNDTRIP", buffer, sizeof buffer) == 5 &&
              strcmp(buffer, "value") == 0,
          "pyfork_env_take()");
    check(getenv("PYFORK_ROUNDTRIP") == NULL,
          "the variable removed by pyfork_env_take()");
    errno = 0;
    check(pyfork_env_take("PYFORK_ROUNDTRIP", buffer, sizeof buffer) == -1 &&
              errno == ENOENT,
          "ENOENT from pyfork_env_take() of a removed variable");
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    int first_free = lowest_free_fd();

    check(strcmp(pyfork_core_version(), "roundtrip") == 0,
          "pyfork_core_version()");
    round_trip_anonymous(dir);
    round_trip_named(dir);
    round_trip_spawn();
    round_trip_start(dir);
    round_trip_take();

    check(lowest_free_fd() == first_free, "no fd left open");
    if (failures != 0) {
        fprintf(stderr, "roundtrip: %d steps failed\n", failures);
        return 1;
    }
    puts("roundtrip: every step passed");
    return 0;
}
