"""Loading configurations: fixtures, the default, files, URLs, YAML problems."""

from __future__ import annotations

import base64
import functools
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plaintap.config import ConfigError, default_config, load_config, load_config_text, validate_file
from plaintap.config import loader
from plaintap.config.model import HttpCapturePlugin, OtelEventStore, OtelObjectStore, S3ObjectStore

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "config"
ENV = {"OTEL_HOST": "collector.local"}
VALID_FIXTURES = ["qtap-default.yaml", "otel-clickstack.yaml", "s3.yaml", "capture-rules.yaml"]


@pytest.mark.parametrize("name", VALID_FIXTURES)
def test_fixture_is_valid(name: str) -> None:
    assert validate_file(FIXTURES / name, env=ENV) == []
    load_config(FIXTURES / name, env=ENV)


def test_every_fixture_is_covered() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.yaml")) == sorted([*VALID_FIXTURES, "typo-levle.yaml"])


def test_typo_names_its_key_path() -> None:
    assert validate_file(FIXTURES / "typo-levle.yaml") == ["stacks.capture.plugins[0].config.levle: unknown key (did you mean 'level'?)"]
    with pytest.raises(ConfigError) as caught:
        load_config(FIXTURES / "typo-levle.yaml")
    assert str(caught.value) == "stacks.capture.plugins[0].config.levle: unknown key (did you mean 'level'?)"
    assert caught.value.source == str(FIXTURES / "typo-levle.yaml")


def test_default_config_is_qtaps_default() -> None:
    config = default_config()
    assert config == load_config(FIXTURES / "qtap-default.yaml")
    assert config.services.event_store.type == "stdout"
    assert config.services.object_store.type == "stdout"
    assert config.tap.direction == "egress-external"
    assert config.tap.ignore_loopback is True
    assert config.tap.audit_include_dns is False
    assert config.tap.http.stack == "basic_reporting"
    stack = config.stack_for("example.com")
    assert stack is not None
    assert [plugin.type for plugin in stack.plugins] == ["access_logs", "report_usage"]
    access_logs = stack.plugin("access_logs")
    assert (access_logs.config.mode, access_logs.config.format) == ("details", "console")


def test_otel_fixture_values() -> None:
    config = load_config(FIXTURES / "otel-clickstack.yaml", env=ENV)
    events = config.services.event_store
    assert isinstance(events, OtelEventStore)
    assert events.endpoint == "collector.local:4317"
    assert (events.protocol, events.service_name, events.environment) == ("grpc", "edge-agent", "staging")
    assert events.headers["authorization"].value == "CLICKSTACK_API_KEY"
    objects = config.services.object_store
    assert isinstance(objects, OtelObjectStore)
    assert objects.endpoint == "http://collector.local:4318"
    assert objects.service_name == "plaintap"
    capture = config.stacks["capture_everything"].plugin("http_capture")
    assert isinstance(capture, HttpCapturePlugin)
    assert capture.config.level_for({"http.req.path": "/healthz"}) == "none"
    assert capture.config.level_for({"http.req.path": "/app.js"}) == "details"
    assert capture.config.level_for({"http.req.path": "/api/orders"}) == "full"


def test_s3_fixture_values() -> None:
    store = load_config(FIXTURES / "s3.yaml").services.object_store
    assert isinstance(store, S3ObjectStore)
    assert (store.id, store.bucket, store.region) == ("payloads", "plaintap-objects", "us-east-1")
    assert (store.scheme, store.host, store.endpoint_url) == ("http", "127.0.0.1:8333", "http://127.0.0.1:8333")
    assert store.access_key is not None and store.access_key.value == "S3_ACCESS_KEY"
    assert store.object_url("abc123") == "http://127.0.0.1:8333/plaintap-objects/abc123?download=1"


