"""Reading a `qtap.yaml` from a file, a URL or text into a checked `Config`.

Loading goes: bytes (file, or `https://` fetched with urllib — see `_fetch` for what a
URL may and may not do) → YAML document (safe
loader, duplicate keys reported with their line) → `Config` validated with a
`LoadContext` built from the document itself (defined stack names, macro texts, the
environment) → `Config`, or a `ConfigError` listing every problem found, one line each.
Nothing here prints or logs; the command line decides how to show the error.
"""

from __future__ import annotations

import base64
import http.client
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .. import __version__
from .errors import ConfigError, describe, problems_from_validation_error
from .model import Config, LoadContext

__all__ = [
    "load_config",
    "load_config_text",
    "config_from_document",
    "default_config",
    "validate_file",
    "check_file",
    "config_warnings",
    "DEFAULT_CONFIG_YAML",
    "FETCH_TIMEOUT_SECONDS",
    "FETCH_DEADLINE_SECONDS",
]

FETCH_TIMEOUT_SECONDS = 10   # connect, and each read
FETCH_DEADLINE_SECONDS = 30  # the whole fetch, redirects included
MAX_REDIRECTS = 5
MAX_CONFIG_BYTES = 4 << 20  # a config is a few KiB; refuse to read a runaway response

# qtap's built-in configuration, used when no --config is given.
DEFAULT_CONFIG_YAML = """\
version: 2
services:
  event_stores:
    - type: stdout
  object_stores:
    - type: stdout
stacks:
  basic_reporting:
    plugins:
      - type: access_logs
        config:
          mode: details
          format: console
      - type: report_usage
tap:
  direction: egress-external
  ignore_loopback: true
  audit_include_dns: false
  http:
    stack: basic_reporting
"""


def load_config(location: str | os.PathLike[str], *, env: Mapping[str, str] | None = None,
                allow_http: bool = False) -> Config:
    """Load the configuration at a file path or an https:// URL (http:// only with
    `allow_http`, the command line's --config-allow-http).

    `env` replaces the process environment for `{{ VAR }}` substitution (tests).
    Raises ConfigError when it cannot be read or is not a valid configuration.
    """
    text, source = _read(location, allow_http)
    return load_config_text(text, source=source, env=env)


def load_config_text(text: str, source: str = "<config>", *, env: Mapping[str, str] | None = None) -> Config:
    """Load a configuration from YAML text; `source` names it in messages.

    Raises ConfigError.
    """
    return config_from_document(_parse_yaml(text, source), source=source, env=env)


