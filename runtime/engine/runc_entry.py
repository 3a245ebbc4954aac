"""`rewarm-runc-engine`: the Python half of the runc-compatible runtime. The front decides (standard
library only); only an annotated `create` imports the rest of the engine."""
from __future__ import annotations

import sys

from runtime.front import dispatch


def main() -> None:
    call, annotations = dispatch.route(sys.argv[1:])   # execs the real runtime unless the create is ours
    from runtime.engine import create
    create.create(call, annotations)


if __name__ == "__main__":
    main()
