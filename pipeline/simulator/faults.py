"""Injected transport faults, fired by the counters of SimConfig.

They model a proxy or load balancer in front of the gateway: they answer before the API key is
checked and before the reply cache is consulted, and their replies are never cached (a retry with
the same trace id reaches the real gateway). Each counter decrements as it fires; when several
are set, HTML pages fire first, then 429s, then 500069s. Downloads (signed CDN links) have their
own fault, `truncate_downloads`.
"""

from __future__ import annotations

from pipeline.simulator.config import SimConfig
from pipeline.simulator.envelope import OVERLOADED, Reply, envelope

HTML_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def take_fault(config: SimConfig) -> tuple[str, Reply] | None:
    """The next injected fault (its name and reply), decrementing its counter; None if none."""
    if config.html_errors > 0:
        config.html_errors -= 1
        return "html", Reply(status=502, body=HTML_GATEWAY_PAGE, content_type="text/html")
    if config.rate_limit_errors > 0:
        config.rate_limit_errors -= 1
        reply = envelope(OVERLOADED, "too many requests", status=429, headers={"Retry-After": "1"})
        return "rate_limit", reply
    if config.transient_errors > 0:
        config.transient_errors -= 1
        reply = envelope(
            OVERLOADED, "system overloaded", lowercase_on_500=config.lowercase_envelope_on_500
        )
        return "transient", reply
    return None


def take_drop(config: SimConfig) -> bool:
    """Whether this generate request's reply is to be dropped (the socket closed instead)."""
    if config.drop_generate_replies > 0:
        config.drop_generate_replies -= 1
        return True
    return False


def take_truncation(config: SimConfig) -> bool:
    """Whether this download is to be cut after half its bytes."""
    if config.truncate_downloads > 0:
        config.truncate_downloads -= 1
        return True
    return False


def take_flaw(config: SimConfig) -> str | None:
    """The flaw of a result video being made now: "short", "garbled" or None."""
    if config.short_results > 0:
        config.short_results -= 1
        return "short"
    if config.garbled_results > 0:
        config.garbled_results -= 1
        return "garbled"
    return None
