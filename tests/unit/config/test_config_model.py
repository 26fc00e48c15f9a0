"""The configuration model: choices, stores, value sources, references, filters."""

from __future__ import annotations

import textwrap

import pytest

from plaintap.config import Config, ConfigError, ValueSource, load_config_text, resolve_value_source
from plaintap.config.model import DisabledStore, OtelEventStore, OtelObjectStore, S3ObjectStore, normalise_capture_level


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    try:
        load_config_text(textwrap.dedent(text), env=env or {})
    except ConfigError as err:
        return err.problems
    return []


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return load_config_text(textwrap.dedent(text), env=env or {})


def one_event_store(body: str) -> str:
    return "services:\n  event_stores:\n    - " + body.strip().replace("\n", "\n      ") + "\n"


def one_object_store(body: str) -> str:
    return "services:\n  object_stores:\n    - " + body.strip().replace("\n", "\n      ") + "\n"


def capture_stack(config: str) -> str:
    body = textwrap.indent(textwrap.dedent(config).strip(), " " * 10)
    return f"stacks:\n  capture:\n    plugins:\n      - type: http_capture\n        config:\n{body}\n"


# --------------------------------------------------------------------------------------
# choices list what is allowed


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tap:\n  direction: egres\n", "tap.direction: 'egres' is not one of all, ingress, egress, egress-internal, egress-external"),
        ("tap:\n  direction: 3\n", "tap.direction: 3 is not one of all, ingress, egress, egress-internal, egress-external"),
        ("tap:\n  filters:\n    groups: [qpoint, k8s]\n", "tap.filters.groups[1]: 'k8s' is not one of qpoint, container-runtimes, kubernetes, eks, gke"),
        (
            "tap:\n  filters:\n    custom: [{exe: x, strategy: glob}]\n",
            "tap.filters.custom[0].strategy: 'glob' is not one of exact, prefix, suffix, contains, regex",
        ),
        ("tap:\n  filters:\n    custom: [{exe: x, only: [dns, udp]}]\n", "tap.filters.custom[0].only[1]: 'udp' is not one of data, dns, tls, http"),
        (capture_stack("level: everything"), "stacks.capture.plugins[0].config.level: 'everything' is not one of none, summary, details, headers, full"),
        (capture_stack("format: xml"), "stacks.capture.plugins[0].config.format: 'xml' is not one of json, text"),
        (
            capture_stack("rules: [{name: r, expr: 'true', level: most}]"),
            "stacks.capture.plugins[0].config.rules[0].level: 'most' is not one of none, summary, details, headers, full",
        ),
        (
            "stacks:\n  s:\n    plugins:\n      - type: access_logs\n        config: {mode: verbose}\n",
            "stacks.s.plugins[0].config.mode: 'verbose' is not one of none, summary, details, full",
        ),
        (
            "stacks:\n  s:\n    plugins:\n      - type: access_logs\n        config: {format: text}\n",
            "stacks.s.plugins[0].config.format: 'text' is not one of console, json",
        ),
        (
            "stacks:\n  s:\n    plugins:\n      - type: access_logs\n        config:\n          rules: [{name: r, expr: protocol, mode: all}]\n",
            "stacks.s.plugins[0].config.rules[0].mode: 'all' is not one of none, summary, details, full",
        ),
        (one_event_store("type: otel\nprotocol: udp"), "services.event_stores[0].protocol: 'udp' is not one of grpc, http, stdout"),
        (
            one_event_store("type: otel\nheaders:\n  api-key: {type: file, value: /k}"),
            "services.event_stores[0].headers.api-key.type: 'file' is not one of env, text",
        ),
        ("tags: [{key: team, source: label, location: x}]\n", "tags[0].source: 'label' is not one of env, k8s.label, k8s.annotation, container.label"),
        ("control:\n  default: deny\n", "control.default: 'deny' is not one of allow"),
        ("control:\n  rules: [{name: r, expr: dst.ip, actions: [block]}]\n", "control.rules[0].actions[0]: 'block' is not one of allow, deny"),
    ],
)
def test_choice_problems_list_allowed_values(text: str, problem: str) -> None:
    assert problems(text) == [problem]


