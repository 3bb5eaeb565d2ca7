/*
 * libFuzzer target for the payload reader of pyfork's C core.
 *
 * Each input is the whole content of a payload file. The target writes it
 * to a memfd and checks it as a child checks an inherited payload, with
 * pyfork_payload_check() and then pyfork_read_at() for the body. Besides
 * finding crashes under the sanitizers, it compares each outcome with a
 * model of the header check and aborts on any difference.
 *
 * .ci/fuzz builds and runs it:
 *   clang -fsanitize=fuzzer,address,undefined -DPYFORK_VERSION='"fuzz"'
 *         -Icsrc csrc/fuzz/fuzz_payload.c csrc/pyfork_core.c -ldl
 */
#define _GNU_SOURCE

#include "pyfork_core.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The token that every input is checked against. A seed payload with this
 * token lets the fuzzer reach the checks after the token. */
static const unsigned char fuzz_token[PYFORK_TOKEN_SIZE] = {
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
    0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
};

static void fail(const char *message)
{
    fprintf(stderr, "fuzz_payload: %s\n", message);
    abort();
}

static uint64_t load_u64_le(const uint8_t *in)
{
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--) {
        value = (value << 8) | in[i];
    }
    return value;
}

/* Return the PYFORK_E_* code that a correct check gives, or 0. */
static int expected_status(const uint8_t *data, size_t size)
{
    if (size < PYFORK_HEADER_SIZE) {
        return PYFORK_E_SIZE;
    }
    if (memcmp(data, "PYFORK", 6) != 0) {
        return PYFORK_E_MAGIC;
    }
    if (data[6] != PYFORK_PROTOCOL_VERSION) {
        return PYFORK_E_VERSION;
    }
    if (memcmp(data + 8, fuzz_token, PYFORK_TOKEN_SIZE) != 0) {
        return PYFORK_E_TOKEN;
    }
    if (load_u64_le(data + 24) != size - PYFORK_HEADER_SIZE) {
        return PYFORK_E_SIZE;
    }
    return 0;
}

static int write_memfd(const uint8_t *data, size_t size)
{
    int fd = memfd_create("pyfork-fuzz", MFD_CLOEXEC);
    if (fd < 0) {
        fail("memfd_create() failed");
    }
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            fail("write() to the memfd failed");
        }
        done += (size_t)n;
    }
    return fd;
}

/* Read the body the check accepted, then one byte past the end. */
static void check_body(int fd, const uint8_t *data, size_t size,
                       const struct pyfork_payload_info *info)
{
    size_t body_size = size - PYFORK_HEADER_SIZE;
    if (info->body_size != body_size) {
        fail("info.body_size differs from the file's body size");
    }
    if (info->encoding != data[7]) {
        fail("info.encoding differs from header byte 7");
    }
    /* One spare byte, so that an empty body is a valid allocation too. */
    unsigned char *body = malloc(body_size + 1);
    if (body == NULL) {
        fail("malloc() failed");
    }
    if (pyfork_read_at(fd, body, body_size, PYFORK_HEADER_SIZE) != 0) {
        fail("pyfork_read_at() failed on an accepted body");
    }
    if (memcmp(body, data + PYFORK_HEADER_SIZE, body_size) != 0) {
        fail("pyfork_read_at() returned other bytes than the file's body");
    }
    if (pyfork_read_at(fd, body, body_size + 1, PYFORK_HEADER_SIZE) !=
        PYFORK_E_SIZE) {
        fail("a read past the end of the file did not give PYFORK_E_SIZE");
    }
    free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = write_memfd(data, size);

    struct pyfork_payload_info info;
    memset(&info, 0xa5, sizeof info);
    int status = pyfork_payload_check(fd, 0, fuzz_token, &info);
    if (status == -1) {
        fail("pyfork_payload_check() failed with errno set");
    }
    if (status != expected_status(data, size)) {
        fprintf(stderr, "status %d, expected %d\n", status,
                expected_status(data, size));
        fail("pyfork_payload_check() disagrees with the model");
    }
    if (status == 0) {
        check_body(fd, data, size, &info);
    }

    /* An offset that off_t cannot represent fails, and never wraps. */
    unsigned char byte;
    if (pyfork_read_at(fd, &byte, 1, (uint64_t)INT64_MAX + 1) !=
        PYFORK_E_SIZE) {
        fail("a read at an offset above INT64_MAX did not fail");
    }
    close(fd);
    return 0;
}
