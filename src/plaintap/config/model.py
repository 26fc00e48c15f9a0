"""The typed `qtap.yaml`: every section, its defaults, and the checks on its values.

These pydantic models are the one place the configuration's shape and defaults are
written down. Every model forbids unknown keys, so a typo is an error with its key path
rather than a setting silently ignored. Choices are `Literal`s marked `OneOf()` so a
wrong value lists the accepted ones. Checks that need the whole document (does the
stack a tap names exist, what do the rule macros say, which environment variables are
set) read a `LoadContext` that `loader.py` builds from the raw document and passes as
pydantic's validation context; without one (a model built directly, as in tests) the
process environment is used, no macros are known and stack names are not checked.

Rule expressions are compiled here, at load time (`Expression` fields hold a compiled
`rules.Rule`; its `.text` is the source), so a syntax error is a load error and
evaluating a rule per transaction is cheap.

qtap's own model is the reference for names and defaults (reference/QTAP.md); where
plaintap differs it says so (`service_name` defaults to "plaintap").
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    PrivateAttr,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import OneOf, describe, problem, show
from .variables import is_known, unknown_variable_message
from .regex import RegexError, compile_regex
from .rules import Rule, RuleSyntaxError, compile_expr
from .values import ENV_PLACEHOLDER, UnsetVariables, ValueSource, substitute_env

__all__ = [
    "LoadContext",
    "Config",
    "Services",
    "StdoutStore",
    "DisabledStore",
    "OtelEventStore",
    "OtelObjectStore",
    "OtelTls",
    "S3ObjectStore",
    "EventStore",
    "ObjectStore",
    "Stack",
    "Plugin",
    "HttpCapturePlugin",
    "HttpCaptureConfig",
    "HttpCaptureRule",
    "AccessLogsPlugin",
    "AccessLogsConfig",
    "AccessLogRule",
    "ReportUsagePlugin",
    "DetectErrorsPlugin",
    "HttpMetricsPlugin",
    "Tap",
    "TapHttp",
    "TapEndpoint",
    "TapFilters",
    "CustomFilter",
    "Tag",
    "Control",
    "ControlRule",
    "Rulekit",
    "Macro",
    "RedactionSettings",
    "ValueSource",
    "CaptureLevel",
    "Detail",
    "normalise_capture_level",
    "EVENT_STORE_TYPES",
    "OBJECT_STORE_TYPES",
    "PLUGIN_TYPES",
    "DEFAULT_OTEL_ENDPOINTS",
    "NO_STACK",
]

NO_STACK = "none"
DEFAULT_OTEL_ENDPOINTS = {"grpc": "localhost:4317", "http": "localhost:4318"}


@dataclass(frozen=True)
class LoadContext:
    """What the checks need from outside the section they are checking."""

    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    stack_names: frozenset[str] | None = None  # None: unknown, so references are not checked
    macros: Mapping[str, str] = field(default_factory=dict)


def _context(info: ValidationInfo) -> LoadContext:
    return info.context if isinstance(info.context, LoadContext) else LoadContext()


class _Section(BaseModel):
    # coerce_numbers_to_str: `value: 12345` in YAML is a fine piece of text.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


def _none_is_empty_list(value: Any) -> Any:
    return [] if value is None else value


# --------------------------------------------------------------------------------------
# Field types with their checks


def _not_blank(value: str) -> str:
    if not value.strip():
        raise problem("must not be empty")
    return value


Text = Annotated[str, AfterValidator(_not_blank)]


def _expand_endpoint(value: str, info: ValidationInfo) -> str:
    try:
        value = substitute_env(value, _context(info).env)
    except UnsetVariables as err:
        if len(err.names) == 1:
            raise problem(f"environment variable {err.names[0]} is not set") from None
        raise problem(f"environment variables {', '.join(err.names)} are not set") from None
    return _not_blank(value)


# An address; `{{ VAR }}` in it is replaced from the environment at load time.
Endpoint = Annotated[str, AfterValidator(_expand_endpoint)]

_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|m|h)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _seconds(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise problem("must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            return float(match["number"]) * _DURATION_UNITS[match["unit"]]
    raise problem(f"expected a duration such as 10s, 500ms or 1m, got {describe(value)}")


Seconds = Annotated[float, BeforeValidator(_seconds)]


def _compile_expression(value: Any, info: ValidationInfo) -> Rule:
    if isinstance(value, Rule):
        return value
    if not isinstance(value, str):
        raise problem(f"expected a rule expression (text), got {describe(value)}")
    try:
        rule = compile_expr(value, _context(info).macros)
    except RuleSyntaxError as err:
        raise problem(str(err)) from None
    unknown = sorted(name for name in rule.variables if not is_known(name))
    if unknown:
        raise problem(unknown_variable_message(unknown[0]))
    return rule


# A rule expression, compiled at load time; serialises back to its text.
Expression = Annotated[Rule, PlainValidator(_compile_expression), PlainSerializer(lambda rule: rule.text, return_type=str)]


def _check_stack_reference(value: str, info: ValidationInfo) -> str:
    if value in ("", NO_STACK):
        return NO_STACK
    defined = _context(info).stack_names
    if defined is not None and value not in defined:
        known = f"defined stacks: {', '.join(sorted(defined))}" if defined else "no stacks are defined"
        raise problem(f"stack {value!r} is not defined ({known}; or '{NO_STACK}')")
    return value


StackName = Annotated[str, AfterValidator(_check_stack_reference)]


def _typed_entry(kind: str, supported: tuple[str, ...], known_elsewhere: tuple[str, ...] = ()) -> BeforeValidator:
    """Report a missing or unknown `type` of a list entry before pydantic's union does."""
    listed = ", ".join(supported)

    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic says it is not a mapping
        tag = value.get("type")
        if tag is None:
            raise problem(f"required (the {kind} type: one of {listed})", field="type")
        if isinstance(tag, str) and tag in supported:
            return value
        if isinstance(tag, str) and tag in known_elsewhere:
            raise problem(f"{tag!r} is not supported by plaintap (supported: {listed})", field="type")
        raise problem(f"{show(tag)} is not a known {kind} type (known: {listed})", field="type")

    return BeforeValidator(check)