def test_unknown_keys_anywhere_name_their_path() -> None:
    text = """\
    services:
      event_stores:
        - type: otel
          endpont: x
          tls: {enable: true}
    tap:
      http: {stak: none}
      filters: {groups: [], custom: [{exe: a, stratgy: exact}]}
    rulekit:
      macro: []
    """
    assert problems(text) == [
        "services.event_stores[0].tls.enable: unknown key (did you mean 'enabled'?)",
        "services.event_stores[0].endpont: unknown key (did you mean 'endpoint'?)",
        "tap.http.stak: unknown key (did you mean 'stack'?)",
        "tap.filters.custom[0].stratgy: unknown key (did you mean 'strategy'?)",
        "rulekit.macro: unknown key (did you mean 'macros'?)",
    ]


def test_wrong_types() -> None:
    text = """\
    services:
      event_stores: stdout
    stacks:
      s:
        plugins:
          - http_capture
    tap:
      audit_include_dns: [yes]
      endpoints: {domain: x}
    """
    assert problems(text) == [
        "services.event_stores: expected a list, got text 'stdout'",
        "stacks.s.plugins[0]: expected a mapping (key: value), got text 'http_capture'",
        "tap.audit_include_dns: expected true or false, got a list",
        "tap.endpoints: expected a list, got a mapping",
    ]


def test_yaml_booleans_in_text_fields_get_a_hint() -> None:
    assert problems("services:\n  event_stores:\n    - {type: stdout, id: off}\n") == [
        "services.event_stores[0].id: expected text, got false (YAML reads unquoted yes/no/on/off as true/false: quote it)"
    ]


def test_null_sections_read_as_empty() -> None:
    config = load("services:\nstacks:\n  s:\n    plugins:\n      - type: http_capture\n        config:\ntap:\n  endpoints:\n")
    assert config.services.event_stores == []
    assert config.stacks["s"].plugins[0].config.level == "none"
    assert config.tap.endpoints == []


# --------------------------------------------------------------------------------------
# stores


@pytest.mark.parametrize(
    ("where", "tag", "problem"),
    [
        ("event_stores", "axiom", "'axiom' is not supported by plaintap (supported: stdout, disabled, otel)"),
        ("event_stores", "pulse", "'pulse' is not supported by plaintap (supported: stdout, disabled, otel)"),
        ("event_stores", "pulse-streaming", "'pulse-streaming' is not supported by plaintap (supported: stdout, disabled, otel)"),
        ("event_stores", "s3", "'s3' is not a known event store type (known: stdout, disabled, otel)"),
        ("event_stores", "stdot", "'stdot' is not a known event store type (known: stdout, disabled, otel)"),
        ("object_stores", "qpoint", "'qpoint' is not supported by plaintap (supported: stdout, disabled, otel, s3)"),
        ("object_stores", "gcs", "'gcs' is not a known object store type (known: stdout, disabled, otel, s3)"),
    ],
)
def test_unknown_store_types(where: str, tag: str, problem: str) -> None:
    text = f"services:\n  {where}:\n    - type: stdout\n    - type: {tag}\n"
    assert problems(text) == [f"services.{where}[1].type: {problem}"]


def test_store_without_type() -> None:
    assert problems("services:\n  event_stores:\n    - id: x\n") == [
        "services.event_stores[0].type: required (the event store type: one of stdout, disabled, otel)"
    ]


def test_store_ids_and_defaults() -> None:
    config = load("services:\n  event_stores:\n    - {type: disabled, id: quiet}\n  object_stores:\n    - {type: stdout, id: console}\n")
    assert config.services.event_store == DisabledStore(type="disabled", id="quiet")
    assert config.services.object_store.id == "console"


