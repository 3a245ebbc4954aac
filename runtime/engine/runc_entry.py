"""`rewarm-runc-engine`: the Python half of the runc-compatible runtime. rewarm-runc (packaging/bin,
POSIX sh) is the one router: it sends here only the `create` (or `run`) of a bundle that mentions
rewarm.dev/, and this takes nothing else. The create pipeline reads the annotations itself."""
from __future__ import annotations

import sys

from runtime.front import runc_argv


def main() -> None:
    call = runc_argv.parse(sys.argv[1:])
    if call.verb not in ("create", "run") or not call.container_id:
        print("rewarm-runc-engine takes the create and run calls rewarm-runc sends it; call rewarm-runc",
              file=sys.stderr)
        sys.exit(2)
    from runtime.engine import create
    create.create(call)


if __name__ == "__main__":
    main()