# --------------------------------------------------------------------------------------
# services


class StdoutStore(_Section):
    """Print to standard output."""

    type: Literal["stdout"]
    id: str | None = None


class DisabledStore(_Section):
    """Send nothing."""

    type: Literal["disabled"]
    id: str | None = None


class OtelTls(_Section):
    """TLS to the collector. `ca_file`: PEM roots to verify the collector with (instead of
    the system's); `cert_file` + `key_file`: a client certificate (mutual TLS), given
    together. `insecure_skip_verify` trusts whatever certificate the collector presents
    (encryption without authentication: anyone who can intercept the connection can read
    what is sent, headers included) — for a self-signed test collector, never in
    production; `ca_file` is the way to trust a private CA."""

    enabled: bool = False
    insecure_skip_verify: bool = False
    ca_file: Text | None = None
    cert_file: Text | None = None
    key_file: Text | None = None

    @model_validator(mode="after")
    def _client_cert_pair(self) -> OtelTls:
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            raise problem(f"required when {given} is given (a client certificate needs both)", field=missing)
        return self


class OtelEventStore(_Section):
    """Events as OTLP logs. `endpoint` defaults by protocol; it is None for `stdout`."""

    ENDPOINT_KEYS: ClassVar[tuple[str, ...]] = ("endpoint",)

    type: Literal["otel"]
    id: str | None = None
    endpoint: Endpoint | None = None
    protocol: Annotated[Literal["grpc", "http", "stdout"], OneOf()] = "grpc"
    headers: Annotated[dict[str, ValueSource], BeforeValidator(_none_is_empty)] = Field(default_factory=dict)
    service_name: str = "plaintap"  # qtap's default is "qtap"
    environment: str = "production"
    tls: OtelTls = Field(default_factory=OtelTls)
    timeout: Seconds | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_endpoint(cls, data: Any) -> Any:
        if not isinstance(data, dict) or any(data.get(key) is not None for key in cls.ENDPOINT_KEYS):
            return data
        protocol = data.get("protocol", "grpc")
        default = DEFAULT_OTEL_ENDPOINTS.get(protocol) if isinstance(protocol, str) else None
        return {**data, "endpoint": default} if default else data