@pytest.mark.parametrize(
    ("body", "endpoint"),
    [
        ("type: otel", "localhost:4317"),
        ("type: otel\nprotocol: grpc", "localhost:4317"),
        ("type: otel\nprotocol: http", "localhost:4318"),
        ("type: otel\nprotocol: stdout", None),
        ("type: otel\nendpoint: null\nprotocol: http", "localhost:4318"),
        ("type: otel\nprotocol: http\nendpoint: https://otlp.example.com/v1/logs", "https://otlp.example.com/v1/logs"),
    ],
)
def test_otel_endpoint_defaults(body: str, endpoint: str | None) -> None:
    store = load(one_event_store(body)).services.event_store
    assert isinstance(store, OtelEventStore)
    assert store.endpoint == endpoint


def test_otel_defaults() -> None:
    store = load(one_event_store("type: otel")).services.event_store
    assert isinstance(store, OtelEventStore)
    assert (store.protocol, store.service_name, store.environment) == ("grpc", "plaintap", "production")
    assert (store.tls.enabled, store.tls.insecure_skip_verify) == (False, False)
    assert store.headers == {} and store.timeout is None


@pytest.mark.parametrize(("written", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), (3, 3.0), ("1.5", 1.5)])
def test_otel_timeout(written: object, seconds: float) -> None:
    store = load(one_event_store(f"type: otel\ntimeout: {written}")).services.event_store
    assert isinstance(store, OtelEventStore) and store.timeout == seconds


def test_otel_timeout_problem() -> None:
    assert problems(one_event_store("type: otel\ntimeout: soon")) == [
        "services.event_stores[0].timeout: expected a duration such as 10s, 500ms or 1m, got text 'soon'"
    ]


def test_otel_object_store_accepts_otel_endpoint() -> None:
    for key in ("otel_endpoint", "endpoint"):
        store = load(one_object_store(f"type: otel\n{key}: collector:4317")).services.object_store
        assert isinstance(store, OtelObjectStore)
        assert store.endpoint == "collector:4317"
    assert problems(one_object_store("type: otel\nendpoint: a:1\notel_endpoint: b:2")) == [
        "services.object_stores[0].otel_endpoint: give endpoint or otel_endpoint, not both"
    ]
    # only the object store has qtap's quirk
    assert problems(one_event_store("type: otel\notel_endpoint: a:1")) == ["services.event_stores[0].otel_endpoint: unknown key"]


def test_otel_object_store_bad_otel_endpoint_names_the_key_used() -> None:
    assert problems(one_object_store("type: otel\notel_endpoint: [a]")) == [
        "services.object_stores[0].otel_endpoint: expected text, got a list"
    ]


# --------------------------------------------------------------------------------------
# {{ ENV }} substitution in endpoints


def test_env_substitution_in_endpoints() -> None:
    env = {"OTEL_HOST": "collector.internal", "PORT": "4318", "S3_HOST": "minio:9000"}
    text = """\
    services:
      event_stores:
        - type: otel
          endpoint: "{{ OTEL_HOST }}:4317"
      object_stores:
        - type: otel
          otel_endpoint: "http://{{OTEL_HOST}}:{{ PORT }}"
          protocol: http
        - type: s3
          endpoint: "{{ S3_HOST }}"
          bucket: b
          access_url: "https://cdn.example.com/{{DIGEST}}"
    """
    config = load(text, env=env)
    assert config.services.event_stores[0].endpoint == "collector.internal:4317"
    assert config.services.object_stores[0].endpoint == "http://collector.internal:4318"
    s3 = config.services.object_stores[1]
    assert isinstance(s3, S3ObjectStore)
    assert s3.endpoint == "minio:9000"
    assert s3.access_url == "https://cdn.example.com/{{DIGEST}}"  # placeholders are not env vars
    assert s3.object_url("d1") == "https://cdn.example.com/d1"


def test_unset_env_in_endpoint_names_path_and_variable() -> None:
    text = """\
    services:
      event_stores:
        - type: otel
          endpoint: "{{ OTEL_HOST }}:4317"
      object_stores:
        - type: otel
          otel_endpoint: "{{ A }}:{{ B }}"
        - type: s3
          endpoint: "{{ S3_HOST }}"
          bucket: b
    """
    assert problems(text, env={"A": "x"}) == [
        "services.event_stores[0].endpoint: environment variable OTEL_HOST is not set",
        "services.object_stores[0].otel_endpoint: environment variable B is not set",
        "services.object_stores[1].endpoint: environment variable S3_HOST is not set",
    ]


