"""The shipped configurations never serve the plugin's status or EDS to clients.

The status answer and the EDS answer list every member and registry target.
They must only be reachable on loopback (nginx: a server that listens on
127.0.0.1 only; Envoy: the `upsync_eds` role on a 127.0.0.1 listener), or,
where a control plane can only put the filter on client-facing listeners
(Istio, Envoy Gateway), behind a guard that answers those paths first.

The nginx, Envoy and Istio checks read the files (no nginx, Istio or Envoy
Gateway here); the Envoy Gateway guard's Lua script is also run on a real
Envoy 1.40 in front of the real module.
"""

from __future__ import annotations

import json
import re
import string
import urllib.request

import pytest

import support

REPO = support.REPO
NGINX_CONFS = sorted((REPO / "nginx-wasm").glob("*.conf"))
ENVOY_CONFS = sorted((REPO / "envoy").glob("*.yaml")) + [support.DEPLOY_DIR / "remote-module.yaml"]
ISTIO = support.DEPLOY_DIR / "istio-wasmplugin.yaml"
ENVOY_GATEWAY = support.DEPLOY_DIR / "envoy-gateway-extensionpolicy.yaml"
LOOPBACK = ("127.0.0.1", "::1", "[::1]", "localhost")


# --------------------------------------------------------------------------
# nginx


def _nginx_tokens(text: str) -> list[str]:
    """nginx's tokens: words, quoted strings (quotes removed), `{` `}` `;`;
    comments dropped."""
    tokens, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            tokens.append(c)
            i += 1
        elif c in "'\"":
            j = text.index(c, i + 1)
            tokens.append(text[i + 1 : j])
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{};":
                j += 1
            tokens.append(text[i:j])
            i = j
    return tokens


def _nginx_servers(text: str) -> list[dict]:
    """Each `server {}`: its `listen` addresses and its proxy_wasm configurations."""
    tokens = _nginx_tokens(text)
    servers, stack, stmt = [], [], []
    for t in tokens:
        if t == "{":
            block = {"name": stmt[0] if stmt else "", "listen": [], "wasm": []}
            if block["name"] == "server":
                servers.append(block)
            stack.append(block)
            stmt = []
        elif t == "}":
            stack.pop()
            stmt = []
        elif t == ";":
            server = next((b for b in reversed(stack) if b["name"] == "server"), None)
            if server is not None and stmt:
                if stmt[0] == "listen":
                    server["listen"].append(stmt[1])
                elif stmt[0] == "proxy_wasm":
                    server["wasm"].append(json.loads(stmt[2]))
            stmt = []
        else:
            stmt.append(t)
    assert not stack, "unbalanced braces"
    return servers


def _loopback_listen(addr: str) -> bool:
    if addr.startswith("unix:"):
        return True
    host = addr.rsplit(":", 1)[0] if ":" in addr and not addr.startswith("[") else addr.split("]")[0] + "]"
    return host in LOOPBACK


@pytest.mark.parametrize("conf", NGINX_CONFS, ids=lambda p: p.name)
def test_nginx_status_only_on_loopback_servers(conf):
    servers = _nginx_servers(conf.read_text())
    assert servers, f"{conf.name}: no server block found"
    for s in servers:
        with_status = [c for c in s["wasm"] if "status_path" in c]
        if with_status:
            assert s["listen"] and all(_loopback_listen(a) for a in s["listen"]), (
                f"{conf.name}: a server with listen {s['listen']} serves status_path "
                f"{[c['status_path'] for c in with_status]}: status must be on a loopback-only server"
            )


def test_nginx_production_has_a_loopback_status_server_with_the_same_upstream():
    servers = _nginx_servers((REPO / "nginx-wasm" / "production.conf").read_text())
    public = [s for s in servers if not all(_loopback_listen(a) for a in s["listen"])]
    status = [c for s in servers for c in s["wasm"] if "status_path" in c]
    assert public and status, "production.conf: expected a public server and a loopback status server"
    # The status filter takes part in the same lease as the traffic filter of
    # its upstream: its settings must be the same.
    traffic = {c["pick"]: c for s in public for c in s["wasm"]}
    for c in status:
        same = dict(c)
        del same["status_path"]
        assert same == traffic.get(c["pick"]), (
            f"the status server's configuration of {c['pick']!r} differs from the public one's"
        )


