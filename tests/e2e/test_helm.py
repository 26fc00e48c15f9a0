"""The Helm chart (deploy/helm/plaintap) with the real `helm` (v4) and the Kubernetes
schemas: lint and template with default and custom values, `kubernetes-validate --strict`,
the rendered config passes `plaintap validate`, a user's qtap.yaml lands in the ConfigMap
as given, and the rendered pod spec runs (as a container with exactly its settings) and
captures.

Why the pod spec is not run with `podman kube play` here: Debian 12's podman 4.3 ignores
`hostPID: true` in kube play (the container gets a private pid namespace, checked below),
and the agent rightly refuses to run there. The test instead translates the rendered pod
spec — args, hostPID, hostNetwork, securityContext, hostPath and ConfigMap mounts — to
`podman run` and probes `/readyz` as the kubelet would."""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import PLAINTAP, ROOT, free_port, need

CHART = ROOT / "deploy" / "helm" / "plaintap"
BIN = ROOT / ".venv" / "bin"
HELM, VALIDATE = BIN / "helm", BIN / "kubernetes-validate"

CUSTOM = """
image: {repository: registry.example.com/plaintap, tag: "0.1.0-test", pullPolicy: Always}
privileged: false
runtime: {kind: docker, socket: /var/run/docker.sock}
existingSecret: plaintap-store-keys
env: [{name: OTEL_ENDPOINT, value: "collector.observability:4317"}]
priorityClassName: system-node-critical
nodeSelector: {kubernetes.io/os: linux}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64]}]}]
updateStrategy: {type: OnDelete}
metrics: {podAnnotations: false, serviceMonitor: {enabled: true, labels: {release: prom}}}
extraArgs: ["--http-buffer-size", "4mb"]
resources: {requests: {cpu: 50m, memory: 128Mi}, limits: {memory: 512Mi}}
"""


@pytest.fixture(scope="module")
def tools():
    absent = [str(p) for p in (HELM, VALIDATE) if not p.exists()]
    need(absent and f"needs {', '.join(absent)} (scripts/bootstrap.sh --test installs them)")


def helm(*args: str, cwd=None) -> str:
    r = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert r.returncode == 0, f"helm {' '.join(args)}: {r.stderr}{r.stdout}"
    return r.stdout