def test_endpoint_empty_after_substitution() -> None:
    assert problems(one_event_store('type: otel\nendpoint: "{{ E }}"'), env={"E": ""}) == [
        "services.event_stores[0].endpoint: must not be empty"
    ]


# --------------------------------------------------------------------------------------
# value sources


def test_value_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAINTAP_TEST_KEY", "from-env")
    assert resolve_value_source(ValueSource(type="env", value="PLAINTAP_TEST_KEY")) == "from-env"
    assert resolve_value_source({"type": "text", "value": "Basic abc"}) == "Basic abc"
    assert resolve_value_source({"type": "env", "value": "K"}, env={"K": "v"}) == "v"
    assert resolve_value_source({"type": "text", "value": 12345}) == "12345"


def test_value_source_unset_env() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_value_source({"type": "env", "value": "DD_API_KEY"}, where="services.event_stores[0].headers.DD-API-KEY", env={})
    assert str(caught.value) == "environment variable DD_API_KEY is not set (needed by services.event_stores[0].headers.DD-API-KEY)"
    with pytest.raises(ConfigError, match=r"^environment variable X is not set$"):
        resolve_value_source(ValueSource(type="env", value="X"), env={})


def test_value_source_malformed() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_value_source({"type": "vault", "value": "k", "extra": 1}, where="h")
    assert caught.value.problems == ["h.type: 'vault' is not one of env, text", "h.extra: unknown key"]


def test_value_sources_are_read_lazily() -> None:
    # A config naming unset variables in value sources loads; the sink reads them later.
    config = load(one_event_store("type: otel\nheaders:\n  DD-API-KEY: {type: env, value: DD_API_KEY}"))
    header = config.services.event_stores[0].headers["DD-API-KEY"]
    assert header == ValueSource(type="env", value="DD_API_KEY")


def test_value_source_missing_value() -> None:
    assert problems(one_event_store("type: otel\nheaders:\n  k: {type: env}")) == [
        "services.event_stores[0].headers.k.value: required"
    ]


# --------------------------------------------------------------------------------------
# s3


def test_s3_defaults() -> None:
    store = load(one_object_store("type: s3\nbucket: b")).services.object_store
    assert isinstance(store, S3ObjectStore)
    assert (store.endpoint, store.region, store.insecure) == ("s3.amazonaws.com", "us-east-1", False)
    assert (store.access_key, store.secret_key, store.access_url) == (None, None, None)
    assert store.endpoint_url == "https://s3.amazonaws.com"
    assert store.object_url("abc") == "https://s3.amazonaws.com/b/abc"


@pytest.mark.parametrize(
    ("endpoint", "insecure", "url"),
    [
        ("http://127.0.0.1:8333", False, "http://127.0.0.1:8333"),
        ("https://minio.local/", False, "https://minio.local"),
        ("minio.local:9000", True, "http://minio.local:9000"),
    ],
)
def test_s3_endpoint_schemes(endpoint: str, insecure: bool, url: str) -> None:
    store = load(one_object_store(f"type: s3\nbucket: b\nendpoint: {endpoint}\ninsecure: {str(insecure).lower()}")).services.object_store
    assert isinstance(store, S3ObjectStore) and store.endpoint_url == url


def test_s3_keys_both_or_neither() -> None:
    key = "{type: env, value: K}"
    assert problems(one_object_store(f"type: s3\nbucket: b\naccess_key: {key}\nsecret_key: {key}")) == []
    assert problems(one_object_store(f"type: s3\nbucket: b\naccess_key: {key}")) == [
        "services.object_stores[0].secret_key: required when access_key is given "
        "(set both, or neither to use the default AWS credential chain)"
    ]
    assert problems(one_object_store(f"type: s3\nbucket: b\nsecret_key: {key}")) == [
        "services.object_stores[0].access_key: required when secret_key is given "
        "(set both, or neither to use the default AWS credential chain)"
    ]


