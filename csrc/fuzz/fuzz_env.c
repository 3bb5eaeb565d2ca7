/*
 * libFuzzer target for the environment functions of pyfork's C core.
 *
 * Input layout: byte 0 is the buffer size for pyfork_env_take(). The rest
 * is split at NUL bytes into a variable name, a value, and the entries of
 * a base environment. The target checks these invariants:
 *
 * - pyfork_env_build() rejects an empty name or one with '=' (EINVAL), and
 *   an entry of another name. Otherwise it returns the base entries that
 *   are not named `name`, in order, then the entry, which so appears
 *   exactly once.
 * - pyfork_env_build() with a NULL base reads the process environment.
 * - pyfork_env_take() copies a scratch variable's value and removes it, or
 *   fails with ERANGE and keeps it when the buffer is too small, and fails
 *   with ENOENT once it is gone.
 *
 * .ci/fuzz builds and runs it:
 *   clang -fsanitize=fuzzer,address,undefined -DPYFORK_VERSION='"fuzz"'
 *         -Icsrc csrc/fuzz/fuzz_env.c csrc/pyfork_core.c -ldl
 */
#define _GNU_SOURCE

#include "pyfork_core.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The variable that pyfork_env_take() removes. Only this target uses it. */
#define SCRATCH_NAME "PYFORK_FUZZ_SCRATCH"

static void fail(const char *message)
{
    fprintf(stderr, "fuzz_env: %s\n", message);
    abort();
}

/* The input split at NUL bytes, each piece in its own allocation so that
 * AddressSanitizer detects a read past the end of any of them. */
struct pieces {
    char **items;
    size_t count;
};

static struct pieces split(const uint8_t *data, size_t size)
{
    struct pieces out = {NULL, 0};
    size_t max_count = 1;
    for (size_t i = 0; i < size; i++) {
        max_count += data[i] == 0;
    }
    out.items = calloc(max_count + 1, sizeof(char *));
    if (out.items == NULL) {
        fail("calloc() failed");
    }
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && data[i] != 0) {
            continue;
        }
        size_t len = i - start;
        char *item = malloc(len + 1);
        if (item == NULL) {
            fail("malloc() failed");
        }
        memcpy(item, data + start, len);
        item[len] = '\0';
        out.items[out.count++] = item;
        start = i + 1;
    }
    return out;
}

static void free_pieces(struct pieces *pieces)
{
    for (size_t i = 0; i < pieces->count; i++) {
        free(pieces->items[i]);
    }
    free(pieces->items);
}

static int has_name(const char *entry, const char *name)
{
    size_t len = strlen(name);
    return strncmp(entry, name, len) == 0 && entry[len] == '=';
}

static char *make_entry(const char *name, const char *value)
{
    size_t name_len = strlen(name);
    size_t value_len = strlen(value);
    char *entry = malloc(name_len + value_len + 2);
    if (entry == NULL) {
        fail("malloc() failed");
    }
    memcpy(entry, name, name_len);
    entry[name_len] = '=';
    memcpy(entry + name_len + 1, value, value_len + 1);
    return entry;
}

/* Check a block from pyfork_env_build() against its base. A NULL base
 * stands for `environ` as it was at the call. */
static void check_block(char **block, char *const *base, const char *name,
                        const char *entry)
{
    size_t out = 0;
    for (char *const *p = base; *p != NULL; p++) {
        if (has_name(*p, name)) {
            continue;
        }
        if (block[out] == NULL || strcmp(block[out], *p) != 0) {
            fail("an entry of the base is missing or out of order");
        }
        out++;
    }
    if (block[out] == NULL || strcmp(block[out], entry) != 0) {
        fail("the entry is not after the base entries");
    }
    if (block[out + 1] != NULL) {
        fail("the block has entries after the new entry");
    }
    size_t named = 0;
    for (char **p = block; *p != NULL; p++) {
        named += has_name(*p, name);
    }
    if (named != 1) {
        fail("the name does not appear exactly once");
    }
}

static void fuzz_build(char *const *base, const char *name, const char *value)
{
    char *entry = make_entry(name, value);
    int valid = name[0] != '\0' && strchr(name, '=') == NULL;

    errno = 0;
    char **block = pyfork_env_build(base, name, entry);
    if (!valid) {
        if (block != NULL || errno != EINVAL) {
            fail("an invalid name was not rejected with EINVAL");
        }
        free(entry);
        return;
    }
    if (block == NULL) {
        fail("pyfork_env_build() failed on a valid name");
    }
    check_block(block, base, name, entry);
    pyfork_env_free(block);

    /* An entry for another name is rejected. */
    char *other = make_entry("PYFORK_FUZZ_OTHER", value);
    if (strcmp(name, "PYFORK_FUZZ_OTHER") != 0) {
        errno = 0;
        if (pyfork_env_build(base, name, other) != NULL || errno != EINVAL) {
            fail("an entry for another name was not rejected with EINVAL");
        }
    }
    free(other);
    free(entry);
}

static void fuzz_take(const char *value, size_t buffer_size)
{
    extern char **environ;

    /* putenv() rather than setenv(): glibc keeps every string that
     * setenv() allocated until exit, which would grow without bound. */
    char *scratch = make_entry(SCRATCH_NAME, value);
    if (putenv(scratch) != 0) {
        fail("putenv() failed");
    }
    /* A NULL base reads the process environment, scratch included. */
    char *entry = make_entry(SCRATCH_NAME, "marker");
    char **block = pyfork_env_build(NULL, SCRATCH_NAME, entry);
    if (block == NULL) {
        fail("pyfork_env_build() failed on the process environment");
    }
    check_block(block, environ, SCRATCH_NAME, entry);
    pyfork_env_free(block);
    free(entry);

    size_t len = strlen(value);
    char *buffer = malloc(buffer_size == 0 ? 1 : buffer_size);
    if (buffer == NULL) {
        fail("malloc() failed");
    }
    errno = 0;
    ssize_t taken = pyfork_env_take(SCRATCH_NAME, buffer, buffer_size);
    if (len >= buffer_size) {
        const char *kept = getenv(SCRATCH_NAME);
        if (taken != -1 || errno != ERANGE) {
            fail("a value too large for the buffer did not give ERANGE");
        }
        if (kept == NULL || strcmp(kept, value) != 0) {
            fail("the variable changed after ERANGE");
        }
        unsetenv(SCRATCH_NAME);
    } else {
        if (taken != (ssize_t)len || memcmp(buffer, value, len + 1) != 0) {
            fail("pyfork_env_take() returned another value");
        }
        if (getenv(SCRATCH_NAME) != NULL) {
            fail("pyfork_env_take() left the variable set");
        }
    }
    errno = 0;
    if (pyfork_env_take(SCRATCH_NAME, buffer, buffer_size) != -1 ||
        errno != ENOENT) {
        fail("taking a removed variable did not give ENOENT");
    }
    free(buffer);
    free(scratch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    size_t buffer_size = data[0];
    struct pieces pieces = split(data + 1, size - 1);
    const char *name = pieces.items[0];
    const char *value = pieces.count > 1 ? pieces.items[1] : "";
    /* The base entries, NULL-terminated by the calloc() in split(). */
    char *const *base = pieces.count > 2 ? pieces.items + 2 : pieces.items +
                                                                pieces.count;

    fuzz_build(base, name, value);
    fuzz_take(value, buffer_size);
    free_pieces(&pieces);
    return 0;
}
