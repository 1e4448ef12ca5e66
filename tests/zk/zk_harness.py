"""ZooKeeper → upsync-zk-bridge → plugin → Envoy, all real, on 127.0.0.1.

Used by tests/zk/, scripts/demo_zk.py and benches/zk_propagation.py. Builds
on tests/e2e/harness.py (free ports, process bookkeeping, Envoy, backends,
traffic); adds:

* `ZooKeeper`: Debian's ZooKeeper 3.8 (`zkServer.sh start-foreground`),
  standalone or one member of an `Ensemble`, in a temporary directory, with
  4-letter words `ruok,srvr,mntr,cons` for readiness and inspection.
* `Bridge`: the built `upsync-zk-bridge` with a generated JSON config.
* writers for the three layouts, over kazoo (a ZooKeeper client for Python):
  `UpsyncWriter`, `CuratorWriter` (ephemeral ServiceInstance znodes, as
  Curator / Spring Cloud Zookeeper register), `Dubbo2Writer` (ephemeral
  provider URLs, as Dubbo 2 registers).
* `ZkStack`: all of it with Envoy running envoy/zookeeper.yaml (only its
  ports and the wasm path replaced), upstreams `web` (Curator), `orders`
  (Dubbo 2) and `api` (upsync).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import harness  # noqa: E402
from harness import free_ports, log_tail, wait_until  # noqa: E402

ZK_SERVER = Path("/usr/share/zookeeper/bin/zkServer.sh")
ZK_ENVOY_CONFIG = REPO / "envoy" / "zookeeper.yaml"
BRIDGE_BIN = REPO / "target" / "zk-bridge" / "upsync-zk-bridge"

# the mounts of envoy/zookeeper.yaml (and zk-bridge/examples/bridge.json)
WEB_PATH = "/services/web"
WEB_PREFIX = "services/web/"
ORDERS_INTERFACE = "org.example.OrderService"
ORDERS_PATH = f"/dubbo/{ORDERS_INTERFACE}/providers"
ORDERS_PREFIX = f"dubbo/{ORDERS_INTERFACE}/"
API_PATH = "/upstreams/api"
API_PREFIX = "upstreams/api/"


def default_mounts() -> list[dict]:
    return [
        {"path": WEB_PATH, "layout": "curator"},
        {"path": ORDERS_PATH, "layout": "dubbo2", "prefix": ORDERS_PREFIX, "protocols": ["dubbo"]},
        {"path": API_PATH, "layout": "upsync"},
    ]


def four_letter(port: int, cmd: str, timeout: float = 2.0) -> str:
    """Send a 4-letter word to a ZooKeeper server; its whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(cmd.encode())
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks).decode("utf-8", "replace")


def kazoo_client(hosts: str, **kwargs):
    from kazoo.client import KazooClient  # noqa: PLC0415

    return KazooClient(hosts=hosts, **kwargs)


# --------------------------------------------------------------------------
# ZooKeeper