def test_s3_required_and_placeholders() -> None:
    assert problems(one_object_store("type: s3")) == ["services.object_stores[0].bucket: required"]
    assert problems(one_object_store("type: s3\nbucket: ' '")) == ["services.object_stores[0].bucket: must not be empty"]
    assert problems(one_object_store("type: s3\nbucket: b\naccess_url: 'https://x/{{ KEY }}/{{DIGEST}}'")) == [
        "services.object_stores[0].access_url: unknown placeholder {{KEY}} (known: {{SCHEME}}, {{ENDPOINT}}, {{BUCKET}}, {{DIGEST}})"
    ]


# --------------------------------------------------------------------------------------
# stacks and references to them


def test_plugin_types() -> None:
    text = "stacks:\n  s:\n    plugins:\n      - type: report_usage\n      - type: detect_errors\n        config: {rules: [{name: e, triggerStatusCodes: [5xx]}]}\n      - type: http_metrics\n      - type: debug\n"
    assert problems(text) == [
        "stacks.s.plugins[3].type: 'debug' is not a known plugin type "
        "(known: access_logs, detect_errors, http_capture, http_metrics, report_usage)"
    ]
    assert problems("stacks:\n  s:\n    plugins:\n      - config: {}\n") == [
        "stacks.s.plugins[0].type: required (the plugin type: one of access_logs, detect_errors, http_capture, http_metrics, report_usage)"
    ]


def test_capture_level_helpers() -> None:
    assert normalise_capture_level("headers") == "details"
    assert normalise_capture_level("full") == "full"
    config = load(capture_stack("level: headers\nformat: text"))
    capture = config.stacks["capture"].plugin("http_capture").config
    assert capture.level == "headers"  # kept as written
    assert capture.level_for({}) == "details"
    assert config.stacks["capture"].plugin("access_logs") is None


def test_stack_references_must_exist() -> None:
    text = """\
    stacks:
      alpha: {plugins: []}
      beta: {plugins: []}
    tap:
      http: {stack: gamma}
      endpoints:
        - domain: a.example.com
          http: {stack: alpha}
        - domain: b.example.com
          http: {stack: delta}
        - domain: c.example.com
          http: {stack: none}
    """
    assert problems(text) == [
        "tap.http.stack: stack 'gamma' is not defined (defined stacks: alpha, beta; or 'none')",
        "tap.endpoints[1].http.stack: stack 'delta' is not defined (defined stacks: alpha, beta; or 'none')",
    ]


def test_stack_reference_without_stacks() -> None:
    assert problems("tap:\n  http: {stack: basic_reporting}\n") == [
        "tap.http.stack: stack 'basic_reporting' is not defined (no stacks are defined; or 'none')"
    ]


def test_empty_stack_reference_means_none() -> None:
    config = load("tap:\n  http: {stack: ''}\n")
    assert config.tap.http.stack == "none" and not config.tap.http.has_stack


def test_stack_named_none_is_reserved() -> None:
    assert problems("stacks:\n  none: {plugins: []}\n") == ["stacks.none: 'none' is reserved (it means no stack); pick another name"]


def test_endpoint_domain() -> None:
    assert problems("tap:\n  endpoints:\n    - domain: https://api.example.com/v1\n") == [
        "tap.endpoints[0].domain: 'https://api.example.com/v1' is not a domain name (write just the host, e.g. api.example.com)"
    ]
    assert problems("tap:\n  endpoints:\n    - http: {stack: none}\n") == ["tap.endpoints[0].domain: required"]


# --------------------------------------------------------------------------------------
# filters, tags, control


def test_invalid_filter_regex() -> None:
    assert problems("tap:\n  filters:\n    custom:\n      - {exe: '(unclosed', strategy: regex}\n") == [
        "tap.filters.custom[0].exe: not a valid regular expression: missing ): (unclosed"
    ]
    # the same text is fine when it is not a regex
    assert problems("tap:\n  filters:\n    custom:\n      - {exe: '(unclosed', strategy: contains}\n") == []


