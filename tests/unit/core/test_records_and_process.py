"""Pure record building (golden values) and process helpers."""
import json

from plaintap.capture.process import ProcessInfo, container_id_from_cgroup
from plaintap.records.connection import connection_record
from plaintap.records.model import Record, rfc3339_ns, to_json_line
from records.samples import Connection


def conn(**kw):
    c = Connection(kid=1, id="abc1", pid=42, fd=3, role=1, direction="egress-external", local_addr="10.0.0.2",
                   local_port=50000, remote_addr="93.184.216.34", remote_port=443, open_ns=1_000,
                   process=ProcessInfo(42, exe="/usr/bin/curl", cmdline="curl https://x", uid=1000, comm="curl"))
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_connection_record_golden():
    c = conn(bytes_sent=10, bytes_recv=20, domain="example.com", tls_enabled=True, tls_sni="example.com",
             tls_version="1.3")
    r = connection_record(c, 0, True, lambda ns: ns + 1_700_000_000_000_000_000)
    assert r.time_ns == 1_700_000_000_000_001_000
    assert r.body == "Connection: [egress-external via tcp] curl → example.com:443"
    assert r.attributes == {
        "event.type": "connection", "connection.part": 0, "connection.finalized": True,
        "connection.protocol": "tcp", "network.transport": "tcp", "tls.enabled": True, "tls.inspected": False,
        "connection.bytes_sent": 10, "connection.bytes_received": 20, "connection.id": "abc1",
        "connection.direction": "egress-external", "client.address": "10.0.0.2", "client.port": 50000,
        "server.address": "example.com", "server.port": 443, "network.peer.address": "93.184.216.34",
        "network.peer.port": 443, "network.local.address": "10.0.0.2", "network.local.port": 50000,
        "process.pid": 42, "process.executable.path": "/usr/bin/curl", "process.executable.name": "curl",
        "process.command_line": "curl https://x", "process.user.id": 1000, "tls.protocol.version": "1.3",
        "tls.sni": "example.com"}


def test_ingress_record_swaps_client_and_server():
    c = conn(role=2, direction="ingress", local_port=8080, remote_addr="10.0.0.9", remote_port=40000)
    a = connection_record(c, 0, False, lambda ns: ns).attributes
    assert (a["client.address"], a["client.port"], a["server.address"], a["server.port"]) == \
        ("10.0.0.9", 40000, "10.0.0.2", 8080)


def test_json_line_format_and_bytes_fallback():
    line = to_json_line(Record("plaintap.objects", 1_700_000_000_123_456_789, "b",
                               {"artifact.data": b"\xff\x00", "ok": b"text"}))
    d = json.loads(line)
    assert d["timestamp"] == "2023-11-14T22:13:20.123456789Z" == rfc3339_ns(1_700_000_000_123_456_789)
    assert d["attributes"] == {"artifact.data_b64": "/wA=", "ok": "text"}
    assert set(d) == {"scope", "timestamp", "severity", "body", "attributes"}


def test_container_id_from_cgroup_v1_and_v2():
    cid = "a" * 64
    assert container_id_from_cgroup(f"0::/system.slice/docker-{cid}.scope\n") == cid
    assert container_id_from_cgroup(f"12:pids:/kubepods/besteffort/pod1/{cid}\n") == cid
    assert container_id_from_cgroup("0::/user.slice/session-1.scope\n") == ""


def test_parse_tags():
    import pytest
    from plaintap.pipeline import parse_tags
    assert parse_tags("team:web, region:eu-west:1") == {"team": "web", "region": "eu-west:1"}
    assert parse_tags("") == {}
    with pytest.raises(ValueError, match="'oops' is not key:value"):
        parse_tags("team:web,oops")
