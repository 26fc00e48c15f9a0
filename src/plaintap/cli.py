"""Command line: `plaintap [run]`, `plaintap doctor`, `plaintap validate FILE`.

Every option can also come from an environment variable: PLAINTAP_<OPTION>, or qtap's own
name for it (`QTAP_ENV`: QPOINT_CONFIG, LOG_LEVEL, …) so a qtap deployment's environment
works unchanged; PLAINTAP_* wins when both are set. Every value, from a flag or the
environment, is checked before anything starts. Errors a person can fix are printed as
one line on stderr with a non-zero exit; tracebacks only with --log-level debug.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from . import __version__
from .errors import UserError

EXIT_CONFIG = 2
EXIT_RUNTIME = 1

# qtap's environment variable for an option, accepted as an alias of PLAINTAP_<OPTION>.
QTAP_ENV = {
    "config": "QPOINT_CONFIG",
    "log_level": "LOG_LEVEL",
    "log_encoding": "LOG_ENCODING",
    "tls_probes": "TLS_PROBES",
    "http_buffer_size": "HTTP_BUFFER_SIZE",
    "httpd_listen": "HTTPD_LISTEN",
    "tags": "QPOINT_DEPLOYMENT_TAGS",
    "containerd_socket": "CONTAINERD_SOCKET",
    "docker_socket": "DOCKER_SOCKET",
    "cri_runtime_socket": "CRI_RUNTIME_SOCKET",
}
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_ENCODINGS = ("console", "json")

# option → the environment variable its value came from (for error messages)
_FROM_ENV: dict[str, str] = {}


def _env(name: str, default=None):
    """The option's value from the environment (PLAINTAP_<NAME>, else qtap's name), else `default`."""
    for var in ("PLAINTAP_" + name.upper().replace("-", "_"), QTAP_ENV.get(name)):
        if var and os.environ.get(var, "") != "":
            _FROM_ENV[name] = var
            return os.environ[var]
    return default


def _flag(name: str) -> str:
    """`--log-level`, or `--log-level (from LOG_LEVEL)` when the value came from the environment."""
    var = _FROM_ENV.get(name)
    flag = "--" + name.replace("_", "-")
    return f"{flag} (from {var})" if var else flag


class _JsonFormatter(logging.Formatter):
    """One JSON object per line with qtap's keys: ts (RFC 3339, UTC), level, msg (+ logger)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out = {"ts": ts, "level": record.levelname.lower().replace("warning", "warn"), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, encoding: str | None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    enc = encoding or ("console" if sys.stderr.isatty() else "json")
    if enc == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plaintap", description=(
        "See the HTTP traffic this host sends and receives (inside TLS too), per process."))
    p.add_argument("--version", action="version", version=f"plaintap {__version__}")
    sub = p.add_subparsers(dest="command")

    def common(sp):
        sp.add_argument("--log-level", default=_env("log_level", "info"),
                        help="agent log level on stderr: debug, info, warn or error (default info)")
        sp.add_argument("--log-encoding", default=_env("log_encoding"),
                        help="agent log format: console or json (default: console on a terminal, else json)")
        sp.add_argument("--btf", default=_env("btf"), metavar="FILE",
                        help="BTF file for kernels without /sys/kernel/btf/vmlinux")

    run = sub.add_parser("run", help="run the agent (the default command)")
    common(run)
    run.add_argument("--config", default=_env("config"), metavar="PATH|URL",
                     help="qtap.yaml-style config file or https URL (default: built-in qtap default)")
    run.add_argument("--config-allow-http", action="store_true",
                     default=_env("config_allow_http", "").lower() in ("1", "true", "yes"),
                     help="accept a plain http:// --config URL (anyone on the path can change the config)")
    run.add_argument("--httpd-listen", default=_env("httpd_listen", "127.0.0.1:10001"), metavar="HOST:PORT",
                     help="status endpoints /readyz /healthz /metrics (default 127.0.0.1:10001)")
    run.add_argument("--http-buffer-size", default=_env("http_buffer_size", "2mb"), metavar="SIZE",
                     help="largest HTTP body kept whole, e.g. 512kb, 10mb (default 2mb)")
    run.add_argument("--tls-probes", default=_env("tls_probes", "openssl,gotls,nodetls"),
                     help="TLS library families to hook (default openssl,gotls,nodetls)")
    run.add_argument("--tags", default=_env("tags", ""),
                     help="k:v,... added as resource attributes to OTLP exports")
    run.add_argument("--dump-streams", default=_env("dump_streams"), metavar="DIR",
                     help="also write each connection's reassembled byte streams to DIR (debugging)")
    run.add_argument("--no-redact", action="store_true",
                     default=_env("no_redact", "").lower() in ("1", "true", "yes"),
                     help="store credentials as captured: no masking of Authorization, Cookie, API-key "
                          "headers, signed-URL query parameters or command-line secrets (default: masked)")
    run.add_argument("--ring-buffer-size", default=_env("ring_buffer_size", "64mb"), metavar="SIZE",
                     help="kernel ring buffer size (default 64mb)")
    run.add_argument("--allow-multiple", action="store_true", default=_env("allow_multiple", "") in ("1", "true"),
                     help="run even if another plaintap runs on this host (each captures everything)")
    run.add_argument("--lock-file", default=_env("lock_file", "/run/plaintap.lock"), metavar="PATH",
                     help="the one-agent-per-host lock (default /run/plaintap.lock)")
    # Container runtimes' APIs for container/pod names (qtap's flag and variable names; '' turns one off)
    run.add_argument("--containerd-socket", metavar="PATH",
                     default=_env("containerd_socket", "/run/containerd/containerd.sock"),
                     help="containerd API socket (default /run/containerd/containerd.sock, or $CONTAINERD_SOCKET)")
    run.add_argument("--docker-socket", metavar="PATH", default=_env("docker_socket", "/var/run/docker.sock"),
                     help="Docker Engine API socket, podman's too (default /var/run/docker.sock, or $DOCKER_SOCKET)")
    run.add_argument("--cri-runtime-socket", metavar="PATH",
                     default=_env("cri_runtime_socket", "/run/crio/crio.sock"),
                     help="CRI API socket, e.g. CRI-O's (default /run/crio/crio.sock, or $CRI_RUNTIME_SOCKET)")
    run.add_argument("--memory-limit", default=_env("memory_limit", "512mb"), metavar="SIZE",
                     help="memory the agent aims to stay under; half of it bounds the sink queues (default 512mb)")
    run.add_argument("--workers", default=_env("workers", "1"), metavar="N",
                     help="threads that parse connections, sharded by connection, outside the GIL "
                          f"(1 to {MAX_WORKERS}; default 1: the agent's main thread does it)")
    run.add_argument("--yield-ms", default=_env("yield_ms", "0"), metavar="MS",
                     help="each turn of the capture loop runs at idle priority for up to MS milliseconds, so the "
                          "agent uses CPU the workload leaves idle before taking any from it (0 to 100; "
                          "default 0: always normal priority; measured no faster on 2 cores, and it delays "
                          "exec handling, see README)")
    run.add_argument("--shutdown-timeout", default=_env("shutdown_timeout", "10"), metavar="SECONDS",
                     help="at SIGINT/SIGTERM, deliver what the sinks hold for at most this long (default 10)")
    run.add_argument("--spool-dir", default=_env("spool_dir", "/var/lib/plaintap/spool"), metavar="DIR",
                     help="disk spool for records a network backend cannot take now (default /var/lib/plaintap/spool)")
    run.add_argument("--spool-size", default=_env("spool_size", "1gb"), metavar="SIZE",
                     help="disk the spools may use together; 0 turns the spool off (default 1gb)")
    run.add_argument("--retry-window", default=_env("retry_window", "60"), metavar="SECONDS",
                     help="without a spool, how long an outage is retried before records are dropped (default 60)")
    run.add_argument("--process-byte-rate", default=_env("process_byte_rate", "32mb"), metavar="SIZE",
                     help="payload bytes per second one process may put on the ring (bursts of two "
                          "seconds' worth, at most a quarter of the ring); past it its bytes are shed as "
                          "counted gaps; 0: no limit (default 32mb)")
    run.add_argument("--max-connections", default=_env("max_connections", "131072"), metavar="N",
                     help="connections the kernel tracks at once; more are counted, not tracked (default 131072)")

    doc = sub.add_parser("doctor", help="check what this kernel supports and whether plaintap can run")
    common(doc)

    val = sub.add_parser("validate", help="check a qtap.yaml config file and explain every problem")
    val.add_argument("file", metavar="PATH|URL")
    val.add_argument("--config-allow-http", action="store_true",
                     default=_env("config_allow_http", "").lower() in ("1", "true", "yes"),
                     help="accept a plain http:// URL")
    return p