class OtelObjectStore(OtelEventStore):
    """Objects as OTLP logs; accepts qtap's `otel_endpoint` as well as `endpoint`."""

    ENDPOINT_KEYS: ClassVar[tuple[str, ...]] = ("endpoint", "otel_endpoint")

    endpoint: Endpoint | None = Field(default=None, validation_alias=AliasChoices("endpoint", "otel_endpoint"))

    @model_validator(mode="before")
    @classmethod
    def _one_endpoint_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "endpoint" in data and "otel_endpoint" in data:
            raise problem("give endpoint or otel_endpoint, not both", field="otel_endpoint")
        return data


S3_PLACEHOLDERS = ("SCHEME", "ENDPOINT", "BUCKET", "DIGEST")
DEFAULT_ACCESS_URL = "{{SCHEME}}://{{ENDPOINT}}/{{BUCKET}}/{{DIGEST}}"


def _check_access_url(value: str) -> str:
    unknown = sorted({name for name in ENV_PLACEHOLDER.findall(value) if name not in S3_PLACEHOLDERS})
    if unknown:
        known = ", ".join("{{%s}}" % name for name in S3_PLACEHOLDERS)
        raise problem(f"unknown placeholder {', '.join('{{%s}}' % name for name in unknown)} (known: {known})")
    return value


class S3ObjectStore(_Section):
    """Objects in an S3-compatible bucket, keyed by digest.

    `access_key` and `secret_key` come together; with neither, the default AWS
    credential chain applies. `endpoint` may carry its scheme (`http://host:8333`).
    """

    type: Literal["s3"]
    id: str | None = None
    endpoint: Endpoint = "s3.amazonaws.com"
    bucket: Text
    region: str = "us-east-1"
    access_key: ValueSource | None = None
    secret_key: ValueSource | None = None
    access_url: Annotated[str, AfterValidator(_check_access_url)] | None = None  # {{...}} kept as placeholders
    insecure: bool = False

    @model_validator(mode="after")
    def _keys_come_together(self) -> S3ObjectStore:
        if (self.access_key is None) != (self.secret_key is None):
            given, missing = ("access_key", "secret_key") if self.secret_key is None else ("secret_key", "access_key")
            raise problem(
                f"required when {given} is given (set both, or neither to use the default AWS credential chain)",
                field=missing,
            )
        return self

    @property
    def scheme(self) -> str:
        """The scheme written in `endpoint`, else http when `insecure`, else https."""
        if "://" in self.endpoint:
            return self.endpoint.split("://", 1)[0].lower()
        return "http" if self.insecure else "https"

    @property
    def host(self) -> str:
        """`endpoint` without scheme or trailing slash: `host[:port]`."""
        return self.endpoint.split("://", 1)[-1].rstrip("/")

    @property
    def endpoint_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def object_url(self, digest: str) -> str:
        """Where an object can be fetched: `access_url` (or the plain S3 URL) filled in."""
        values = {"SCHEME": self.scheme, "ENDPOINT": self.host, "BUCKET": self.bucket, "DIGEST": digest}
        return ENV_PLACEHOLDER.sub(lambda match: values[match.group(1)], self.access_url or DEFAULT_ACCESS_URL)


EVENT_STORE_TYPES: dict[str, type[_Section]] = {"stdout": StdoutStore, "disabled": DisabledStore, "otel": OtelEventStore}
OBJECT_STORE_TYPES: dict[str, type[_Section]] = {
    "stdout": StdoutStore,
    "disabled": DisabledStore,
    "otel": OtelObjectStore,
    "s3": S3ObjectStore,
}
# Store types qtap has that plaintap does not implement (vendor services).
_QTAP_ONLY_EVENT_STORES = ("axiom", "pulse", "pulse-streaming", "pulse-legacy")
_QTAP_ONLY_OBJECT_STORES = ("qpoint",)

EventStore = Annotated[
    Union[StdoutStore, DisabledStore, OtelEventStore],
    Field(discriminator="type"),
    _typed_entry("event store", tuple(EVENT_STORE_TYPES), _QTAP_ONLY_EVENT_STORES),
]
ObjectStore = Annotated[
    Union[StdoutStore, DisabledStore, OtelObjectStore, S3ObjectStore],
    Field(discriminator="type"),
    _typed_entry("object store", tuple(OBJECT_STORE_TYPES), _QTAP_ONLY_OBJECT_STORES),
]


