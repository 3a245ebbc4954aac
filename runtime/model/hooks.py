"""The worker's hooks around a capture, as rewarm calls them: a sequence of HTTP calls inside the
pod's network namespace, each of which must answer 2xx.

An annotation names one URL (POSTed with `{}`), or a JSON list of calls, each a URL or an object:

    [{"url": "http://127.0.0.1:8000/wake_up?tags=weights"},
     {"url": "http://127.0.0.1:8000/collective_rpc", "body": {"method": "reload_weights"}},
     "http://127.0.0.1:8000/wake_up?tags=kv_cache"]

`method` is POST (the default) or GET; `body` is any JSON value, sent as the request body.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from runtime.model.errors import InvalidInput

URL_RE = re.compile(r"http://[^/\s]+(/\S*)?")
MAX_CALLS = 16
MAX_BODY = 64 << 10
METHODS = ("POST", "GET")


@dataclass(frozen=True)
class HookCall:
    url: str
    method: str = "POST"
    body: bytes = b"{}"
    hint: str = ""          # said with a failure: what the worker needs to answer this call

    def __str__(self) -> str:
        return f"{self.method} {self.url}"

    @property
    def path(self) -> str:
        """The URL from its path on (`/wake_up?tags=kv_cache`): what names the call in timings."""
        return "/" + self.url.split("/", 3)[3] if self.url.count("/") >= 3 else "/"


def valid_url(key: str, url: object) -> str:
    if not isinstance(url, str) or not URL_RE.fullmatch(url):
        raise InvalidInput(f"invalid {key}: {str(url)[:200]!r} (expected http://HOST:PORT/PATH)")
    return url


def parse(key: str, value: str) -> tuple[HookCall, ...]:
    """An annotation's value: one URL, or a JSON list of calls."""
    if not value.lstrip().startswith("["):
        return (HookCall(valid_url(key, value)),)
    try:
        raw = json.loads(value)
    except (ValueError, RecursionError) as e:
        raise InvalidInput(f"invalid {key}: not a URL and not a JSON list of calls ({e})") from e
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CALLS:
        raise InvalidInput(f"invalid {key}: a list of 1 to {MAX_CALLS} calls")
    return tuple(_call(key, item) for item in raw)


def _call(key: str, item: Any) -> HookCall:
    if isinstance(item, str):
        return HookCall(valid_url(key, item))
    if not isinstance(item, dict) or set(item) - {"url", "method", "body"}:
        raise InvalidInput(f"invalid {key}: each call is a URL or an object of url, method and body")
    method = item.get("method", "POST")
    if method not in METHODS:
        raise InvalidInput(f"invalid {key}: method {str(method)[:20]!r} (expected POST or GET)")
    body = json.dumps(item["body"]).encode() if "body" in item else b"{}"
    if len(body) > MAX_BODY:
        raise InvalidInput(f"invalid {key}: a body of more than {MAX_BODY} bytes")
    return HookCall(valid_url(key, item.get("url")), method, b"" if method == "GET" else body)
