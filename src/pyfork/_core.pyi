# The compiled core, built by cffi from csrc/. Its values are untyped
# cdata, so only _cbackend touches them.
from typing import Any

ffi: Any
lib: Any