def config_from_document(document: Any, source: str = "<config>", *, env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML document (None, as for an empty file, is `{}`).

    Raises ConfigError listing every problem.
    """
    warnings_for = document
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            [f"expected a mapping of settings (version, services, stacks, tap) at the top level, got {describe(document)}"],
            source,
        )
    context = LoadContext(
        env=os.environ if env is None else env,
        stack_names=_stack_names(document),
        macros=_macro_texts(document),
    )
    try:
        config = Config.model_validate(document, context=context)
    except ValidationError as err:
        raise ConfigError(problems_from_validation_error(err, document), source) from None
    config._warnings = config_warnings(warnings_for)
    return config


def default_config() -> Config:
    """qtap's built-in configuration: stdout stores, access logs for egress-external HTTP."""
    return load_config_text(DEFAULT_CONFIG_YAML, source="<built-in default>")


SUPPORTED_VERSION = 2


def config_warnings(document: Any) -> list[str]:
    """Things in a document that load but are probably not what the user meant."""
    if document is None or document == {}:
        return ["the file is empty: the built-in defaults apply (nothing is reported until services, stacks "
                "and tap are set; see examples/)"]
    if not isinstance(document, dict):
        return []
    out = []
    version = document.get("version")
    if version is not None and version != SUPPORTED_VERSION:
        out.append(f"version: {version!r} is not {SUPPORTED_VERSION}; plaintap reads qtap's version "
                   f"{SUPPORTED_VERSION} format and may misread this file")
    return out + _unused_keys(document)


_QPOINT_CLOUD_KEYS = ("batchPeriodMS", "pulseEndpoint", "pulseToken", "warehouseEndpoint", "warehouseToken")


def _unused_keys(document: dict[str, Any]) -> list[str]:
    """Keys that load (qtap compatibility) but change nothing here, each named by its path."""
    out: list[str] = []
    services = document.get("services")
    if isinstance(services, dict):
        for kind in ("event_stores", "object_stores"):
            stores = services.get(kind)
            if isinstance(stores, list) and len(stores) > 1:
                out.append(f"services.{kind}[1:]: only the first store of a list is used (qtap's default store); "
                           f"the other {len(stores) - 1} are ignored")
    stacks = document.get("stacks")
    for name, stack in (stacks.items() if isinstance(stacks, dict) else ()):
        plugins = stack.get("plugins") if isinstance(stack, dict) else None
        for i, plugin in enumerate(plugins if isinstance(plugins, list) else ()):
            if not isinstance(plugin, dict) or not isinstance(plugin.get("config"), dict):
                continue
            where, config = f"stacks.{name}.plugins[{i}].config", plugin["config"]
            if plugin.get("type") == "http_capture":
                if config.get("format") == "text":
                    out.append(f"{where}.format: text changes nothing: plaintap's objects are always the HTTP "
                               "message as text (artifact.data, docs/records.md)")
            elif plugin.get("type") == "report_usage" and config:
                out.append(f"{where}: report_usage takes no settings here; {', '.join(map(str, config))} ignored")
            elif plugin.get("type") == "detect_errors":
                cloud = [k for k in _QPOINT_CLOUD_KEYS if k in config]
                if cloud:
                    out.append(f"{where}: {', '.join(cloud)} are Qpoint cloud settings, unused: issues go to "
                               "the event store")
    control = document.get("control")
    if isinstance(control, dict) and not control.get("rules"):
        out.append("control: plaintap is passive (it never blocks traffic); this section changes nothing")
    tags = document.get("tags")
    for i, tag in enumerate(tags if isinstance(tags, list) else ()):
        if isinstance(tag, dict) and tag.get("source") not in (None, "env"):
            out.append(f"tags[{i}]: source {tag.get('source')} is not read yet (only env tags become resource "
                       "attributes); this tag is ignored")
    return out


def check_file(location: str | os.PathLike[str], *, env: Mapping[str, str] | None = None,
               allow_http: bool = False) -> tuple[list[str], list[str]]:
    """(problems, warnings) for the configuration at `location`; never raises for
    configuration problems, including an unreadable file or URL."""
    try:
        config = load_config(location, env=env, allow_http=allow_http)
    except ConfigError as err:
        return err.problems, []
    return [], config.warnings


def validate_file(location: str | os.PathLike[str], *, env: Mapping[str, str] | None = None,
                  allow_http: bool = False) -> list[str]:
    """The problems with the configuration at `location`; [] when it is valid.

    Never raises for configuration problems, including an unreadable file or URL.
    """
    try:
        load_config(location, env=env, allow_http=allow_http)
    except ConfigError as err:
        return err.problems
    return []


# --------------------------------------------------------------------------------------


def _stack_names(document: dict[str, Any]) -> frozenset[str] | None:
    stacks = document.get("stacks")
    if stacks is None:
        return frozenset()
    if isinstance(stacks, dict):
        return frozenset(str(name) for name in stacks)
    return None  # malformed; that is reported, and references are not checked against it


def _macro_texts(document: dict[str, Any]) -> dict[str, str]:
    rulekit = document.get("rulekit")
    macros = rulekit.get("macros") if isinstance(rulekit, dict) else None
    texts: dict[str, str] = {}
    for macro in macros if isinstance(macros, list) else []:
        if not isinstance(macro, dict) or not isinstance(macro.get("expr"), str):
            continue
        name = macro.get("name")
        if isinstance(name, str) and name.isidentifier():  # a bad name is reported by the model
            texts.setdefault(name, macro["expr"])
    return texts


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, noting keys written twice in one mapping (the last would win)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first_line:
                self.duplicates.append(
                    f"line {line}, column {key_node.start_mark.column + 1}: duplicate key {key_node.value!r} "
                    f"(first at line {first_line[key_node.value]})"
                )
            else:
                first_line[key_node.value] = line
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, source: str) -> Any:
    loader = _Loader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = err.problem or err.context or "unreadable"
        if err.context and err.problem and err.problem.startswith("but "):
            what = f"{err.context} {err.problem}"  # "expected a single document ... but found another"
        raise ConfigError([f"{where}YAML syntax error: {what}"], source) from None
    except yaml.YAMLError as err:
        raise ConfigError([f"YAML syntax error: {err}"], source) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(loader.duplicates, source)
    return document


