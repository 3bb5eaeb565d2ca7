"""Fork a registered function: the child is a new run of this program."""

import os

import pyfork


@pyfork.register
def child(n: int) -> None:
    print(f"child({n}) pid: {os.getpid()}")


pyfork.init()  # in the child: runs child(1) and exits here

if __name__ == "__main__":
    print(f"main() pid: {os.getpid()}", flush=True)
    pyfork.fork("child", 1).wait()