# --------------------------------------------------------------------------
# Envoy


def _envoy_listeners(text: str) -> list[str]:
    """The text of each static listener (`  - name:` items under `listeners:`)."""
    m = re.search(r"^  listeners:\n(.*?)(?=^  clusters:|\Z)", text, re.M | re.S)
    if not m:
        return []
    return re.split(r"^  - name: ", m.group(1), flags=re.M)[1:]


@pytest.mark.parametrize("conf", ENVOY_CONFS, ids=lambda p: p.name)
def test_envoy_eds_role_only_on_loopback_listeners(conf):
    listeners = _envoy_listeners(conf.read_text())
    assert listeners, f"{conf.name}: no listeners found"
    serving = [x for x in listeners if re.search(r"root_id: upsync_eds\b", x)]
    # Every config serves EDS but the pick-mode one that routes through the
    # dynamic forward proxy (it needs no EDS cluster).
    if conf.name != "pick-routing.yaml":
        assert serving, f"{conf.name}: no listener runs the upsync_eds role"
    for x in serving:
        addrs = re.findall(r"socket_address: \{address: ([^,}]+)", x)
        assert addrs and all(a.strip() in LOOPBACK for a in addrs), (
            f"{conf.name}: listener {x.split()[0]} runs upsync_eds on {addrs}; it must listen on loopback only"
        )


# --------------------------------------------------------------------------
# Istio


def _docs(text: str) -> list[str]:
    return [d for d in re.split(r"^---$", text, flags=re.M) if re.search(r"^kind:", d, re.M)]


def _kind(doc: str) -> str:
    return re.search(r"^kind: (\S+)", doc, re.M).group(1)


def _match_labels(doc: str) -> str:
    m = re.search(r"^  selector:\n    matchLabels:\n((?:      .*\n)+)", doc, re.M)
    assert m, "no spec.selector.matchLabels"
    return m.group(1)


def test_istio_example_denies_the_module_paths_before_the_plugin():
    docs = _docs(ISTIO.read_text())
    plugins = [d for d in docs if _kind(d) == "WasmPlugin"]
    policies = [d for d in docs if _kind(d) == "AuthorizationPolicy"]
    assert len(plugins) == 1 and len(policies) == 1, [_kind(d) for d in docs]
    plugin, policy = plugins[0], policies[0]
    assert re.search(r"^  pluginName: upsync_eds$", plugin, re.M)
    # Istio runs its authorization filter before plugins of these phases only.
    phase = re.search(r"^  phase: (\S+)$", plugin, re.M)
    assert phase and phase.group(1) in ("UNSPECIFIED_PHASE", "STATS"), phase
    assert re.search(r"^  action: DENY$", policy, re.M)
    assert _match_labels(policy) == _match_labels(plugin), "the policy must select the plugin's workloads"
    paths = re.search(r"paths: \[(.*)\]", policy)
    assert paths, policy
    got = {p.strip().strip('"') for p in paths.group(1).split(",")}
    assert {"/upsync/*", "/v3/discovery:*"} <= got, got
    # a rule with only `to` (no from/when): every caller
    assert not re.search(r"^\s+- (from|when):", policy, re.M)


# --------------------------------------------------------------------------
# Envoy Gateway: the Lua guard, run on a real Envoy in front of the module


