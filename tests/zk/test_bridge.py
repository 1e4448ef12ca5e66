"""The bridge against a real ZooKeeper, without a proxy: digest ACLs, limits, configuration errors."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from kazoo.security import make_digest_acl

import zk_harness
from zk_harness import Bridge, ZooKeeper, harness


@pytest.fixture(scope="module")
def zk(request):
    workdir = Path(tempfile.mkdtemp(prefix="upsync-zk-bridge-"))
    harness._TEMP_DIRS.add(workdir)
    server = ZooKeeper(workdir / "zk").start()
    client = zk_harness.kazoo_client(server.address)
    client.start(timeout=20)

    def close():
        client.stop()
        client.close()
        server.kill()

    request.addfinalizer(close)
    server.client = client
    server.workdir_root = workdir
    return server


@pytest.fixture
def bridges(request, zk):
    """bridges(mounts, **Bridge arguments): started bridges, stopped after the test."""
    started = []

    def make(mounts, wait: bool = False, **kwargs) -> Bridge:
        b = Bridge(Path(tempfile.mkdtemp(dir=zk.workdir_root)), zk.address, mounts, **kwargs)
        started.append(b)
        b.start(wait_serving=wait)
        return b

    def stop():
        for b in started:
            b.stop()

    request.addfinalizer(stop)
    return make


PASSWORD = "s3cret-Zk-pw"


def test_digest_acl_credentials_are_used_and_never_logged(zk, bridges):
    acl = make_digest_acl("bridge", PASSWORD, read=True)
    admin = make_digest_acl("admin", "admin-pw", all=True)
    zk.client.add_auth("digest", "admin:admin-pw")
    zk.client.create("/secure", b"", acl=[admin, acl])
    zk.client.create("/secure/web", b"", acl=[admin, acl])
    zk.client.create("/secure/web/10.0.0.1:80", b'{"weight":4}', acl=[admin, acl])
    mounts = [{"path": "/secure/web", "layout": "upsync"}]

    ok = bridges(mounts, auth={"user": "bridge", "password_env": "ZK_BRIDGE_PW"}, env={"ZK_BRIDGE_PW": PASSWORD},
                 extra={"log_level": "trace"})
    harness.wait_until(lambda: ok.kv("secure/web/")[0] == 200, 15, 0.05, "the authenticated bridge to serve")
    assert ok.members("secure/web/") == {"10.0.0.1:80": {"weight": 4}}

    # without credentials: a clear 503, never an empty list
    denied = bridges(mounts)
    # (while it is still connecting it answers 503 "connecting": wait for the NoAuth one)
    harness.wait_until(
        lambda: "NoAuth" in denied.kv("secure/web/")[2], 15, 0.05, "503 NoAuth for the unauthenticated bridge"
    )
    code, _, body = denied.kv("secure/web/")
    assert code == 503, (code, body)
    assert "NoAuth" in body and "zookeeper.auth" in body, body

    # a wrong password: ZooKeeper fails the session; 503 again
    wrong = bridges(mounts, auth={"user": "bridge", "password": "wrong-" + PASSWORD})
    harness.wait_until(lambda: wrong.kv("secure/web/")[0] == 503, 15, 0.05, "503 with a wrong password")

    for b in (ok, denied, wrong):
        assert PASSWORD not in b.log(), "the password appeared in a log"
        assert b.log(), "no log at all"
    assert PASSWORD not in json.dumps(ok.status())


def test_limits_refuse_a_mount_with_a_clear_reason(zk, bridges):
    zk.client.ensure_path("/limits/web")
    for i in range(5):
        zk.client.create(f"/limits/web/10.0.1.{i}:80", b"{}")
    b = bridges([{"path": "/limits/web", "layout": "upsync", "max_znodes": 5, "max_value_bytes": 100}], wait=True)
    assert len(b.members("limits/web/")) == 5

    zk.client.create("/limits/web/10.0.1.9:80", b"{}")
    harness.wait_until(lambda: b.kv("limits/web/")[0] == 503, 10, 0.05, "503 over max_znodes")
    assert "6 znodes under /limits/web, over max_znodes = 5" in b.kv("limits/web/")[2]
    zk.client.delete("/limits/web/10.0.1.9:80")
    harness.wait_until(lambda: b.kv("limits/web/")[0] == 200, 10, 0.05, "served again")
    assert b.status()["mounts"][0]["znodes"] == 5

    zk.client.set("/limits/web/10.0.1.0:80", b'{"weight":1,"pad":"' + b"x" * 200 + b'"}')
    harness.wait_until(lambda: b.kv("limits/web/")[0] == 503, 10, 0.05, "503 over max_value_bytes")
    body = b.kv("limits/web/")[2]
    assert "znode /limits/web/10.0.1.0:80 holds" in body and "max_value_bytes = 100" in body, body
    assert "over max_value_bytes" in b.log()
    zk.client.set("/limits/web/10.0.1.0:80", b'{"weight":2}')
    harness.wait_until(lambda: b.kv("limits/web/")[0] == 200, 10, 0.05, "served again")
    assert b.members("limits/web/")["10.0.1.0:80"] == {"weight": 2}


def test_mounts_that_do_not_exist_yet_and_bad_registrations(zk, bridges):
    b = bridges([{"path": "/later/web", "layout": "curator"}], wait=True)
    # the path is missing: Consul's "no keys" (the data says so)
    assert b.kv("later/web/")[0] == 404
    zk.client.create("/later/web/i1", json.dumps(zk_harness.service_instance("web", "10.0.0.5:81", "i1")).encode(),
                     makepath=True)
    zk.client.create("/later/web/bad", b"not json")
    harness.wait_until(lambda: "10.0.0.5:81" in b.members("later/web/"), 10, 0.05, "the new instance")
    def reported():
        st = b.status()["mounts"][0]
        return st if any("/later/web/bad" in p for p in st["problems"]) else None

    st = harness.wait_until(reported, 10, 0.05, "the bad znode reported")
    assert st["entries"] == 1 and st["znodes"] == 2, st
    zk.client.delete("/later/web", recursive=True)
    harness.wait_until(lambda: b.kv("later/web/")[0] == 404, 10, 0.05, "404 after the path is deleted")


def test_bad_configuration_is_refused_field_by_field(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({
        "zookeeper": {"connect": "127.0.0.1", "auth": {"user": "u"}},
        "mounts": [{"path": "/services/web", "layout": "x"}, {"path": "dubbo", "layout": "dubbo2", "use_ssl_port": True}],
        "listen": "localhost",
    }))
    r = subprocess.run([str(zk_harness.find_bridge()), "--check", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2, r
    for want in [
        'zookeeper.connect: "127.0.0.1" is not host:port',
        "zookeeper.auth: needs one of password, password_file, password_env",
        'mounts[0].layout: must be one of "upsync", "curator", "dubbo2", got "x"',
        "mounts[1].path: must start with '/'",
        'mounts[1].use_ssl_port: only for layout "curator", not "dubbo2"',
        "listen: must be an address ip:port",
    ]:
        assert want in r.stderr, (want, r.stderr)
    good = tmp_path / "good.json"
    good.write_text((zk_harness.REPO / "zk-bridge" / "examples" / "bridge.json").read_text())
    r = subprocess.run([str(zk_harness.find_bridge()), "--check", "--config", str(good)], capture_output=True,
                       text=True, timeout=30)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r


def test_shipped_configs_agree_and_are_valid():
    """envoy/zookeeper.yaml validates as it is (from the repository root,
    where its wasm path points); it and nginx-wasm/zookeeper.conf read the
    prefixes zk-bridge/examples/bridge.json mounts, with consul_kv."""
    example = json.loads((zk_harness.REPO / "zk-bridge" / "examples" / "bridge.json").read_text())
    prefixes = {m.get("prefix") or m["path"].strip("/") + "/" for m in example["mounts"]}
    yaml_text = zk_harness.ZK_ENVOY_CONFIG.read_text()
    poller = json.loads(harness.poller_json(yaml_text))
    regs = [u["registry"] for u in poller["upstreams"]]
    assert {r["type"] for r in regs} == {"consul_kv"} and {r["prefix"] for r in regs} == prefixes, regs
    assert example["listen"].endswith(":8500") and "port_value: 8500" in yaml_text
    if (zk_harness.REPO / "target" / "upsync_wasm.wasm").exists():
        r = harness.run_validate(zk_harness.ZK_ENVOY_CONFIG, cwd=zk_harness.REPO)
        assert r.returncode == 0, r.stdout + r.stderr
    nginx = (zk_harness.REPO / "nginx-wasm" / "zookeeper.conf").read_text()
    doc = json.loads(re.search(r"proxy_wasm upsync '(.*?)';", nginx, re.S).group(1))
    (up,) = doc["upstreams"]
    assert up["registry"]["type"] == "consul_kv" and up["registry"]["prefix"] in prefixes, up
    assert up["registry"]["target"] == [example["listen"]], up