def _read(location: str | os.PathLike[str], allow_http: bool = False) -> tuple[str, str]:
    """The text at `location` and a name for it in messages. Raises ConfigError."""
    where = os.fspath(location)
    if where.lower().startswith(("http://", "https://")):
        source = _without_credentials(where)
        if where.lower().startswith("http://") and not allow_http:
            raise ConfigError([f"cannot fetch {source}: plain http is refused (anyone on the path could change "
                               "what the agent captures and where it sends it); use https://, or pass "
                               "--config-allow-http"], source)
        data = _fetch(where, source)
    else:
        source = where
        try:
            data = Path(where).read_bytes()
        except OSError as err:
            raise ConfigError([f"cannot read {where}: {err.strerror or err}"], source) from None
    try:
        return data.decode("utf-8-sig"), source
    except UnicodeDecodeError as err:
        raise ConfigError([f"{source} is not UTF-8 text (byte {err.start})"], source) from None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


class _RedirectRefused(Exception):
    """A redirect leaving the origin of the config URL; the message is for people."""


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the same scheme, host and port, at most MAX_REDIRECTS
    times, and never with the credentials of the first request."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, url: str) -> None:
        self.origin = _origin(url)

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = _origin(newurl)
        if target != self.origin:
            shown = _without_credentials(newurl)
            why = ("to plain http" if target[0] == "http" and self.origin[0] == "https"
                   else "to another origin")
            raise _RedirectRefused(f"redirected {why} ({shown}); plaintap follows redirects only within the same "
                                   "scheme, host and port: give the final https:// URL")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.remove_header("Authorization")
        return new


def _fetch(url: str, source: str) -> bytes:
    """The body at `url`, within FETCH_DEADLINE_SECONDS in total.

    user:password@ in the URL is sent as HTTP basic authentication to that origin only:
    redirects are followed only within the same scheme, host and port, at most
    MAX_REDIRECTS, and without the Authorization header. The fetch runs on its own
    thread so a server that answers a byte at a time cannot hold the caller past the
    deadline. Raises ConfigError (one line).
    """
    outcome: dict[str, object] = {}
    deadline = time.monotonic() + FETCH_DEADLINE_SECONDS

    def work() -> None:
        try:
            outcome["data"] = _fetch_now(url, source, deadline)
        except BaseException as err:  # handed to the caller
            outcome["error"] = err

    worker = threading.Thread(target=work, name="config-fetch", daemon=True)
    worker.start()
    worker.join(FETCH_DEADLINE_SECONDS + 1)
    if worker.is_alive():
        raise ConfigError([f"cannot fetch {source}: no complete answer within {FETCH_DEADLINE_SECONDS}s"], source)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["data"]  # type: ignore[return-value]


def _fetch_now(url: str, source: str, deadline: float) -> bytes:
    headers = {"User-Agent": f"plaintap/{__version__}"}
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    request = urllib.request.Request(source, headers=headers)
    opener = urllib.request.build_opener(_SameOriginRedirects(url))
    chunks: list[bytes] = []
    size = 0
    try:
        with opener.open(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            while size <= MAX_CONFIG_BYTES:
                if time.monotonic() > deadline:
                    raise ConfigError([f"cannot fetch {source}: no complete answer within "
                                       f"{FETCH_DEADLINE_SECONDS}s"], source)
                chunk = response.read1(64 << 10) if hasattr(response, "read1") else response.read(64 << 10)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except _RedirectRefused as err:
        raise ConfigError([f"cannot fetch {source}: {err}"], source) from None
    except urllib.error.HTTPError as err:
        raise ConfigError([f"cannot fetch {source}: HTTP {err.code} {err.reason}"], source) from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, _RedirectRefused):
            raise ConfigError([f"cannot fetch {source}: {reason}"], source) from None
        text = f"no answer within {FETCH_TIMEOUT_SECONDS}s" if isinstance(reason, TimeoutError) else str(reason)
        raise ConfigError([f"cannot fetch {source}: {text}"], source) from None
    except TimeoutError:
        raise ConfigError([f"cannot fetch {source}: no answer within {FETCH_TIMEOUT_SECONDS}s"], source) from None
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise ConfigError([f"cannot fetch {source}: {err}"], source) from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([f"cannot fetch {source}: larger than {MAX_CONFIG_BYTES} bytes"], source)
    return b"".join(chunks)


def _without_credentials(url: str) -> str:
    """The URL as it may appear in messages: any user:password@ removed."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host))