class Services(_Section):
    """Where events and objects go. The first store of each list is the one used."""

    event_stores: Annotated[list[EventStore], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)
    object_stores: Annotated[list[ObjectStore], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)

    @property
    def event_store(self) -> StdoutStore | DisabledStore | OtelEventStore:
        """The default (first) event store; disabled when none is configured, as in qtap."""
        return self.event_stores[0] if self.event_stores else DisabledStore(type="disabled")

    @property
    def object_store(self) -> StdoutStore | DisabledStore | OtelObjectStore | S3ObjectStore:
        """The default (first) object store; disabled when none is configured, as in qtap."""
        return self.object_stores[0] if self.object_stores else DisabledStore(type="disabled")


# --------------------------------------------------------------------------------------
# stacks and plugins

CaptureLevel = Literal["none", "summary", "details", "headers", "full"]
Detail = Literal["none", "summary", "details", "full"]


def normalise_capture_level(level: CaptureLevel) -> Detail:
    """`headers` is qtap's other name for `details`; everything else is itself."""
    return "details" if level == "headers" else level


class HttpCaptureRule(_Section):
    name: str
    expr: Expression
    level: Annotated[CaptureLevel, OneOf()]


class HttpCaptureConfig(_Section):
    """What of each HTTP transaction to store as objects; the first matching rule wins."""

    level: Annotated[CaptureLevel, OneOf()] = "none"
    format: Annotated[Literal["json", "text"], OneOf()] = "json"
    rules: Annotated[list[HttpCaptureRule], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)

    def level_for(self, vars: Mapping[str, object]) -> Detail:
        """The capture level for one transaction (`headers` already read as `details`)."""
        for rule in self.rules:
            if rule.expr.evaluate(vars):
                return normalise_capture_level(rule.level)
        return normalise_capture_level(self.level)


AccessLogMode = Literal["none", "summary", "details", "full"]


class AccessLogRule(_Section):
    name: str
    expr: Expression
    mode: Annotated[AccessLogMode, OneOf()]


class AccessLogsConfig(_Section):
    """Access log lines on stdout; the first matching rule chooses the mode."""

    mode: Annotated[AccessLogMode, OneOf()] = "summary"
    format: Annotated[Literal["console", "json"], OneOf()] = "console"
    rules: Annotated[list[AccessLogRule], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)

    def mode_for(self, vars: Mapping[str, object]) -> AccessLogMode:
        for rule in self.rules:
            if rule.expr.evaluate(vars):
                return rule.mode
        return self.mode


class HttpCapturePlugin(_Section):
    type: Literal["http_capture"]
    config: Annotated[HttpCaptureConfig, BeforeValidator(_none_is_empty)] = Field(default_factory=HttpCaptureConfig)


class AccessLogsPlugin(_Section):
    type: Literal["access_logs"]
    config: Annotated[AccessLogsConfig, BeforeValidator(_none_is_empty)] = Field(default_factory=AccessLogsConfig)


class ReportUsagePlugin(_Section):
    """One `request` event per transaction (RECORDS.md). qtap gives it no settings plaintap
    uses; any given are kept and named in a load warning."""

    type: Literal["report_usage"]
    config: Annotated[dict[str, Any], BeforeValidator(_none_is_empty)] = Field(default_factory=dict)