def _guard_lua() -> str:
    text = ENVOY_GATEWAY.read_text()
    docs = _docs(text)
    assert len(docs) == 1 and _kind(docs[0]) == "EnvoyExtensionPolicy"
    doc = docs[0]
    # Lua and Wasm in the same policy: they always apply together.
    assert re.search(r"^  lua:\n", doc, re.M) and re.search(r"^  wasm:\n", doc, re.M)
    assert re.search(r"^    rootID: upsync_eds$", doc, re.M)
    m = re.search(r"^    inline: \|\n((?:      .*\n|\n)+)", doc, re.M)
    assert m, "no inline Lua script in the policy"
    return "\n".join(line[6:] for line in m.group(1).splitlines())


GUARD_ENVOY = """
node: {id: guard, cluster: guard}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: ${ADMIN_PORT}}}
static_resources:
  listeners:
${LISTENERS}
"""

LISTENER = """
  - name: ${NAME}
    address: {socket_address: {address: 127.0.0.1, port_value: ${PORT}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ${NAME}
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {prefix: /}
                direct_response: {status: 200, body: {inline_string: app}}
          http_filters:
${LUA}
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: upsync_eds
                root_id: upsync_eds
                allow_on_headers_stop_iteration: true
                vm_config:
                  vm_id: upsync
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: "${WASM}"}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""

LUA_FILTER = """
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: ${SCRIPT}
"""


def _request(port: int, path: str, method: str = "GET", body: bytes | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class _FixedConfigEnvoy(support.harness.Envoy):
    """The harness's Envoy (process bookkeeping, readiness) on a config
    written by the test instead of the demo template."""

    def render(self):
        return self.config_path


@pytest.fixture(scope="module")
def guarded_envoy(tmp_path_factory, wasm_path):
    """One Envoy, two listeners in front of the upsync_eds role: `guarded`
    with the Envoy Gateway example's Lua script first, `bare` without."""
    workdir = tmp_path_factory.mktemp("guard")
    admin, guarded, bare = support.harness.free_ports(3)
    script = json.dumps(_guard_lua())  # a JSON string is a YAML string
    listeners = "".join(
        string.Template(LISTENER).substitute(
            NAME=name, PORT=port, WASM=wasm_path,
            LUA=string.Template(LUA_FILTER).substitute(SCRIPT=script) if lua else "",
        )
        for name, port, lua in (("guarded", guarded, True), ("bare", bare, False))
    )
    env = _FixedConfigEnvoy(workdir, wasm_path, etcd_port=0)
    env.admin_port = admin
    env.config_path.write_text(string.Template(GUARD_ENVOY).substitute(ADMIN_PORT=admin, LISTENERS=listeners))
    env.start()
    yield {"guarded": guarded, "bare": bare}
    env.stop()


EDS_REQUEST = json.dumps({"version_info": "", "node": {"id": "x", "cluster": "x"}, "resource_names": ["web"]}).encode()


def test_without_the_guard_the_module_answers_clients(guarded_envoy):
    # What the guard is for: on a client-facing listener the role answers.
    status, body = _request(guarded_envoy["bare"], "/upsync/status")
    assert status == 200 and "upstreams" in json.loads(body), (status, body)
    status, _ = _request(guarded_envoy["bare"], "/v3/discovery:endpoints", "POST", EDS_REQUEST)
    assert status == 503, status  # the module's answer: no snapshot yet


@pytest.mark.parametrize(
    "path,method",
    [
        ("/upsync/status", "GET"),
        ("/upsync/status?upstream=web", "GET"),
        ("/upsync/metrics", "GET"),
        ("/v3/discovery:endpoints", "POST"),
    ],
)
def test_envoy_gateway_guard_answers_the_module_paths_first(guarded_envoy, path, method):
    body = EDS_REQUEST if method == "POST" else None
    status, got = _request(guarded_envoy["guarded"], path, method, body)
    assert (status, got) == (404, b""), (status, got)


def test_envoy_gateway_guard_lets_other_requests_through(guarded_envoy):
    assert _request(guarded_envoy["guarded"], "/upsync") == (200, b"app")
    assert _request(guarded_envoy["guarded"], "/api/v3/discovery:endpoints") == (200, b"app")
    assert _request(guarded_envoy["guarded"], "/") == (200, b"app")