def test_capture_rules_fixture_values() -> None:
    config = load_config(FIXTURES / "capture-rules.yaml")
    capture = config.stacks["rules"].plugin("http_capture").config
    base = {"http.req.host": "api.example.com", "http.req.path": "/v1", "dst.ip": "203.0.113.9"}
    assert capture.level_for({**base, "http.res.status": 503}) == "full"
    assert capture.level_for({**base, "http.res.status": 503, "dst.ip": "10.1.2.3"}) == "summary"
    assert capture.level_for({**base, "http.req.headers.content-type": "application/json"}) == "details"
    assert capture.level_for({"http.req.method": "PUT", "src.process.binary": "curl"}) == "details"
    assert capture.level_for({"http.req.path": "/readyz"}) == "none"
    assert capture.level_for({}) == "summary"
    assert config.tap.stack_name_for("Telemetry.Example.com") == "quiet"
    assert config.stack_for("metadata.internal") is None
    assert config.stack_for("other.example.com") is config.stacks["rules"]
    exact, prefix, regex = config.tap.filters.custom
    assert exact.matches("/usr/sbin/chronyd") and not exact.matches("/usr/sbin/chronyd2")
    assert exact.skips_everything
    assert prefix.matches("/usr/lib/systemd/systemd-resolved")
    assert regex.matches("/opt/agent-12") and not regex.matches("/opt/agent-x")
    assert regex.only == ["data", "tls"] and not regex.skips_everything


def test_several_problems_are_listed_together() -> None:
    text = "tap:\n  direction: up\n  ignore_loopback: maybe\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, source="mine.yaml")
    assert caught.value.problems == [
        "tap.direction: 'up' is not one of all, ingress, egress, egress-internal, egress-external",
        "tap.ignore_loopback: expected true or false, got text 'maybe'",
    ]
    assert str(caught.value) == "2 problems in mine.yaml:\n  " + "\n  ".join(caught.value.problems)


def test_empty_document_takes_defaults() -> None:
    config = load_config_text("", source="empty")
    assert config.stacks == {}
    assert config.tap.http.stack == "none"
    assert config.stack_for("example.com") is None
    assert config.services.event_store.type == "disabled"  # as qtap: no store configured


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", "expected a mapping of settings (version, services, stacks, tap) at the top level, got a list"),
        ("tap:\n  direction: [all\n", "line 3, column 1: YAML syntax error: expected ',' or ']', but got '<stream end>'"),
        ("tap: {direction: all\n", "line 2, column 1: YAML syntax error: expected ',' or '}', but got '<stream end>'"),
        ("a: 1\n---\nb: 2\n", "line 2, column 1: YAML syntax error: expected a single document in the stream but found another document"),
        (
            "tap:\n  direction: all\n  direction: ingress\n",
            "line 3, column 3: duplicate key 'direction' (first at line 2)",
        ),
        ("nonsense: 1\n", "nonsense: unknown key"),
        ("version: two\n", "version: expected a whole number, got text 'two'"),
        ("stacks: [a]\n", "stacks: expected a mapping (key: value), got a list"),
        ("tap:\n  redis: {stack: x}\n", "tap.redis: redis traffic is not supported by plaintap (only http); remove this key"),
    ],
)
def test_document_problems(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    assert caught.value.problems == [problem]


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = """\
base: &base {level: full, format: json}
stacks:
  s:
    plugins:
      - type: http_capture
        config:
          <<: *base
          level: summary
"""
    # `base` itself is an unknown top-level key; the merge is fine.
    assert validate_file_text(text) == ["base: unknown key"]


def validate_file_text(text: str) -> list[str]:
    try:
        load_config_text(text)
    except ConfigError as err:
        return err.problems
    return []


def test_missing_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert validate_file(missing) == [f"cannot read {missing}: No such file or directory"]


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"tap:\n  direction: \xe9gress\n")
    assert validate_file(path) == [f"{path} is not UTF-8 text (byte 18)"]


