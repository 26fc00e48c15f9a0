# plaintap container image. Two ways to build it:
#   docker build -t plaintap .          # from source: BPF objects, native core and wheels built here
#   scripts/build-image [TAG]           # podman, offline: wheels and BPF objects built on the host
#                                       # into build/wheelhouse/, installed here without network
# Run it (as qtap): docker run --privileged --pid=host --network=host -v /sys:/sys:ro \
#   -v $PWD/qtap.yaml:/etc/plaintap/qtap.yaml:ro plaintap --config /etc/plaintap/qtap.yaml
ARG BASE=docker.io/library/debian:12-slim

# ---- build: a virtualenv at /opt/plaintap holding plaintap and its pinned dependencies ----
FROM ${BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
# With a host-built wheelhouse (scripts/build-image) nothing is compiled here. Without one,
# build everything: clang + bpftool for the CO-RE objects (against the build host's BTF:
# CO-RE objects run on any kernel with BTF), rustup's cargo for the native core.
RUN if ls build/wheelhouse/plaintap-*.whl >/dev/null 2>&1; then \
        echo "using the host-built wheelhouse"; \
    else \
        apt-get update -qq && apt-get install -y -qq --no-install-recommends clang llvm libbpf-dev bpftool make \
            gcc libc6-dev curl python3-dev && \
        curl -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal && \
        make -s -C bpf && mkdir -p build/wheelhouse && \
        python3 -m venv /tmp/b && /tmp/b/bin/pip install -q -r requirements.txt && \
        PATH="$HOME/.cargo/bin:$PATH" /tmp/b/bin/pip wheel -q --no-deps -w build/wheelhouse . && \
        /tmp/b/bin/pip wheel -q -w build/wheelhouse -r requirements.txt; \
    fi
RUN python3 -m venv /opt/plaintap \
    && /opt/plaintap/bin/pip install -q --no-index --find-links build/wheelhouse -r requirements.txt plaintap \
    && /opt/plaintap/bin/pip uninstall -q -y pip setuptools \
    && sh deploy/image/slim-venv.sh /opt/plaintap

# ---- runtime: Python, libbpf and CA certificates; no compiler, no headers ----
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 libbpf1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
COPY --from=build /opt/plaintap /opt/plaintap
ENV PATH=/opt/plaintap/bin:$PATH
LABEL org.opencontainers.image.title="plaintap" \
      org.opencontainers.image.description="HTTP traffic of a Linux host, inside TLS too, per process and container (eBPF)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/opt/plaintap/bin/plaintap"]
