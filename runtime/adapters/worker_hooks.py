"""The worker's own hooks around a capture, named by annotations: rewarm POSTs to them inside the
container's network namespace and expects HTTP 200.

  rewarm.dev/quiesce-http  before a capture: drop what need not be saved (KV cache, allocator caches,
                           free heap, weights it can read back); vLLM's /sleep and SGLang's
                           release_memory_occupation are such hooks
  rewarm.dev/resume-http   after a capture (the source keeps running) and after a restore
"""
from __future__ import annotations

from runtime.adapters import netns_http
from runtime.model.errors import WorkerHookFailed


def post(pid: int, url: str, what: str, timeout: float) -> str:
    """The hook's answer (a quiesce hook may name files the worker reads back: reload_files.py)."""
    status, body = netns_http.request(f"/proc/{pid}/ns/net", url, data=b"{}", timeout=timeout)
    if status != 200:
        answer = f"HTTP {status}: {body.strip()[:200]}" if status else "no answer"
        raise WorkerHookFailed(f"{what} hook {url} failed ({answer})")
    return body
