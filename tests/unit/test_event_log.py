"""The event log is bounded and read by position. Several rewarm processes append at once and it
rotates to one previous file at event_log_max_bytes with no line torn or lost; the follower (what
`rewarm agent` posts from) gives every complete record once through a rotation, a copytruncate, a
truncation, a removal and torn lines with bytes that are not UTF-8; a container's stop finds its
start reading backwards; the metrics' running totals count every event once, however often and
however many readers fold them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from runtime.observe import logs, metrics
from runtime.model.errors import SettingsError
from runtime.model.events import EventKind
from runtime.model.settings import from_mapping

NO_BOUND = 1 << 40
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def append(log: str, bound: int = NO_BOUND, **fields: object) -> None:
    logs.append(log, logs.encode({"event": "restored", "namespace": "ns", "snapshot": "s", **fields}), bound)


def pods(batch: list[dict[str, object]]) -> list[object]:
    return [r.get("pod") for r in batch]


def test_concurrent_writers_rotate_to_one_previous_file_and_no_line_is_torn_or_lost(tmp_path):
    log, bound = str(tmp_path / "events.jsonl"), 256 << 10
    writer = ("import sys\nfrom runtime.observe import logs\n"
              "for i in range(2000):\n"
              "    logs.append(sys.argv[1], logs.encode({'event': 'restored', 'pod': f'{sys.argv[2]}-{i}', "
              "'pad': 'x' * 100}), int(sys.argv[3]))\n")
    seen: list[object] = []
    done = threading.Event()

    def follow() -> None:
        for batch in logs.follow(log, poll_s=0.002, most=100_000):
            seen.extend(pods(batch))
            if done.is_set() and not batch:
                return
    follower = threading.Thread(target=follow)
    follower.start()
    writers = [subprocess.Popen([sys.executable, "-c", writer, log, f"w{k}", str(bound)], cwd=CHECKOUT)
               for k in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0] * 4
    done.set()
    follower.join(timeout=30)
    assert len(seen) == 8000 and len(set(seen)) == 8000          # each event once, none lost
    assert sorted(os.listdir(tmp_path)) == ["events.jsonl", "events.jsonl.1", "events.jsonl.lock"]
    for path in (log, logs.previous(log)):
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        assert lines[-1] == b"" and all(logs.record_of(line) for line in lines[:-1])   # no line torn
        assert os.path.getsize(path) < bound + 4 * 200           # the bound, plus what writers added meanwhile


def test_the_follower_never_repeats_a_record_before_a_torn_line_and_keeps_the_one_after_it(tmp_path):
    log = str(tmp_path / "events.jsonl")
    batches = logs.follow(log, poll_s=0.001)
    append(log, pod="a")
    with open(log, "ab") as f:
        f.write(b'{"event": "restored", "pod": "torn-\xff\xfe')    # a writer died mid-line, mid-character
    got = [pods(next(batches)) for _ in range(20)]
    assert got[0] == ["a"] and got[1:] == [[]] * 19              # "a" once, the torn line never
    append(log, pod="b")                                          # runs on from the torn part
    assert pods(next(batches)) == ["b"]
    for i in range(50):                                           # many torn lines, each followed by a record
        with open(log, "ab") as f:
            f.write(b'{"pod": "\xc3')
        append(log, pod=f"c{i}")
    assert pods(next(batches)) == [f"c{i}" for i in range(50)]
    assert pods(next(batches)) == []


def test_the_follower_reads_on_through_a_copytruncate_rotation_and_truncation(tmp_path):
    log = str(tmp_path / "events.jsonl")
    batches = logs.follow(log, poll_s=0.001)
    for i in range(5):
        append(log, pod=f"a{i}")
    assert pods(next(batches)) == [f"a{i}" for i in range(5)]
    for i in range(5, 10):
        append(log, pod=f"a{i}")                                  # not read yet when logrotate comes
    shutil.copyfile(log, logs.previous(log))                      # logrotate's copytruncate
    os.truncate(log, 0)
    for i in range(10, 40):                                       # more than was there before the truncation
        append(log, pod=f"a{i}")
    assert pods(next(batches)) == [f"a{i}" for i in range(5, 40)]
    append(log, pod="b0")
    os.replace(log, logs.previous(log))                           # a rotation by rename, "b0" not read yet
    append(log, pod="b1")
    assert pods(next(batches)) == ["b0", "b1"]
    os.truncate(log, 0)                                           # truncated in place, with no copy
    append(log, pod="c0")
    assert pods(next(batches)) == ["c0"]
    os.remove(log)                                                # removed; the previous file is old news
    append(log, pod="d0")
    assert pods(next(batches)) == ["d0"]
    assert pods(next(batches)) == []


def test_the_follower_knows_a_copy_of_a_log_shorter_than_the_bytes_it_goes_by(tmp_path):
    log = str(tmp_path / "events.jsonl")
    logs.append(log, b'{"pod": "a"}\n', NO_BOUND)
    batches = logs.follow(log, poll_s=0.001)                    # from the end of a 13-byte log
    assert pods(next(batches)) == []
    logs.append(log, b'{"pod": "b"}\n', NO_BOUND)              # not read yet
    shutil.copyfile(log, logs.previous(log))
    os.truncate(log, 0)
    logs.append(log, b'{"pod": "c"}\n', NO_BOUND)
    assert pods(next(batches)) == ["b", "c"]


def test_the_follower_reads_a_log_made_after_it_started_and_one_rotated_twice_between_looks(tmp_path):
    log = str(tmp_path / "events.jsonl")
    batches = logs.follow(log, poll_s=0.001)
    assert pods(next(batches)) == []
    append(log, pod="a")
    assert pods(next(batches)) == ["a"]
    append(log, pod="b")
    os.replace(log, logs.previous(log))
    append(log, pod="c")
    os.replace(log, logs.previous(log))                           # "b"'s file is gone: "c" and "d" are not
    append(log, pod="d")
    assert pods(next(batches)) == ["c", "d"]


def test_a_containers_start_is_found_backwards_in_the_log_or_its_previous_file(tmp_path):
    log, bound = str(tmp_path / "events.jsonl"), 64 << 10
    logs.append(log, logs.encode({"event": "cold-start", "container": "c1", "reason": "first"}), bound)
    logs.append(log, logs.encode({"event": "restored", "container": "c1", "reason": "second"}), bound)
    for i in range(500):                                          # the start is in the previous file now
        logs.append(log, logs.encode({"event": "prestart", "container": f"c1{i}", "pad": "x" * 100}), bound)
    assert os.path.exists(logs.previous(log))
    starts = (EventKind.RESTORED, EventKind.COLD_START)
    assert (logs.last_event(log, "c1", starts) or {}).get("reason") == "second"
    assert logs.last_event(log, "c1", [EventKind.CAPTURED]) is None
    assert logs.last_event(log, "c", starts) is None               # a prefix of another id is not that id


def test_metric_totals_count_every_event_once_across_rotations_and_concurrent_folds(tmp_path):
    log, bound = str(tmp_path / "events.jsonl"), 16 << 10
    written: list[dict[str, object]] = []
    for round_ in range(20):
        for i in range(50):   # ~9 KiB: at most one rotation between two folds
            record = {"event": ("restored", "cold-start", "captured", "stopped")[i % 4], "namespace": "ns",
                      "snapshot": f"s{i % 3}", "seconds": 0.5, "bytes": 100, "reason": "no snapshot ns/s",
                      "outcome": "cold", "n": f"{round_}.{i}"}
            logs.append(log, logs.encode(record), bound)
            written.append(record)
        if round_ % 2:
            metrics.fold(log)
    folder = ("import json, sys\nfrom runtime.observe import metrics\n"
              "print(json.dumps(metrics.fold(sys.argv[1]).to_json(), sort_keys=True))\n")
    folds = [subprocess.run([sys.executable, "-c", folder, log], cwd=CHECKOUT, capture_output=True, text=True)
             for _ in range(1)]
    at_once = [subprocess.Popen([sys.executable, "-c", folder, log], cwd=CHECKOUT, stdout=subprocess.PIPE, text=True)
               for _ in range(4)]
    outs = [json.loads(folds[0].stdout)] + [json.loads(p.communicate(timeout=60)[0]) for p in at_once]
    expected = metrics.totals_of(written)
    assert all(metrics.Totals.from_json(out).counts == expected.counts for out in outs)
    assert all(metrics.Totals.from_json(out).sums == expected.sums for out in outs)
    assert expected.counts["restores"][("ns", "s0")] > 0


def test_metric_totals_start_afresh_from_an_unreadable_state_file(tmp_path):
    log = str(tmp_path / "events.jsonl")
    append(log, pod="a")
    assert metrics.fold(log).counts["restores"] == {("ns", "s"): 1.0}
    with open(log + metrics.STATE, "w") as f:
        f.write("{not json")
    append(log, pod="b")
    assert metrics.fold(log).counts["restores"] == {("ns", "s"): 2.0}   # counted again from the log


def test_the_log_bound_is_a_setting_and_too_small_a_one_is_refused():
    assert from_mapping({"event_log_max_bytes": 1 << 20}).event_log_max_bytes == 1 << 20
    with pytest.raises(SettingsError, match="event_log_max_bytes must be at least 4096"):
        from_mapping({"event_log_max_bytes": 100})


def test_event_rotates_at_the_bound_the_node_config_names(tmp_path, monkeypatch):
    log = str(tmp_path / "log" / "events.jsonl")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"event_log": log, "event_log_max_bytes": 4096}))
    monkeypatch.setenv("REWARM_CONFIG", str(config))
    for i in range(100):
        logs.event(log, EventKind.WARMED, namespace="ns", snapshot=f"s{i}")
    assert os.path.getsize(log) < 4096 and 4096 <= os.path.getsize(logs.previous(log)) < 4096 + 200
    assert [r["snapshot"] for r in logs.read_events(log)][-1] == "s99"


def test_a_scan_of_a_big_log_stays_small_and_quick(tmp_path):
    """100k events (some 30 MB): the start of a container near the end is found at once; one that
    is not there costs a pass over the bytes, not a parse of every line."""
    log = str(tmp_path / "events.jsonl")
    with open(log, "wb") as f:
        for i in range(100_000):
            f.write(logs.encode({"event": "restored", "container": f"c{i:08d}", "namespace": "ns", "snapshot": "s",
                                 "reason": "x" * 200, "stages": {"criu": 0.5}}))
    started = time.monotonic()
    assert (logs.last_event(log, "c00099990", [EventKind.RESTORED]) or {}).get("container") == "c00099990"
    assert time.monotonic() - started < 0.05
    started = time.monotonic()
    assert logs.last_event(log, "absent", [EventKind.RESTORED]) is None
    assert time.monotonic() - started < 1.0
