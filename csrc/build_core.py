"""Build pyfork._core with cffi in API mode.

setup.py names this module in ``cffi_modules``. Set PYFORK_STRICT_BUILD=1
to compile with -Werror, as CI does.
"""

import os
import pathlib
import re

from cffi import FFI

CSRC = pathlib.Path(__file__).resolve().parent
VERSION_FILE = CSRC.parent / "src" / "pyfork" / "_version.py"


def read_version() -> str:
    text = VERSION_FILE.read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no __version__ line in {VERSION_FILE}")
    return match.group(1)


def read_cdef() -> str:
    header = (CSRC / "pyfork_core.h").read_text(encoding="utf-8")
    _, _, rest = header.partition("/* cdef begin */")
    declarations, found, _ = rest.partition("/* cdef end */")
    if not found:
        raise RuntimeError("pyfork_core.h lacks its cdef markers")
    return declarations


# cffi releases the GIL around every call. These wrappers take it back
# while the process environment is read or changed, because Python
# threads call setenv() and unsetenv() (through os.environ) with the GIL
# held. That makes the GIL the lock that keeps the environment stable.
GIL_WRAPPERS_CDEF = """
char **pyfork_env_build_locked(char *const *base, const char *name,
                               const char *entry);
ssize_t pyfork_env_take_locked(const char *name, char *buf, size_t size);
"""

GIL_WRAPPERS_SOURCE = """
#include <errno.h>
#include "pyfork_core.h"

static char **pyfork_env_build_locked(char *const *base, const char *name,
                                      const char *entry)
{
    PyGILState_STATE state = PyGILState_Ensure();
    char **env = pyfork_env_build(base, name, entry);
    int saved = errno;
    PyGILState_Release(state);
    errno = saved;
    return env;
}

static ssize_t pyfork_env_take_locked(const char *name, char *buf,
                                      size_t size)
{
    PyGILState_STATE state = PyGILState_Ensure();
    ssize_t len = pyfork_env_take(name, buf, size);
    int saved = errno;
    PyGILState_Release(state);
    errno = saved;
    return len;
}
"""

compile_args = ["-std=c11", "-Wall", "-Wextra"]
if os.environ.get("PYFORK_STRICT_BUILD") == "1":
    compile_args.append("-Werror")

ffibuilder = FFI()
ffibuilder.cdef("typedef int... pid_t;\n" + read_cdef() + GIL_WRAPPERS_CDEF)
ffibuilder.set_source(
    "pyfork._core",
    GIL_WRAPPERS_SOURCE,
    # setuptools runs the build from the project root and wants relative
    # source paths.
    sources=["csrc/pyfork_core.c"],
    include_dirs=["csrc"],
    define_macros=[("PYFORK_VERSION", f'"{read_version()}"')],
    extra_compile_args=compile_args,
    libraries=["dl"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
