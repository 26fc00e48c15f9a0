"""What a configuration leaves out, in words, for the agent's start-up line.

A new user who runs the agent and sees nothing should learn why from the log: loopback
ignored, a direction not watched, no stack reporting HTTP, stores that discard records.
`ignored(cfg)` lists those facts; it is a pure function of the config.
"""
from __future__ import annotations

_DIRECTIONS_SEEN = {
    "all": {"ingress", "egress-internal", "egress-external"},
    "ingress": {"ingress"},
    "egress": {"egress-internal", "egress-external"},
    "egress-internal": {"egress-internal"},
    "egress-external": {"egress-external"},
}


def ignored(cfg) -> list[str]:
    """What the active config does not capture or report, one short phrase each."""
    tap = cfg.tap
    out = []
    if tap.ignore_loopback:
        out.append("loopback traffic (tap.ignore_loopback: true)")
    missing = sorted({"ingress", "egress-internal", "egress-external"} - _DIRECTIONS_SEEN[tap.direction])
    if missing:
        out.append(f"{' and '.join(missing)} connections (tap.direction: {tap.direction})")
    domains_with_stack = [e.domain for e in tap.endpoints if e.http.has_stack]
    if not tap.http.has_stack:
        if domains_with_stack:
            out.append(f"HTTP transactions except to {', '.join(domains_with_stack)} (tap.http.stack is none)")
        else:
            out.append("HTTP transactions (no stack: set tap.http.stack to a stack with http_capture or access_logs)")
    services = cfg.services
    if services.event_store.type == "disabled":
        out.append("events (services.event_stores: disabled)")
    if services.object_store.type == "disabled":
        out.append("objects (services.object_stores: disabled)")
    return out


def startup_line(cfg) -> str:
    """`not captured or reported with this config: …; see tap.* in the config` or ''."""
    gaps = ignored(cfg)
    if not gaps:
        return ""
    return "not captured or reported with this config: " + "; ".join(gaps)
