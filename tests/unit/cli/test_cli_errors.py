"""Errors for people (issue 13): every bad flag or environment value is one line naming the
option, the allowed values and no traceback, with a non-zero exit; `validate` warns on an
empty file and a version other than 2 and suggests the closest key; `doctor` as non-root
says to run it as root. These stop before anything needs root or the kernel."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from plaintap import doctor
from plaintap.cli import QTAP_ENV, parse_listen

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PLAINTAP_") and k not in QTAP_ENV.values()}


def plaintap(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plaintap.cli", *args], capture_output=True, text=True,
                          env={**CLEAN_ENV, **(env or {})}, timeout=60)


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert lines[0].startswith("plaintap: ")
    return lines[0]


@pytest.mark.parametrize("args, env, expected", [
    (["--httpd-listen", "nohost"], {}, "--httpd-listen: 'nohost' is not HOST:PORT"),
    (["--httpd-listen", "127.0.0.1:99999"], {}, "--httpd-listen: '127.0.0.1:99999' is not HOST:PORT"),
    ([], {"PLAINTAP_HTTPD_LISTEN": "x"}, "--httpd-listen (from PLAINTAP_HTTPD_LISTEN): 'x' is not HOST:PORT"),
    ([], {"PLAINTAP_LOG_LEVEL": "verbose"},
     "--log-level (from PLAINTAP_LOG_LEVEL): 'verbose' is not one of debug, info, warn, error"),
    ([], {"LOG_LEVEL": "loud"}, "--log-level (from LOG_LEVEL): 'loud' is not one of debug, info, warn, error"),
    (["--log-level", "trace"], {}, "--log-level: 'trace' is not one of debug, info, warn, error"),
    ([], {"LOG_ENCODING": "xml"}, "--log-encoding (from LOG_ENCODING): 'xml' is not one of console, json"),
    (["--http-buffer-size", "lots"], {}, "--http-buffer-size: "),
    ([], {"HTTP_BUFFER_SIZE": "-1"}, "--http-buffer-size (from HTTP_BUFFER_SIZE): "),
    (["--ring-buffer-size", "12qb"], {}, "--ring-buffer-size: "),
    (["--tags", "novalue"], {}, "--tags: 'novalue' is not key:value"),
    ([], {"QPOINT_DEPLOYMENT_TAGS": "a"}, "--tags (from QPOINT_DEPLOYMENT_TAGS): 'a' is not key:value"),
    (["--tls-probes", "openssl,rustls"], {}, "--tls-probes: unknown rustls (allowed: openssl, gotls, nodetls)"),
    (["--workers", "0"], {}, "--workers: 0 is out of range (1 to 64)"),
    ([], {"PLAINTAP_WORKERS": "two"}, "--workers (from PLAINTAP_WORKERS): 'two' is not a whole number (e.g. 2)"),
    (["--yield-ms", "500"], {}, "--yield-ms: 500 is out of range (0 to 100)"),
    ([], {"PLAINTAP_YIELD_MS": "soon"}, "--yield-ms (from PLAINTAP_YIELD_MS): 'soon' is not a number of milliseconds (e.g. 5)"),
])
def test_bad_option_values_are_one_line(args, env, expected):
    r = plaintap("run", *args, env=env)
    assert r.returncode == 2, r.stderr
    assert expected in one_line(r)


def test_qtap_config_variable_names_the_config(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("version: 2\ntap: {direction: sideways}\n")
    r = plaintap("run", env={"QPOINT_CONFIG": str(f)})
    assert r.returncode == 2
    assert "tap.direction: 'sideways' is not one of" in one_line(r)


def test_parse_listen_forms():
    assert parse_listen("127.0.0.1:10001") == ("127.0.0.1", 10001)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen(":8080") == ("0.0.0.0", 8080)
    for bad in ("nohost", "host:", "host:port", "1.2.3.4:70000", "a b:1"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_validate_warns_on_empty_file_and_other_versions(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    r = plaintap("validate", str(empty))
    assert r.returncode == 0
    assert f"{empty}: warning: the file is empty" in r.stdout and r.stdout.rstrip().endswith("valid (1 warning(s))")
    v3 = tmp_path / "v3.yaml"
    v3.write_text("version: 3\n")
    r = plaintap("validate", str(v3))
    assert f"{v3}: warning: version: 3 is not 2" in r.stdout and "(1 warning(s))" in r.stdout
    v2 = tmp_path / "v2.yaml"
    v2.write_text("version: 2\n")
    assert plaintap("validate", str(v2)).stdout.strip() == f"{v2}: valid"


def test_validate_suggests_the_closest_key(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("version: 2\nstacks:\n  s:\n    plugins:\n      - type: http_capture\n        config: {levle: full}\n"
                 "tap: {direktion: all}\n")
    r = plaintap("validate", str(f))
    assert r.returncode == 2
    assert "stacks.s.plugins[0].config.levle: unknown key (did you mean 'level'?)" in r.stdout
    assert "tap.direktion: unknown key (did you mean 'direction'?)" in r.stdout


def test_doctor_as_non_root_says_to_run_as_root(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert doctor.run() == 1
    out = capsys.readouterr().out
    assert "run `sudo plaintap doctor`" in out
    assert "tracefs" not in out.split("fix:")[1].split("(")[0]    # the fix is root, not the kernel
    assert "CONFIG_FTRACE_SYSCALLS" not in out and "mount -t tracefs" not in out
