"""Reading a runc command line without a flag library, as runc's own flag library reads it.

rewarm-runc's sh front door decides which calls reach Python; this splits what reaches it into
global flags, the verb and the verb's own flags, and never interprets what it does not need. Its
tables of the flags that take a value are the one list: the sh door's case lists are held to them,
and both sides' routing of every runc verb and flag spelling to each other (tests/unit/test_front.py).
"""
from __future__ import annotations

# Global flags of runc that take a value (all others are booleans such as --debug, --systemd-cgroup).
GLOBAL_VALUE_FLAGS = frozenset({"--root", "--log", "--log-format", "--criu", "--rootless"})

# Per-verb flags that take a value; only verbs rewarm acts on need to be listed.
VERB_VALUE_FLAGS = {
    "create": frozenset({"--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds"}),
    "run": frozenset({"--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds"}),
    "start": frozenset(),
    "delete": frozenset(),
}


class RuncCall:
    """One runc invocation, split. A plain class: dataclasses cost ~8 ms to import on this path."""
    __slots__ = ("argv", "globals", "verb", "options", "container_id")

    def __init__(self, argv: list[str], globals_: dict[str, str | bool], verb: str | None,
                 options: dict[str, str | bool] | None = None, container_id: str | None = None) -> None:
        self.argv = argv                  # the full argv, program name excluded
        self.globals = globals_           # "--root" -> "/run/runc", "--debug" -> True
        self.verb = verb
        self.options = options or {}      # the verb's own flags
        self.container_id = container_id

    @property
    def root(self) -> str:
        return str(self.globals.get("--root") or "/run/runc")

    @property
    def bundle(self) -> str:
        return str(self.options.get("--bundle") or self.options.get("-b") or ".")

    @property
    def pid_file(self) -> str | None:
        value = self.options.get("--pid-file")
        return value if isinstance(value, str) and value else None

    @property
    def log(self) -> str | None:
        """The runtime log the caller named (--log), where runc and rewarm write."""
        value = self.globals.get("--log")
        return value if isinstance(value, str) and value else None

    @property
    def no_pivot(self) -> bool:
        return bool(self.options.get("--no-pivot"))


def _split_flag(arg: str) -> tuple[str, str | None]:
    """'--root=/x' -> ('--root', '/x'); '-root' is runc's single-dash spelling of '--root'."""
    name, eq, value = arg.partition("=")
    if name.startswith("-") and not name.startswith("--") and len(name) > 2:
        name = "-" + name
    return name, (value if eq else None)


def _take_flags(args: list[str], i: int, value_flags: frozenset[str],
                into: dict[str, str | bool]) -> int:
    """Consume flags from args[i:] into `into`; return the index of the first positional."""
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        if args[i] == "--":
            return i + 1
        name, value = _split_flag(args[i])
        if name in value_flags and value is None:
            value = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        into[name] = True if value is None else value
        i += 1
    return i


def parse(argv: list[str]) -> RuncCall:
    global_flags: dict[str, str | bool] = {}
    i = _take_flags(argv, 0, GLOBAL_VALUE_FLAGS, global_flags)
    if i >= len(argv):
        return RuncCall(argv, global_flags, None)
    verb = argv[i]
    if verb not in VERB_VALUE_FLAGS:
        return RuncCall(argv, global_flags, verb)
    options: dict[str, str | bool] = {}
    j = _take_flags(argv, i + 1, VERB_VALUE_FLAGS[verb], options)
    # runc also accepts flags after the container id ("create ID --bundle B").
    container_id = argv[j] if j < len(argv) else None
    _take_flags(argv, j + 1, VERB_VALUE_FLAGS[verb], options)
    return RuncCall(argv, global_flags, verb, options, container_id)
