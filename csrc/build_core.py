"""Build pyfork._core with cffi in API mode.

setup.py names this module in ``cffi_modules``. Set PYFORK_STRICT_BUILD=1
to compile with -Werror, as CI does.
"""

import os
import pathlib
import platform
import re
import sys
import sysconfig

from cffi import FFI

CSRC = pathlib.Path(__file__).resolve().parent
VERSION_FILE = CSRC.parent / "src" / "pyfork" / "__init__.py"

# The oldest CPython whose stable ABI the core is compiled against, as a
# wheel tag (setup.py tags the wheel with it) and as a Py_LIMITED_API
# value. One cp310-abi3 wheel then installs on every CPython from 3.10 on.
LIMITED_API_TAG = "cp310"
LIMITED_API_HEX = "0x030A0000"

# Debug builds (sys.gettotalrefcount exists) and free-threaded builds
# (Py_GIL_DISABLED) cannot use the limited API, and PyPy has its own ABI.
# Those get a core for the running interpreter only, as cffi does by
# default.
STABLE_ABI = (
    platform.python_implementation() == "CPython"
    and not hasattr(sys, "gettotalrefcount")
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
)


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
int pyfork_start_locked(const struct pyfork_start_request *request,
                        const struct pyfork_spawn_options *options,
                        struct pyfork_started *started);
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

/* pyfork_start() with the GIL held only while the environment is read. */
static int pyfork_start_locked(const struct pyfork_start_request *request,
                               const struct pyfork_spawn_options *options,
                               struct pyfork_started *started)
{
    return pyfork_start(request, options, pyfork_env_build_locked, started);
}
"""

compile_args = ["-std=c11", "-Wall", "-Wextra"]
if os.environ.get("PYFORK_STRICT_BUILD") == "1":
    compile_args.append("-Werror")

macros = [("PYFORK_VERSION", f'"{read_version()}"')]
if STABLE_ABI:
    # Defined here, Py_LIMITED_API overrides the 3.2 level that cffi
    # would pick, so the core's ABI level matches the wheel tag.
    macros.append(("Py_LIMITED_API", LIMITED_API_HEX))

ffibuilder = FFI()
ffibuilder.cdef("typedef int... pid_t;\n" + read_cdef() + GIL_WRAPPERS_CDEF)
ffibuilder.set_source(
    "pyfork._core",
    GIL_WRAPPERS_SOURCE,
    # setuptools runs the build from the project root and wants relative
    # source paths.
    sources=["csrc/pyfork_core.c"],
    include_dirs=["csrc"],
    define_macros=macros,
    extra_compile_args=compile_args,
    libraries=["dl"],
    # True names the file _core.abi3.so, False makes cffi leave
    # Py_LIMITED_API undefined.
    py_limited_api=STABLE_ABI,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
