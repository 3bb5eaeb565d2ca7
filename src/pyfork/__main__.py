"""The pyfork command line: ``python -m pyfork doctor|bench ...``."""

from __future__ import annotations

import sys

USAGE = """\
usage: python -m pyfork COMMAND [ARGS]

commands:
  doctor   show what a child of a program would run, or why pyfork
           refuses to re-execute it
  bench    measure spawn latency against other ways to start a process

Run 'python -m pyfork COMMAND --help' for a command's options.
"""


def main(arguments: list[str]) -> int:
    """Run the command named by the first argument."""
    if not arguments or arguments[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if arguments else 2
    command, rest = arguments[0], arguments[1:]
    if command == "doctor":
        from ._doctor import main as doctor_main

        return doctor_main(rest)
    if command == "bench":
        from ._bench import main as bench_main

        status: int = bench_main(rest)
        return status
    print(f"unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
