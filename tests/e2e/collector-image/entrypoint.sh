#!/bin/sh
# otelcol-contrib's `--config=FILE` → rotel's flags (the receivers' endpoints, print everything).
set -eu
config=/etc/otelcol-contrib/config.yaml
for a in "$@"; do case "$a" in --config=*) config=${a#--config=} ;; esac; done
grpc=$(sed -n 's/.*grpc: *{ *endpoint: *\([^ }]*\).*/\1/p' "$config" | head -1)
http=$(sed -n 's/.*http: *{ *endpoint: *\([^ }]*\).*/\1/p' "$config" | head -1)
exec /usr/local/bin/rotel-agent start --otlp-grpc-endpoint "${grpc:-127.0.0.1:4317}" \
  --otlp-http-endpoint "${http:-127.0.0.1:4318}" --exporter blackhole --debug-log logs --debug-log-verbosity detailed