def main(argv: list[str] | None = None) -> int:
    # gRPC's C core prints a line per failed TLS handshake unless told otherwise; our sinks
    # report failures themselves, once per burst. Must be set before grpc is imported.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")
    _FROM_ENV.clear()
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.file, args.config_allow_http)
    problem = _check_log_options(args)
    if problem:
        print(f"plaintap: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level, args.log_encoding)
    debug = args.log_level == "debug"
    try:
        if args.command == "doctor":
            from . import doctor
            return doctor.run(args.btf)
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one clear line for people; the traceback only in debug
        from .bpf.libbpf import BpfError
        from .config import ConfigError
        if debug:
            logging.getLogger("plaintap").exception("fatal")
        if isinstance(e, (BpfError, ConfigError, UserError)) \
                or type(e).__name__ in ("ConfigUnsupported", "AbiMismatch", "SpoolError") \
                or (isinstance(e, ValueError) and args.command != "doctor"):
            print(f"plaintap: {e}", file=sys.stderr)
            return EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_RUNTIME
        print(f"plaintap: unexpected error: {e!r} (rerun with --log-level debug for details)", file=sys.stderr)
        return EXIT_RUNTIME


def _check_log_options(args) -> str | None:
    """The first bad --log-level / --log-encoding value (flag or environment), as one line."""
    if args.log_level not in LOG_LEVELS:
        return f"{_flag('log_level')}: {args.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
    if args.log_encoding is not None and args.log_encoding not in LOG_ENCODINGS:
        return f"{_flag('log_encoding')}: {args.log_encoding!r} is not one of {', '.join(LOG_ENCODINGS)}"
    return None


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` / `[v6]:PORT` / `:PORT` → (host, port); ValueError with the expected form."""
    host, sep, port = value.rpartition(":")
    example = "e.g. 127.0.0.1:10001, [::1]:10001 or 0.0.0.0:10001"
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT ({example})")
    host = host.strip("[]") or "0.0.0.0"
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"{value!r} is not HOST:PORT ({example})")
    return host, int(port)


def _validate(path: str, allow_http: bool = False) -> int:
    from .config import check_file
    problems, warnings = check_file(path, allow_http=allow_http)
    for line in warnings:
        print(f"{path}: warning: {line}")
    if not problems:
        print(f"{path}: valid" + (f" ({len(warnings)} warning(s))" if warnings else ""))
        return 0
    print(f"{path}: {len(problems)} problem(s)")
    for line in problems:
        print(f"  {line}")
    return EXIT_CONFIG


def _seconds(text: str) -> float:
    """A non-negative number of seconds (`10`, `2.5`, `30s`); ValueError says what is expected."""
    try:
        value = float(str(text).strip().removesuffix("s"))
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds (e.g. 10)") from None
    if value < 0 or value != value:
        raise ValueError(f"must be 0 or more seconds, not {text!r}")
    return value


def _parse_max_connections(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a whole number (e.g. 131072)") from None
    if not 1 <= n <= 1 << 24:
        raise ValueError(f"{n} is out of range (1 to {1 << 24})")
    return n


MAX_WORKERS = 64   # native/src/shard.rs MAX_WORKERS


def _parse_workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a whole number (e.g. 2)") from None
    if not 1 <= n <= MAX_WORKERS:
        raise ValueError(f"{n} is out of range (1 to {MAX_WORKERS})")
    return n


def _parse_yield_ms(text: str) -> float:
    try:
        ms = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number of milliseconds (e.g. 5)") from None
    if not 0 <= ms <= 100:
        raise ValueError(f"{text} is out of range (0 to 100)")
    return ms


def _run(args) -> int:
    from .instance import prepare_process
    prepare_process()   # first, while this process has one thread
    from .config import default_config, load_config, parse_size
    from .pipeline import Agent, RunOptions, install_signal_handlers, parse_tags

    values = {}
    for name, parse in (("http_buffer_size", parse_size), ("ring_buffer_size", parse_size),
                        ("tags", parse_tags), ("httpd_listen", parse_listen), ("memory_limit", parse_size),
                        ("spool_size", parse_size), ("shutdown_timeout", _seconds), ("retry_window", _seconds),
                        ("process_byte_rate", parse_size), ("max_connections", _parse_max_connections),
                        ("workers", _parse_workers), ("yield_ms", _parse_yield_ms)):
        try:
            values[name] = parse(getattr(args, name))
        except ValueError as e:
            print(f"plaintap: {_flag(name)}: {str(e).removeprefix('--tags: ')}", file=sys.stderr)
            return EXIT_CONFIG
    probes = tuple(p.strip() for p in args.tls_probes.split(",") if p.strip())
    unknown = set(probes) - {"openssl", "gotls", "nodetls"}
    if unknown:
        print(f"plaintap: {_flag('tls_probes')}: unknown {', '.join(sorted(unknown))} "
              "(allowed: openssl, gotls, nodetls)", file=sys.stderr)
        return EXIT_CONFIG
    from .capture.containers import RuntimeSockets, host_pid_namespace_problem
    problem = host_pid_namespace_problem()
    if problem:
        print(f"plaintap: {problem}", file=sys.stderr)
        return EXIT_RUNTIME
    cfg = load_config(args.config, allow_http=args.config_allow_http) if args.config else default_config()
    lock = None
    if not args.allow_multiple and os.geteuid() == 0:   # not root: the agent's own check says so
        from .instance import InstanceLock
        lock = InstanceLock(args.lock_file)
        lock.acquire()
    try:
        opts = RunOptions(httpd_listen=args.httpd_listen, http_buffer_size=values["http_buffer_size"],
                          tls_probes=probes, btf=args.btf, dump_streams=args.dump_streams,
                          ring_buffer_size=values["ring_buffer_size"], tags=values["tags"],
                          config_source=args.config, no_redact=args.no_redact,
                          runtime_sockets=RuntimeSockets(containerd=args.containerd_socket,
                                                         docker=args.docker_socket, cri=args.cri_runtime_socket),
                          config_allow_http=args.config_allow_http,
                          memory_limit=values["memory_limit"], shutdown_timeout=values["shutdown_timeout"],
                          spool_dir=args.spool_dir, spool_size=values["spool_size"],
                          retry_window=values["retry_window"],
                          process_byte_rate=values["process_byte_rate"], max_connections=values["max_connections"],
                          workers=values["workers"], yield_ms=values["yield_ms"])

        agent = Agent(cfg, opts)
        install_signal_handlers(agent)
        code = agent.run()
    finally:
        if lock is not None:
            lock.release()
    from .pipeline import exit_now
    exit_now(code)      # without waiting seconds for the kernel to release the BPF links
    return code


if __name__ == "__main__":
    sys.exit(main())