_STATUS_TRIGGER = re.compile(r"[1-5](?:[0-9]{2}|xx)", re.IGNORECASE)
_GO_DURATION = re.compile(r"(?:([0-9]+(?:\.[0-9]+)?)(h|ms|us|µs|ns|m|s))+")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: Any) -> float:
    """A Go-style duration (`"2.5s"`, `"500ms"`, `"1m30s"`) or a number of seconds → seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise problem(f"{value} is negative (write a duration such as 2s or 500ms)")
        return float(value)
    if not isinstance(value, str) or not _GO_DURATION.fullmatch(value.strip()):
        raise problem(f"{show(value)} is not a duration (write e.g. 2s, 500ms, 1m30s)")
    return sum(float(n) * _GO_UNITS[unit] for n, unit in re.findall(r"([0-9]+(?:\.[0-9]+)?)(h|ms|us|µs|ns|m|s)",
                                                                      value.strip()))


def _status_triggers(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    out = []
    for index, item in enumerate(value):
        text = str(item).strip() if isinstance(item, (int, str)) and not isinstance(item, bool) else None
        if text is None or not _STATUS_TRIGGER.fullmatch(text):
            raise problem(f"{show(item)} is not a status code (\"503\") or class (\"5xx\")", field=f"[{index}]")
        out.append(text.lower())
    return out


class DetectErrorsRule(_Section):
    """qtap's error-detection rule (field names as in its plugin README)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, populate_by_name=True)

    name: str
    triggerStatusCodes: Annotated[list[str], BeforeValidator(_none_is_empty_list), BeforeValidator(_status_triggers)] = Field(
        default_factory=list)
    triggerEmptyBody: bool = False
    triggerDuration: Annotated[float | None, BeforeValidator(lambda v: None if v is None else parse_duration(v))] = None
    triggerContains: str | None = None
    recordReqHeaders: bool = False
    recordReqBody: bool = False
    recordResHeaders: bool = False
    recordResBody: bool = False
    onlyCategories: Annotated[list[str], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)
    onlyUrls: Annotated[list[str], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)
    excludeUrls: Annotated[list[str], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)
    withTags: Annotated[list[str], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)
    reportAsIssue: bool = True
    continue_: bool = Field(default=False, alias="continue")

    @model_validator(mode="after")
    def _has_a_trigger(self) -> "DetectErrorsRule":
        if not (self.triggerStatusCodes or self.triggerEmptyBody or self.triggerDuration is not None
                or self.triggerContains):
            raise problem("the rule has no trigger (set triggerStatusCodes, triggerEmptyBody, triggerDuration "
                          "or triggerContains)")
        return self


class DetectErrorsConfig(_Section):
    # Qpoint cloud settings (Pulse, Warehouse, batching): accepted for compatibility and
    # unused (plaintap reports issues through its own stores); a load warning says so.
    batchPeriodMS: int | None = None
    pulseEndpoint: str | None = None
    pulseToken: str | None = None
    warehouseEndpoint: str | None = None
    warehouseToken: str | None = None
    rules: Annotated[list[DetectErrorsRule], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)


class DetectErrorsPlugin(_Section):
    type: Literal["detect_errors"]
    config: Annotated[DetectErrorsConfig, BeforeValidator(_none_is_empty)] = Field(default_factory=DetectErrorsConfig)


class HttpMetricsPlugin(_Section):
    type: Literal["http_metrics"]
    config: Annotated[dict[str, Any], BeforeValidator(_none_is_empty)] = Field(default_factory=dict)


PLUGIN_TYPES: dict[str, type[_Section]] = {
    "access_logs": AccessLogsPlugin,
    "detect_errors": DetectErrorsPlugin,
    "http_capture": HttpCapturePlugin,
    "http_metrics": HttpMetricsPlugin,
    "report_usage": ReportUsagePlugin,
}

Plugin = Annotated[
    Union[HttpCapturePlugin, AccessLogsPlugin, ReportUsagePlugin, DetectErrorsPlugin, HttpMetricsPlugin],
    Field(discriminator="type"),
    _typed_entry("plugin", tuple(PLUGIN_TYPES)),
]


class Stack(_Section):
    plugins: Annotated[list[Plugin], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)

    def plugin(self, type_name: str) -> Any:
        """The first plugin of this type, or None."""
        return next((plugin for plugin in self.plugins if plugin.type == type_name), None)


# --------------------------------------------------------------------------------------
# tap


class TapHttp(_Section):
    stack: StackName = NO_STACK  # "" reads as "none", as in qtap

    @property
    def has_stack(self) -> bool:
        return self.stack != NO_STACK


def _check_domain(value: str) -> str:
    if "/" in value or any(char.isspace() for char in value):
        raise problem(f"{value!r} is not a domain name (write just the host, e.g. api.example.com)")
    return value


class TapEndpoint(_Section):
    """A per-domain stack that overrides `tap.http` for that domain."""

    domain: Annotated[Text, AfterValidator(_check_domain)]
    http: TapHttp = Field(default_factory=TapHttp)