def render(tmp_path: Path, *args: str) -> list[dict]:
    text = helm("template", "tap", str(CHART), "--namespace", "observability", *args)
    out = tmp_path / f"rendered-{len(list(tmp_path.glob('rendered-*')))}.yaml"
    out.write_text(text)
    docs = [d for d in yaml.safe_load_all(text) if d]
    # ServiceMonitor is a CRD (prometheus-operator): no Kubernetes schema to check it against
    core = tmp_path / (out.stem + "-core.yaml")
    core.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] != "ServiceMonitor"]))
    r = subprocess.run([str(VALIDATE), "--strict", "--quiet", str(core)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"kubernetes-validate --strict: {r.stdout}{r.stderr}"
    return docs


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("values", [None, CUSTOM])
def test_lint_template_and_validate(tools, tmp_path, values):
    args = []
    if values:
        (tmp_path / "values.yaml").write_text(values)
        args = ["-f", str(tmp_path / "values.yaml")]
    lint = helm("lint", str(CHART), *args)
    assert "0 chart(s) failed" in lint
    docs = render(tmp_path, *args)
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--httpd-listen=0.0.0.0:10001" in c["args"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["sys"]["readOnly"] is True and mounts["config"]["readOnly"] is True
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    assert {"operator": "Exists"} in spec["tolerations"]
    assert pod["metadata"]["annotations"]["checksum/config"]
    # the rendered config is one plaintap accepts
    cfg = tmp_path / "rendered-qtap.yaml"
    cfg.write_text(one(docs, "ConfigMap")["data"]["qtap.yaml"])
    r = subprocess.run([str(PLAINTAP), "validate", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    if values is None:
        assert c["securityContext"] == {"privileged": True}
        assert mounts["runtime-socket"]["mountPath"] == "/run/containerd/containerd.sock"
        assert "--containerd-socket=/run/containerd/containerd.sock" in c["args"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
        assert "ServiceMonitor" not in {d["kind"] for d in docs}
    else:
        sc = c["securityContext"]
        assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE",
                                                  "DAC_READ_SEARCH"}
        assert "--docker-socket=/var/run/docker.sock" in c["args"]
        assert c["args"][-2:] == ["--http-buffer-size", "4mb"]
        assert c["envFrom"] == [{"secretRef": {"name": "plaintap-store-keys"}}]
        assert c["image"] == "registry.example.com/plaintap:0.1.0-test" and c["imagePullPolicy"] == "Always"
        assert spec["priorityClassName"] == "system-node-critical"
        assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"} and "nodeAffinity" in spec["affinity"]
        assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
        assert "prometheus.io/scrape" not in pod["metadata"]["annotations"]
        sm = one(docs, "ServiceMonitor")
        assert sm["metadata"]["labels"]["release"] == "prom" and sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_users_qtap_yaml_lands_in_the_configmap_and_rolls_the_pods(tools, tmp_path):
    user = (ROOT / "examples" / "otel" / "qtap.yaml").read_text()
    docs = render(tmp_path, "--set-file", f"config={ROOT / 'examples' / 'otel' / 'qtap.yaml'}")
    assert one(docs, "ConfigMap")["data"]["qtap.yaml"].strip() == user.strip()
    default = render(tmp_path)
    checksum = lambda d: one(d, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum(docs) != checksum(default)


def test_bad_values_fail_in_one_line(tools):
    r = subprocess.run([str(HELM), "template", "t", str(CHART), "--set", "runtime.kind=rkt"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "runtime.kind must be one of" in r.stderr


# ---- the rendered pod spec, run ------------------------------------------------------------

def podman_run_args(pod_spec: dict, configmap: dict, workdir: Path, name: str) -> list[str]:
    """`podman run` arguments equivalent to the rendered pod spec (the parts it uses)."""
    (c,) = pod_spec["containers"]
    args = ["run", "-d", "--name", name]
    if pod_spec.get("hostPID"):
        args += ["--pid", "host"]
    if pod_spec.get("hostNetwork"):
        args += ["--network", "host"]
    sc = c.get("securityContext", {})
    if sc.get("privileged"):
        args.append("--privileged")
    else:
        args += ["--cap-drop", "all", "--cap-add", ",".join(sc["capabilities"]["add"]),
                 "--security-opt", "seccomp=unconfined"]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for m in c["volumeMounts"]:
        v = volumes[m["name"]]
        if "configMap" in v:
            d = workdir / m["name"]
            d.mkdir()
            for key, text in configmap["data"].items():
                (d / key).write_text(text)
            src = str(d)
        else:
            src = v["hostPath"]["path"]
        args += ["-v", f"{src}:{m['mountPath']}{':ro' if m.get('readOnly') else ''}"]
    for e in c.get("env", []):
        args += ["-e", f"{e['name']}={e['value']}"]
    # the records go to a file rather than podman's log pipe (the neighbours' traffic is captured too)
    out = workdir / "out"
    out.mkdir()
    args += ["-v", f"{out}:/out", "--entrypoint", "sh", c["image"], "-c",
             'exec /opt/plaintap/bin/plaintap "$@" > /out/records.jsonl', "plaintap", *c["args"]]
    return args


@pytest.mark.kernel
def test_rendered_pod_spec_runs_becomes_ready_and_captures(tools, kernel, tmp_path):
    from containerenv import ensure_plaintap_image, missing_tools, podman
    why = missing_tools("podman", "runc", "mmdebstrap")
    need(why)
    image, _ = ensure_plaintap_image()
    port = free_port()
    (tmp_path / "qtap.yaml").write_text("""version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: stdout}]
stacks:
  s:
    plugins: [{type: http_capture, config: {level: summary}}]
tap: {direction: all, ignore_loopback: false, http: {stack: s}}
""")
    repo, tag = image.rsplit(":", 1)
    docs = render(tmp_path, "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
                  "--set", "image.pullPolicy=Never", "--set", "runtime.kind=none", "--set", f"status.port={port}",
                  "--set-file", f"config={tmp_path / 'qtap.yaml'}")
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    name = f"plaintap-helm-{os.getpid()}"
    try:
        podman(*podman_run_args(pod, one(docs, "ConfigMap"), tmp_path, name))
        probe = pod["containers"][0]["readinessProbe"]["httpGet"]
        deadline, ready = time.monotonic() + 90, False
        while time.monotonic() < deadline and not ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{probe['port']}{probe['path']}", timeout=1) as r:
                    ready = r.status == 200
            except OSError:
                time.sleep(0.3)
        assert ready, podman("logs", name, check=False).stderr[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        r = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/metrics?from=helm-test", "-o", "/dev/null"],
                           timeout=30)
        assert r.returncode == 0
        time.sleep(1.0)
        podman("stop", "-t", "30", name, timeout=60)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    finally:
        podman("rm", "-f", name, check=False)
    assert code == "0"
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()
               if line.startswith('{"scope"')]
    assert [r for r in records if r["attributes"].get("url.query") == "from=helm-test"
            and r["attributes"].get("process.executable.name") == "curl"]


@pytest.mark.kernel
def test_podman_kube_play_ignores_host_pid_so_the_agent_refuses(tools, kernel, tmp_path):
    """Documents why the pod spec is not run with `podman kube play` (see the module doc):
    the agent, started by kube play from the rendered spec, stops with its one line."""
    from containerenv import ensure_plaintap_image, missing_tools, podman
    need(missing_tools("podman", "catatonit"))
    image, _ = ensure_plaintap_image()
    repo, tag = image.rsplit(":", 1)
    docs = render(tmp_path, "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
                  "--set", "image.pullPolicy=Never", "--set", "runtime.kind=none", "--set", f"status.port={free_port()}")
    ds, cm = one(docs, "DaemonSet"), one(docs, "ConfigMap")
    spec = ds["spec"]["template"]["spec"]
    for c in spec["containers"]:
        c.pop("ports", None)   # podman 4.3: "PortMappings can only be used with Bridge or slirp4netns networking"
    name = f"plaintap-kp-{os.getpid()}"
    play = tmp_path / "pod.yaml"
    play.write_text(yaml.safe_dump_all([cm, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                                             "spec": spec}]))
    try:
        podman("kube", "play", str(play), timeout=180)
        deadline, err = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "--pid=host" not in err:
            err = podman("logs", f"{name}-plaintap", check=False).stderr
            time.sleep(0.5)
        pid_mode = podman("inspect", "--format", "{{.HostConfig.PidMode}}", f"{name}-plaintap").stdout.strip()
    finally:
        podman("pod", "rm", "-f", name, check=False)
    assert pid_mode == "private"
    assert "plaintap runs in a private pid namespace" in err and "hostPID: true" in err