@pytest.mark.parametrize(
    ("strategy", "exe", "path", "expected"),
    [
        ("exact", "/usr/bin/curl", "/usr/bin/curl", True),
        ("exact", "curl", "/usr/bin/curl", False),
        ("prefix", "/usr/bin/", "/usr/bin/curl", True),
        ("suffix", "/curl", "/usr/bin/curl", True),
        ("suffix", "/curl", "/usr/bin/curly", False),
        ("contains", "bin/cu", "/usr/bin/curl", True),
        ("regex", "python3\\.[0-9]+$", "/usr/bin/python3.11", True),
        ("regex", "^python", "/usr/bin/python3.11", False),
    ],
)
def test_filter_strategies(strategy: str, exe: str, path: str, expected: bool) -> None:
    config = load(f"tap:\n  filters:\n    custom:\n      - {{exe: '{exe}', strategy: {strategy}}}\n")
    assert config.tap.filters.custom[0].matches(path) is expected


def test_tags_become_resource_attributes_and_control_rules_are_refused() -> None:
    text = """\
    version: 2
    tags:
      - {key: team, source: env, location: TEAM}
      - {key: app, source: k8s.label, location: app.kubernetes.io/name}
      - {key: unset, source: env, location: NOT_SET_ANYWHERE}
    control:
      default: allow
    """
    config = load(text)
    assert [tag.key for tag in config.tags] == ["team", "app", "unset"]
    assert config.resource_tags({"TEAM": "payments"}) == {"team": "payments"}
    assert config.warnings == [
        "control: plaintap is passive (it never blocks traffic); this section changes nothing",
        "tags[1]: source k8s.label is not read yet (only env tags become resource attributes); this tag is ignored",
    ]
    assert problems("""\
    control:
      rules:
        - name: block metadata
          expr: dst.ip == "169.254.169.254"
          actions: [deny]
    """) == ["control.rules: plaintap is passive: it never blocks or allows traffic, so these rules would not be "
             "enforced; remove `control` (use tap.filters to skip processes)"]


def test_keys_that_change_nothing_are_named_in_warnings() -> None:
    config = load("""\
    version: 2
    services:
      event_stores: [{type: stdout}, {type: disabled}]
      object_stores: [{type: stdout}]
    stacks:
      s:
        plugins:
          - type: http_capture
            config: {level: full, format: text}
          - type: report_usage
            config: {flush: 5}
          - type: detect_errors
            config: {pulseToken: abc, rules: []}
    tap:
      filters: {groups: [container]}
    """)
    assert config.warnings == [
        "services.event_stores[1:]: only the first store of a list is used (qtap's default store); the other 1 are "
        "ignored",
        "stacks.s.plugins[0].config.format: text changes nothing: plaintap's objects are always the HTTP message as "
        "text (artifact.data, docs/records.md)",
        "stacks.s.plugins[1].config: report_usage takes no settings here; flush ignored",
        "stacks.s.plugins[2].config: pulseToken are Qpoint cloud settings, unused: issues go to the event store",
    ]
    assert config.tap.filters.groups == ["container-runtimes"]     # qtap's docs' spelling


def test_version_other_than_2_loads_with_a_warning() -> None:
    v2, v1 = load("version: 2\n"), load("version: 1\n")
    assert v2.model_dump() == v1.model_copy(update={"version": 2}).model_dump()
    assert v2.warnings == []
    assert v1.warnings == ["version: 1 is not 2; plaintap reads qtap's version 2 format and may misread this file"]


def test_otel_tls_files_and_client_certificate_pair() -> None:
    base = "services:\n  event_stores:\n    - type: otel\n      tls: {enabled: true, %s}\n"
    assert problems(base % "ca_file: /etc/ca.pem, cert_file: /c.pem, key_file: /k.pem") == []
    assert problems(base % "cert_file: /c.pem") == [
        "services.event_stores[0].tls.key_file: required when cert_file is given (a client certificate needs both)"]
    assert problems(base % "ca_flie: /etc/ca.pem")[0].startswith("services.event_stores[0].tls.ca_flie: unknown key")