class CustomFilter(_Section):
    """Skip processes whose executable matches; `only` limits what is skipped."""

    # strategy comes first so the check on exe can see it.
    strategy: Annotated[Literal["exact", "prefix", "suffix", "contains", "regex"], OneOf()] = "exact"
    exe: Text
    only: Annotated[list[Annotated[Literal["data", "dns", "tls", "http"], OneOf()]], BeforeValidator(_none_is_empty_list)] = Field(
        default_factory=list
    )
    _pattern: Any = PrivateAttr(default=None)   # RE2 (config/regex.py): exe paths are chosen by local users

    @field_validator("exe")
    @classmethod
    def _valid_regex(cls, exe: str, info: ValidationInfo) -> str:
        if info.data.get("strategy") == "regex":
            try:
                compile_regex(exe)
            except RegexError as err:
                raise problem(f"not a valid regular expression: {err}") from None
        return exe

    def model_post_init(self, context: Any) -> None:
        if self.strategy == "regex":
            self._pattern = compile_regex(self.exe)

    @property
    def skips_everything(self) -> bool:
        """An empty `only` means the process is not traced at all."""
        return not self.only

    def matches(self, exe: str) -> bool:
        if self.strategy == "exact":
            return exe == self.exe
        if self.strategy == "prefix":
            return exe.startswith(self.exe)
        if self.strategy == "suffix":
            return exe.endswith(self.exe)
        if self.strategy == "contains":
            return self.exe in exe
        assert self._pattern is not None
        return self._pattern.search(exe) is not None


def _group_aliases(value: Any) -> Any:
    """qtap's docs spell the container runtimes group `container` too."""
    if isinstance(value, list):
        return ["container-runtimes" if item == "container" else item for item in value]
    return value


class TapFilters(_Section):
    groups: Annotated[
        list[Annotated[Literal["qpoint", "container-runtimes", "kubernetes", "eks", "gke"], OneOf()]],
        BeforeValidator(_none_is_empty_list),
        BeforeValidator(_group_aliases),
    ] = Field(default_factory=list)
    custom: Annotated[list[CustomFilter], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)