class ZooKeeper:
    """One ZooKeeper server: standalone, or member `myid` of an ensemble
    (`servers`: [(myid, peer_port, election_port)])."""

    def __init__(self, workdir: Path, myid: int | None = None, servers=None, tick_ms: int = 500):
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "zookeeper.log"
        self.client_port = free_ports(1)[0]
        self.myid = myid
        self.servers = servers or []
        self.tick_ms = tick_ms
        self.proc: subprocess.Popen | None = None
        self.paused = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self.tick_ms}",
            f"dataDir={self.data_dir}",
            f"clientPort={self.client_port}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,srvr,mntr,cons",
            # sessions may ask for 2..20 ticks
            "initLimit=10",
            "syncLimit=5",
        ]
        if self.servers:
            (self.data_dir / "myid").write_text(f"{self.myid}\n")
            for sid, peer, election in self.servers:
                lines.append(f"server.{sid}=127.0.0.1:{peer}:{election}")
        cfg = self.workdir / "zoo.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def start(self, wait: bool = True, timeout: float = 60.0) -> "ZooKeeper":
        if not ZK_SERVER.exists():
            raise FileNotFoundError(f"{ZK_SERVER} not found: apt-get install zookeeper")
        cfg = self.write_config()
        env = dict(os.environ)
        env.update(
            ZOOCFGDIR=str(self.workdir),
            ZOO_LOG_DIR=str(self.workdir),
            SERVER_JVMFLAGS="-Xmx192m -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
        )
        self.proc = harness._spawn([str(ZK_SERVER), "start-foreground", str(cfg)], self.log_path, env=env)
        self.paused = False
        if wait:
            self.wait_ready(timeout)
        return self

    def _alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise harness.ProcessExited(f"zookeeper exited with {self.proc.returncode}:\n{log_tail(self.log_path)}")

    def mode(self) -> str | None:
        """standalone / leader / follower, or None while not serving."""
        try:
            m = re.search(r"^Mode: (\w+)", four_letter(self.client_port, "srvr", 1.0), re.M)
        except OSError:
            return None
        return m.group(1) if m else None

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready():
            self._alive()
            return self.mode() in ("standalone", "leader", "follower")

        try:
            wait_until(ready, timeout, 0.2, f"zookeeper on {self.address}")
        except TimeoutError:
            raise RuntimeError(f"zookeeper did not start:\n{log_tail(self.log_path)}") from None

    def session_ids(self) -> set[str]:
        """Session ids (0x...) of the clients connected to this server."""
        try:
            text = four_letter(self.client_port, "cons", 1.0)
        except OSError:
            return set()
        return {"0x" + m.lower().lstrip("0") for m in re.findall(r"sid=0x([0-9a-fA-F]+)", text)}

    def connections(self) -> int:
        m = re.search(r"^zk_num_alive_connections\s+(\d+)", four_letter(self.client_port, "mntr"), re.M)
        return int(m.group(1)) if m else -1

    def kill(self) -> None:
        if self.paused:
            self.resume()
        harness._stop(self.proc, signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the server stops answering without closing anything."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False


class Ensemble:
    """n ZooKeeper servers forming one ensemble on loopback ports."""

    def __init__(self, workdir: Path, n: int = 3):
        ports = free_ports(2 * n)
        servers = [(i + 1, ports[2 * i], ports[2 * i + 1]) for i in range(n)]
        self.members = [ZooKeeper(Path(workdir) / f"zk{i + 1}", myid=i + 1, servers=servers) for i in range(n)]

    @property
    def connect(self) -> str:
        return ",".join(m.address for m in self.members)

    def start(self, timeout: float = 90.0) -> "Ensemble":
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_ready(timeout)
        return self

    def kill(self) -> None:
        for m in self.members:
            m.kill()


# --------------------------------------------------------------------------
# the bridge


def find_bridge() -> Path:
    """$UPSYNC_ZK_BRIDGE, else the `make build-zk-bridge` build."""
    if os.environ.get("UPSYNC_ZK_BRIDGE"):
        return Path(os.environ["UPSYNC_ZK_BRIDGE"])
    if BRIDGE_BIN.exists():
        return BRIDGE_BIN
    raise FileNotFoundError(f"{BRIDGE_BIN} not built: cargo build -p upsync-zk-bridge --profile zk-bridge")


class Bridge:
    def __init__(self, workdir: Path, connect: str, mounts=None, session_timeout_ms: int = 3000, port: int | None = None,
                 auth: dict | None = None, extra: dict | None = None, env: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.workdir / "bridge.json"
        self.log_path = self.workdir / "bridge.log"
        self.env = env
        zk = {"connect": connect, "session_timeout_ms": session_timeout_ms, "reconnect_backoff_max_ms": 1000}
        if auth:
            zk["auth"] = auth
        self.config = {"listen": f"127.0.0.1:{self.port}", "zookeeper": zk, "mounts": mounts or default_mounts()}
        if extra:
            self.config.update(extra)
        self.proc: subprocess.Popen | None = None
        self.paused = False

    def start(self, wait_serving: bool = True, timeout: float = 30.0) -> "Bridge":
        self.config_path.write_text(json.dumps(self.config, indent=2))
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = harness._spawn([str(find_bridge()), "--config", str(self.config_path)], self.log_path, env=env)
        self.paused = False
        wait_until(self._answers, timeout, 0.05, "the bridge to answer")
        if wait_serving:
            self.wait_serving(timeout)
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise harness.ProcessExited(f"bridge exited with {self.proc.returncode}:\n{log_tail(self.log_path)}")
        try:
            code, _ = harness.http_json("GET", self.url + "/upsync-zk-bridge/status", timeout=1)
        except OSError:
            return False
        return code == 200

    def status(self) -> dict:
        code, body = harness.http_json("GET", self.url + "/upsync-zk-bridge/status", timeout=3)
        if code != 200:
            raise RuntimeError(f"bridge status -> {code}: {body!r}")
        return body

    def serving(self) -> bool:
        st = self.status()
        return st["session"]["live"] and all(m["serving"] for m in st["mounts"])

    def wait_serving(self, timeout: float = 30.0) -> dict:
        return wait_until(lambda: self.serving() and self.status(), timeout, 0.05, "the bridge to serve every mount")

    def kv(self, prefix: str, query: str = "recurse", timeout: float = 5.0):
        """(status, headers (case-insensitive), body) of GET /v1/kv/<prefix>?<query>."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"{self.url}/v1/kv/{prefix}?{query}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def members(self, prefix: str) -> dict[str, dict]:
        """{host:port: decoded value} served under a prefix ({} on 404)."""
        code, _, body = self.kv(prefix)
        if code == 404:
            return {}
        if code != 200:
            raise RuntimeError(f"bridge {prefix} -> {code}: {body}")
        out = {}
        for e in json.loads(body):
            value = harness.unb64(e["Value"]) if e["Value"] else ""
            out[e["Key"][len(prefix):]] = json.loads(value) if value else {}
        return out

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    def stop(self) -> None:
        if self.paused:
            self.resume()
        harness._stop(self.proc, signal.SIGTERM)


# --------------------------------------------------------------------------
# writers: the layouts as registrations


def split_addr(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


class UpsyncWriter:
    """`<path>/<host:port>` persistent znodes holding upsync JSON."""

    def __init__(self, zk, path: str = API_PATH):
        self.zk, self.path = zk, path

    def put(self, address: str, **attrs) -> None:
        value = harness.member_value(**attrs).encode()
        node = f"{self.path}/{address}"
        if self.zk.exists(node):
            self.zk.set(node, value)
        else:
            self.zk.create(node, value, makepath=True)

    def delete(self, address: str) -> None:
        self.zk.delete(f"{self.path}/{address}")

    def set_members(self, members: dict[str, dict]) -> None:
        for a, attrs in members.items():
            self.put(a, **attrs)
        existing = self.zk.get_children(self.path) if self.zk.exists(self.path) else []
        for name in existing:
            if name not in members:
                self.zk.delete(f"{self.path}/{name}")


def service_instance(name: str, address: str, id_: str, enabled: bool = True, metadata: dict | None = None) -> dict:
    """A Curator ServiceInstance as Spring Cloud Zookeeper writes it."""
    host, port = split_addr(address)
    return {
        "name": name,
        "id": id_,
        "address": host,
        "port": port,
        "sslPort": None,
        "payload": {
            "@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
            "id": f"{name}-{id_}",
            "name": name,
            "metadata": dict(metadata or {}),
        },
        "registrationTimeUTC": int(time.time() * 1000),
        "serviceType": "DYNAMIC",
        "uriSpec": {"parts": [{"value": "scheme", "variable": True}, {"value": "://", "variable": False}]},
        "enabled": enabled,
    }


class CuratorWriter:
    """`/services/<name>/<id>` ephemeral znodes holding ServiceInstance
    JSON; each instance is registered by its own ZooKeeper session (as each
    service process has one), so `crash(address)` makes it vanish the way
    a dead instance does."""

    def __init__(self, hosts: str, path: str = WEB_PATH, name: str = "web"):
        self.hosts, self.path, self.name = hosts, path, name
        self.sessions: dict[str, object] = {}
        self.ids: dict[str, str] = {}

    def register(self, address: str, enabled: bool = True, **metadata) -> None:
        zk = self.sessions.get(address)
        if zk is None:
            zk = kazoo_client(self.hosts)
            zk.start(timeout=15)
            self.sessions[address] = zk
            self.ids[address] = f"{address.replace(':', '-').replace('.', '-')}-{len(self.ids)}"
        node = f"{self.path}/{self.ids[address]}"
        meta = {k: str(v) for k, v in metadata.items()}
        data = json.dumps(service_instance(self.name, address, self.ids[address], enabled, meta)).encode()
        if zk.exists(node):
            zk.set(node, data)
        else:
            zk.create(node, data, ephemeral=True, makepath=True)

    def deregister(self, address: str) -> None:
        zk = self.sessions.get(address)
        if zk is not None:
            zk.delete(f"{self.path}/{self.ids[address]}")

    def crash(self, address: str) -> None:
        """The instance's session ends: its ephemeral znode goes."""
        zk = self.sessions.pop(address, None)
        if zk is not None:
            zk.stop()
            zk.close()

    def close(self) -> None:
        for a in list(self.sessions):
            self.crash(a)


def dubbo_url(address: str, interface: str = ORDERS_INTERFACE, protocol: str = "dubbo", **params) -> str:
    query = {"anyhost": "true", "application": "orders-app", "interface": interface, "methods": "place,cancel",
             "side": "provider", "timestamp": str(int(time.time() * 1000))}
    query.update({k: str(v) for k, v in params.items()})
    return f"{protocol}://{address}/{interface}?{urllib.parse.urlencode(query)}"


class Dubbo2Writer:
    """`/dubbo/<interface>/providers/<url-encoded provider URL>` ephemeral
    znodes, as Dubbo 2's ZookeeperRegistry writes them. A provider URL never
    changes in place: a change registers the new URL, then removes the old
    one (for a moment both exist; the bridge serves the newer)."""

    def __init__(self, zk, path: str = ORDERS_PATH):
        self.zk, self.path = zk, path
        self.nodes: dict[str, str] = {}

    def register(self, address: str, **params) -> None:
        node = f"{self.path}/{urllib.parse.quote(dubbo_url(address, **params), safe='')}"
        old = self.nodes.get(address)
        if old == node:
            return
        self.zk.create(node, b"", ephemeral=True, makepath=True)
        self.nodes[address] = node
        if old is not None and self.zk.exists(old):
            self.zk.delete(old)

    def deregister(self, address: str) -> None:
        node = self.nodes.pop(address, None)
        if node is not None and self.zk.exists(node):
            self.zk.delete(node)

    def set_members(self, members: dict[str, dict]) -> None:
        for a, params in members.items():
            self.register(a, **params)
        for a in list(self.nodes):
            if a not in members:
                self.deregister(a)


# --------------------------------------------------------------------------
# Envoy on envoy/zookeeper.yaml


def render_zookeeper_yaml(admin: int, ingress: int, eds: int, bridge: int, wasm: Path,
                          text: str | None = None) -> str:
    """envoy/zookeeper.yaml with its four ports and the wasm path replaced
    (and nothing else)."""
    text = ZK_ENVOY_CONFIG.read_text() if text is None else text
    ports = {"9901": admin, "8080": ingress, "9902": eds, "8500": bridge}
    out, n = re.subn(r"port_value: (9901|8080|9902|8500)\b", lambda m: f"port_value: {ports[m.group(1)]}", text)
    if n != 5:
        raise AssertionError(f"envoy/zookeeper.yaml: expected 5 port_value lines to replace, found {n}")
    out, n = re.subn(r'filename: "target/upsync_wasm.wasm"', f'filename: "{Path(wasm).resolve()}"', out)
    if n != 2:
        raise AssertionError(f"envoy/zookeeper.yaml: expected 2 wasm filenames, found {n}")
    return out.replace("$", "$$")  # harness.Envoy renders it as a string.Template


class ZkStack:
    """ZooKeeper (standalone, or `ensemble=3`) + bridge + backends + Envoy."""

    def __init__(self, wasm=harness.DEFAULT_WASM, backends=("alpha", "beta", "gamma"), ensemble: int = 0,
                 session_timeout_ms: int = 3000, mounts=None, keep_workdir: bool = False, envoy_yaml: str | None = None):
        self.wasm = Path(wasm)
        self.workdir = Path(tempfile.mkdtemp(prefix="upsync-zk-"))
        self.keep_workdir = keep_workdir
        if not keep_workdir:
            harness._TEMP_DIRS.add(self.workdir)
        self.backend_names = list(backends)
        self.ensemble_size = ensemble
        self.session_timeout_ms = session_timeout_ms
        self.mounts = mounts
        self.envoy_yaml = envoy_yaml
        self.zk: ZooKeeper | None = None
        self.ensemble: Ensemble | None = None
        self.bridge: Bridge | None = None
        self.backends: dict[str, harness.Backend] = {}
        self.envoy: harness.Envoy | None = None
        self.client: harness.Client | None = None
        self.kazoo = None
        self.curator: CuratorWriter | None = None
        self.dubbo: Dubbo2Writer | None = None
        self.upsync: UpsyncWriter | None = None

    @property
    def connect(self) -> str:
        return self.ensemble.connect if self.ensemble else self.zk.address

    def start(self) -> "ZkStack":
        try:
            if not self.wasm.exists():
                raise FileNotFoundError(f"plugin not built: {self.wasm} (run `make build`)")
            if self.ensemble_size:
                self.ensemble = Ensemble(self.workdir, self.ensemble_size).start()
            else:
                self.zk = ZooKeeper(self.workdir / "zk").start()
            self.kazoo = kazoo_client(self.connect)
            self.kazoo.start(timeout=20)
            for p in (WEB_PATH, ORDERS_PATH, API_PATH):
                self.kazoo.ensure_path(p)
            self.curator = CuratorWriter(self.connect)
            self.dubbo = Dubbo2Writer(self.kazoo)
            self.upsync = UpsyncWriter(self.kazoo)
            self.bridge = Bridge(self.workdir / "bridge", self.connect, self.mounts, self.session_timeout_ms).start()
            for name in self.backend_names:
                self.backends[name] = harness.Backend(name)
            self.envoy = harness.Envoy(self.workdir / "envoy", self.wasm, etcd_port=0,
                                       template=self.workdir / "zookeeper.yaml")
            (self.workdir / "zookeeper.yaml").write_text(
                render_zookeeper_yaml(self.envoy.admin_port, self.envoy.ingress_port, self.envoy.eds_port,
                                      self.bridge.port, self.wasm, self.envoy_yaml)
            )
            self.envoy.start()
            self.client = harness.Client(self.envoy.ingress_port)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.client:
            self.client.close()
        if self.envoy:
            self.envoy.stop()
        if self.bridge:
            self.bridge.stop()
        if self.curator:
            self.curator.close()
        if self.kazoo is not None:
            try:
                self.kazoo.stop()
                self.kazoo.close()
            except Exception:  # noqa: BLE001 - ZooKeeper may be gone already
                pass
        if self.ensemble:
            self.ensemble.kill()
        if self.zk:
            self.zk.kill()
        for b in self.backends.values():
            b.stop()
        self.backends = {}
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            harness._TEMP_DIRS.discard(self.workdir)

    def __enter__(self) -> "ZkStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # helpers ---------------------------------------------------------------
    def addr(self, name: str) -> str:
        return self.backends[name].address

    def sample(self, n: int = 40, path: str = "/"):
        return self.client.sample(n, path)

    def wait_routing(self, pred, path: str = "/", timeout: float = 15.0, n: int = 20, what: str = "routing"):
        last = []

        def check():
            smp = self.client.sample(n, path)
            last[:] = [smp]
            return smp if pred(smp) else None

        try:
            return wait_until(check, timeout, 0.02, what)
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what} on {path}; last sample {last[0] if last else None}; "
                f"plugin status {self._plugin_status()}; bridge {self._bridge_status()}"
            ) from None

    def route(self, path: str, *names: str, timeout: float = 15.0):
        return self.wait_routing(lambda s: s.only(*names), path, timeout, what=f"traffic to exactly {names}")

    def upstream_status(self, name: str) -> dict:
        return self.envoy.upstream_status(name)

    def _plugin_status(self) -> str:
        try:
            return json.dumps(self.envoy.status()[1])[:1500]
        except Exception as e:  # noqa: BLE001
            return repr(e)

    def _bridge_status(self) -> str:
        try:
            return json.dumps(self.bridge.status())[:1500]
        except Exception as e:  # noqa: BLE001
            return repr(e)
