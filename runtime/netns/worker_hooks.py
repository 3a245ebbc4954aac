"""The worker's own hooks around a capture (model/hooks.py, model/engines.py): rewarm calls them in
order inside the container's network namespace, and each must answer 2xx.

  quiesce  before a capture: drop what need not be saved (KV cache, allocator caches, free heap,
           weights it can read back); vLLM's /sleep and SGLang's release_memory_occupation are such hooks
  resume   after a capture (the source keeps running) and after a restore
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from runtime.model.errors import WorkerHookFailed
from runtime.model.hooks import HookCall


@dataclass(frozen=True)
class Answer:
    call: HookCall
    body: str
    seconds: float   # each call timed alone: an engine's wake-up is several calls of very different cost


def call(pid: int, calls: tuple[HookCall, ...], what: str, timeout: float) -> list[Answer]:
    """The answers, in order (a quiesce hook may name files the worker reads back: reload_files.py);
    the first call that fails stops the sequence. `timeout` bounds the whole sequence by the wall
    clock: each call has what is left of it."""
    from runtime.netns import netns_http   # http.client and ssl: ~35 ms a restore without hooks saves
    answers: list[Answer] = []
    deadline = time.monotonic() + timeout
    for step in calls:
        t = time.monotonic()
        where = f" (call {len(answers) + 1} of {len(calls)})" if len(calls) > 1 else ""
        if t >= deadline:
            raise WorkerHookFailed(f"{what} hook {step}{where} was not called: the hook's {timeout:g}s had passed")
        status, body = netns_http.request(f"/proc/{pid}/ns/net", step.url,
                                          data=None if step.method == "GET" else step.body, timeout=deadline - t)
        if not 200 <= status < 300:
            answer = f"HTTP {status}: {body.strip()[:200]}" if status else body or "no answer"
            raise WorkerHookFailed(f"{what} hook {step}{where} failed ({answer})"
                                   + (f"; {step.hint}" if step.hint else ""))
        answers.append(Answer(step, body, time.monotonic() - t))
    return answers