class Tap(_Section):
    """What traffic to watch and which stack handles it."""

    direction: Annotated[Literal["all", "ingress", "egress", "egress-internal", "egress-external"], OneOf()] = "egress-external"
    ignore_loopback: bool = True
    audit_include_dns: bool = False
    http: TapHttp = Field(default_factory=TapHttp)
    endpoints: Annotated[list[TapEndpoint], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)
    filters: TapFilters = Field(default_factory=TapFilters)

    @model_validator(mode="before")
    @classmethod
    def _other_protocols(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for protocol in ("redis", "mysql", "kafka"):
                if protocol in data:
                    raise problem(f"{protocol} traffic is not supported by plaintap (only http); remove this key", field=protocol)
        return data

    def stack_name_for(self, domain: str | None) -> str:
        """The stack for HTTP traffic to `domain`: its endpoint entry (exact, any case), else `http.stack`."""
        if domain:
            wanted = domain.lower().rstrip(".")
            for endpoint in self.endpoints:
                if endpoint.domain.lower().rstrip(".") == wanted:
                    return endpoint.http.stack
        return self.http.stack


# --------------------------------------------------------------------------------------
# tags, control, rulekit


class Tag(_Section):
    """A tag added to records, read from the environment or Kubernetes/container labels."""

    key: Text
    source: Annotated[Literal["env", "k8s.label", "k8s.annotation", "container.label"], OneOf()]
    location: Text


class ControlRule(_Section):
    name: str
    expr: Expression
    actions: Annotated[list[Annotated[Literal["allow", "deny"], OneOf()]], BeforeValidator(_none_is_empty_list)] = Field(
        default_factory=list
    )


class Control(_Section):
    """qtap's access control. plaintap only observes: a `control` with rules is refused
    (they would not be enforced), an empty one loads with a warning."""

    default: Annotated[Literal["allow"], OneOf()] = "allow"
    rules: Annotated[list[ControlRule], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _passive(self) -> "Control":
        if self.rules:
            raise problem("plaintap is passive: it never blocks or allows traffic, so these rules would not be "
                          "enforced; remove `control` (use tap.filters to skip processes)", field="rules")
        return self


_MACRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_macro_name(value: str) -> str:
    if not _MACRO_NAME.fullmatch(value):
        raise problem(f"{value!r} is not a valid macro name (letters, digits and _, not starting with a digit)")
    return value


class Macro(_Section):
    """A named expression that rules use as `name()`."""

    name: Annotated[str, AfterValidator(_check_macro_name)]
    expr: Expression


class Rulekit(_Section):
    macros: Annotated[list[Macro], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)

    @field_validator("macros")
    @classmethod
    def _unique_names(cls, macros: list[Macro]) -> list[Macro]:
        seen: set[str] = set()
        for index, macro in enumerate(macros):
            if macro.name in seen:
                raise problem(f"macro {macro.name!r} is defined twice", field=f"[{index}].name")
            seen.add(macro.name)
        return macros

    @property
    def macro_texts(self) -> dict[str, str]:
        """name → expression, as `rules.compile_expr` takes them."""
        return {macro.name: macro.expr.text for macro in self.macros}


# --------------------------------------------------------------------------------------
# redaction (plaintap's own section; qtap has none)

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value.strip()):
        raise problem(f"{value!r} is not an HTTP header name (letters, digits and -, no ':' or spaces)")
    return value.strip()


class RedactionSettings(_Section):
    """What is masked in objects, access logs and records before they leave the agent
    (records/redact.py). On by default; `enabled: false` (or `--no-redact`) stores raw
    credentials. `headers` and `query_params` are added to the built-in lists."""

    enabled: bool = True
    headers: Annotated[list[Annotated[str, AfterValidator(_check_header_name)]],
                       BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)
    query_params: Annotated[list[Text], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)
    command_line: bool = True  # mask --password=…-style arguments in process.command_line

    def policy(self, *, force_off: bool = False):
        """The `records.redact.Redaction` these settings describe (`force_off`: --no-redact)."""
        from ..records.redact import Redaction
        return Redaction.build(enabled=self.enabled and not force_off, extra_headers=self.headers,
                               extra_query_params=self.query_params, command_line=self.command_line)


# --------------------------------------------------------------------------------------
# the whole file


class Config(_Section):
    """A whole `qtap.yaml`. Build it with `load_config*`, which run every check."""

    version: int | None = None  # accepted and ignored (qtap examples say 2)
    services: Annotated[Services, BeforeValidator(_none_is_empty)] = Field(default_factory=Services)
    stacks: Annotated[dict[str, Stack], BeforeValidator(_none_is_empty)] = Field(default_factory=dict)
    tap: Annotated[Tap, BeforeValidator(_none_is_empty)] = Field(default_factory=Tap)
    tags: Annotated[list[Tag], BeforeValidator(_none_is_empty_list)] = Field(default_factory=list)
    control: Control | None = None
    rulekit: Annotated[Rulekit, BeforeValidator(_none_is_empty)] = Field(default_factory=Rulekit)
    redaction: Annotated[RedactionSettings, BeforeValidator(_none_is_empty)] = Field(default_factory=RedactionSettings)
    # Set by the loader: things that load but are probably not meant (`loader.config_warnings`).
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return self._warnings

    @field_validator("stacks", mode="before")
    @classmethod
    def _none_is_reserved(cls, stacks: Any) -> Any:
        if isinstance(stacks, dict) and NO_STACK in stacks:
            raise problem(f"'{NO_STACK}' is reserved (it means no stack); pick another name", field=NO_STACK)
        return stacks

    def resource_tags(self, env: Mapping[str, str]) -> dict[str, str]:
        """Top-level `tags` with `source: env`, as OTLP resource attributes (like --tags);
        a variable that is not set gives no tag. Other sources are named in load warnings."""
        return {tag.key: env[tag.location] for tag in self.tags if tag.source == "env" and env.get(tag.location)}

    def stack(self, name: str) -> Stack | None:
        """The stack called `name`; None for "none" or an unknown name."""
        return self.stacks.get(name) if name != NO_STACK else None

    def stack_for(self, domain: str | None) -> Stack | None:
        """The stack that handles HTTP traffic to `domain`, or None when none does."""
        return self.stack(self.tap.stack_name_for(domain))