# --------------------------------------------------------------------------------------
# URLs


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fixture_server() -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(FIXTURES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_load_from_url(fixture_server: str) -> None:
    url = f"{fixture_server}/capture-rules.yaml"
    assert load_config(url, allow_http=True) == load_config(FIXTURES / "capture-rules.yaml")
    assert validate_file(url, allow_http=True) == []


def test_url_problems_name_the_url(fixture_server: str) -> None:
    url = f"{fixture_server}/typo-levle.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(url, allow_http=True)
    assert caught.value.source == url
    assert caught.value.problems == ["stacks.capture.plugins[0].config.levle: unknown key (did you mean 'level'?)"]


def test_url_not_found(fixture_server: str) -> None:
    url = f"{fixture_server}/missing.yaml"
    assert validate_file(url, allow_http=True) == [f"cannot fetch {url}: HTTP 404 File not found"]


def test_url_credentials_are_sent_but_never_shown(fixture_server: str) -> None:
    url = fixture_server.replace("http://", "http://user:s%40cret@") + "/missing.yaml"
    assert validate_file(url, allow_http=True) == [f"cannot fetch {fixture_server}/missing.yaml: HTTP 404 File not found"]
    seen: list[str | None] = []

    class Recorder(_QuietHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Recorder, directory=str(FIXTURES)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        load_config(f"http://user:s%40cret@127.0.0.1:{server.server_address[1]}/qtap-default.yaml", allow_http=True)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert seen == ["Basic " + base64.b64encode(b"user:s@cret").decode()]


def test_url_connection_refused() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (problem,) = validate_file(f"http://127.0.0.1:{port}/qtap.yaml", allow_http=True)
    assert problem.startswith(f"cannot fetch http://127.0.0.1:{port}/qtap.yaml: ")
    assert "refused" in problem.lower()


def test_url_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "FETCH_TIMEOUT_SECONDS", 0.2)
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/qtap.yaml"
        assert validate_file(url, allow_http=True) == [f"cannot fetch {url}: no answer within 0.2s"]


# --------------------------------------------------------------------------------------
# What a config URL may do (issue 9.6): https only unless allowed, redirects only within
# the origin and never with credentials, a total deadline.


def test_plain_http_is_refused_unless_allowed(fixture_server: str) -> None:
    url = f"{fixture_server}/qtap-default.yaml"
    (problem,) = validate_file(url)
    assert problem.startswith(f"cannot fetch {url}: plain http is refused") and "--config-allow-http" in problem
    assert validate_file(url, allow_http=True) == []


class _Redirector(http.server.BaseHTTPRequestHandler):
    """GET /to?url → 302 to that url; GET /cfg → the default config; records Authorization."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", self.path[4:])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = (FIXTURES / "qtap-default.yaml").read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[tuple[str, type]]:
    handler = type("R", (_Redirector,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_redirect_within_the_origin_is_followed_without_credentials(redirector) -> None:
    hostport, handler = redirector
    load_config(f"http://me:pw@{hostport}/to?/cfg", allow_http=True)
    assert [path for path, _ in handler.seen] == ["/to?/cfg", "/cfg"]
    assert handler.seen[0][1] is not None and handler.seen[1][1] is None   # Authorization not forwarded


@pytest.mark.parametrize("target, why", [
    ("http://127.0.0.2:{port}/cfg", "to another origin"),
    ("http://localhost:{port}/cfg", "to another origin"),
    ("http://127.0.0.1:1/cfg", "to another origin"),
])
def test_redirect_to_another_origin_is_refused(redirector, target, why) -> None:
    hostport, handler = redirector
    port = hostport.rsplit(":", 1)[1]
    target = target.format(port=port)
    (problem,) = validate_file(f"http://{hostport}/to?{target}", allow_http=True)
    assert problem.startswith(f"cannot fetch http://{hostport}/to?{target}: redirected {why} ({target})"), problem
    assert "\n" not in problem
    assert [path for path, _ in handler.seen] == [f"/to?{target}"]    # nothing fetched from the target


def test_redirect_from_https_to_http_is_named() -> None:
    handler = loader._SameOriginRedirects("https://config.example/qtap.yaml")
    with pytest.raises(loader._RedirectRefused, match="redirected to plain http"):
        handler.redirect_request(None, None, 302, "Found", {}, "http://config.example/qtap.yaml")
    assert loader._origin("https://Config.Example:443/x") == loader._origin("https://config.example/y")


def test_slow_drip_server_hits_the_total_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "FETCH_DEADLINE_SECONDS", 1)

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"#")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/qtap.yaml"
        started = time.monotonic()
        (problem,) = validate_file(url, allow_http=True)
        assert time.monotonic() - started < 3
        assert problem == f"cannot fetch {url}: no complete answer within 1s"
    finally:
        server.shutdown()
        server.server_close()
