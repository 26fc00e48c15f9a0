"""Command line: `plaintap [run]`, `plaintap doctor`, `plaintap validate FILE`.

Every option can also come from an environment variable (PLAINTAP_<OPTION>). Errors a
person can fix are printed as one line on stderr with a non-zero exit; tracebacks only
with --log-level debug.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _env(name: str, default=None):
    return os.environ.get("PLAINTAP_" + name.upper().replace("-", "_"), default)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
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
                        choices=["debug", "info", "warn", "error"], help="agent log level (stderr)")
        sp.add_argument("--log-encoding", default=_env("log_encoding"), choices=["console", "json"],
                        help="agent log format (default: console on a terminal, else json)")
        sp.add_argument("--btf", default=_env("btf"), metavar="FILE",
                        help="BTF file for kernels without /sys/kernel/btf/vmlinux")

    run = sub.add_parser("run", help="run the agent (the default command)")
    common(run)
    run.add_argument("--config", default=_env("config"), metavar="PATH|URL",
                     help="qtap.yaml-style config file or http(s) URL (default: built-in qtap default)")
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
    run.add_argument("--ring-buffer-size", default=_env("ring_buffer_size", "64mb"), metavar="SIZE",
                     help="kernel ring buffer size (default 64mb)")

    doc = sub.add_parser("doctor", help="check what this kernel supports and whether plaintap can run")
    common(doc)

    val = sub.add_parser("validate", help="check a qtap.yaml config file and explain every problem")
    val.add_argument("file", metavar="PATH|URL")
    return p


def main(argv: list[str] | None = None) -> int:
    # gRPC's C core prints a line per failed TLS handshake unless told otherwise; our sinks
    # report failures themselves, once per burst. Must be set before grpc is imported.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.file)
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
        if isinstance(e, (BpfError, ConfigError)) or type(e).__name__ in ("ConfigUnsupported", "AbiMismatch") \
                or (isinstance(e, ValueError) and args.command != "doctor"):
            print(f"plaintap: {e}", file=sys.stderr)
            return EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_RUNTIME
        print(f"plaintap: unexpected error: {e!r} (rerun with --log-level debug for details)", file=sys.stderr)
        return EXIT_RUNTIME


def _validate(path: str) -> int:
    from .config import validate_file
    problems = validate_file(path)
    if not problems:
        print(f"{path}: valid")
        return 0
    print(f"{path}: {len(problems)} problem(s)")
    for line in problems:
        print(f"  {line}")
    return EXIT_CONFIG


def _run(args) -> int:
    from .config import default_config, load_config, parse_size
    from .pipeline import Agent, RunOptions, install_signal_handlers, parse_tags

    cfg = load_config(args.config) if args.config else default_config()
    try:
        buf = parse_size(args.http_buffer_size)
        ring = parse_size(args.ring_buffer_size)
        tags = parse_tags(args.tags)
    except ValueError as e:
        print(f"plaintap: {e}", file=sys.stderr)
        return EXIT_CONFIG
    probes = tuple(p.strip() for p in args.tls_probes.split(",") if p.strip())
    unknown = set(probes) - {"openssl", "gotls", "nodetls"}
    if unknown:
        print(f"plaintap: --tls-probes: unknown {', '.join(sorted(unknown))} (allowed: openssl, gotls, nodetls)",
              file=sys.stderr)
        return EXIT_CONFIG
    opts = RunOptions(httpd_listen=args.httpd_listen, http_buffer_size=buf, tls_probes=probes,
                      btf=args.btf, dump_streams=args.dump_streams, ring_buffer_size=ring, tags=tags,
                      config_source=args.config)
    agent = Agent(cfg, opts)
    install_signal_handlers(agent)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
