"""healthchecks.io-style pings, as borgmatic sends them: ``URL/start`` before a run, ``URL`` on
success, ``URL/fail`` on failure with the tail of the run's log as the POST body.

A ping never fails a backup: each one is bounded in total (not per socket operation) by
``timeout``, and what goes wrong is returned as a warning. The URL may hold a secret (a
healthchecks UUID is all it takes to ping), so messages name its host only.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit, urlunsplit

from snapagent import __version__

DEFAULT_TIMEOUT = 10.0
MAX_BODY = 10_000  # bytes of log tail sent (healthchecks keeps the first 100 kB)


def host_of(url: str) -> str:
    """Return the host of ``url``, what messages may show of it."""
    return urlsplit(url).hostname or "?"


def event_url(url: str, event: str) -> str:
    """Return the URL of ``event`` (``start``, ``success``, ``fail``): ``/start``, as is, ``/fail``;
    a query string stays at the end."""
    if event == "success":
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + event))


def send(url: str, event: str, body: str = "", timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """POST ``body`` to the URL of ``event``; return None when it was accepted (2xx), else a
    warning naming the host and what went wrong. Never raises; returns within about ``timeout``."""
    import urllib.error  # lazy: urllib.request pulls in ssl and http, which read commands never need
    import urllib.request

    req = urllib.request.Request(event_url(url, event), data=body.encode()[-MAX_BODY:], method="POST",
                                 headers={"Content-Type": "text/plain; charset=utf-8",
                                          "User-Agent": f"snapagent/{__version__}"})
    outcome: list[str | None] = []

    def post() -> None:
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only (config)
                resp.read(1024)
            outcome.append(None)
        except urllib.error.HTTPError as e:
            outcome.append(f"HTTP {e.code}")
        except Exception as e:  # noqa: BLE001 - a ping must never fail the run; say what it was
            reason = getattr(e, "reason", None) or e
            if isinstance(reason, TimeoutError):  # the socket's own timeout may end it just before join's
                return
            outcome.append(f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__)

    # urllib's timeout bounds each socket operation, not the request: a server that trickles
    # bytes could hold it for ever. The thread bounds the whole; a daemon one dies with us.
    t = threading.Thread(target=post, name=f"ping-{event}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive() or not outcome:
        return f"ping {event} to {host_of(url)} timed out after {timeout:g}s"
    if outcome[0] is not None:
        return f"ping {event} to {host_of(url)} failed: {_redact(outcome[0], url)}"
    return None


def _redact(text: str, url: str) -> str:
    # an exception's text may quote the URL (and so the token in it)
    parts = urlsplit(url)
    for secret in (url, parts.path, parts.query):
        if secret and secret != "/":
            text = text.replace(secret, "…")
    return text
