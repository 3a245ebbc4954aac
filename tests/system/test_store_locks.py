"""`rewarm gc` and `rewarm rm` beside a snapshot in use: a restore holds its name's read lock from
the moment it picks the entry until its worker's resume hook has answered, which a slow or stuck
worker can stretch. gc skips that name and goes on; rm of it waits a bounded time and says why;
neither blocks the rest of the store."""
from __future__ import annotations

import time

from helpers import rewarm_cli
from registry_fixtures import synthetic_entry
from runtime.snapshot import store


def test_gc_and_rm_skip_or_refuse_a_name_in_use_and_never_block_the_rest(node):
    st = store.Store(node.store).ensure()
    busy = synthetic_entry(node, "busy", b"b" * 4096)
    idle = synthetic_entry(node, "idle", b"i" * 4096)
    other = synthetic_entry(node, "other", b"o" * 4096)
    with st.reading("default", "busy"):   # as a restore holds it through a stuck resume hook
        t = time.monotonic()
        gc = rewarm_cli("gc", "--max-bytes", "0", timeout=60)
        assert gc.returncode == 0 and time.monotonic() - t < 10, gc.stderr
        assert idle.path in gc.stdout and other.path in gc.stdout and busy.path not in gc.stdout
        assert [e.name for e in st.all_entries()] == ["busy"]
        t = time.monotonic()
        rm = rewarm_cli("rm", "busy", timeout=60)
        assert rm.returncode != 0 and "snapshot default/busy is in use" in rm.stderr, rm.stderr
        assert time.monotonic() - t < store.REMOVE_WAIT_S + 5
        synthetic_entry(node, "again", b"a" * 4096)
        t = time.monotonic()
        assert rewarm_cli("rm", "again", timeout=60).returncode == 0 and time.monotonic() - t < 5
        assert not st.entries("default", "again")
    assert rewarm_cli("rm", "busy", timeout=60).returncode == 0   # free again: removed at once
    assert st.all_entries() == []
