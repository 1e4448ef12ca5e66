#!/usr/bin/env python3
"""Generate Envoy EDS clusters, and the plugin's upstream list, for many upstreams.

REST EDS has no aggregation: every upstream the plugin serves is one Envoy
cluster of type EDS pointing at the plugin's EDS listener. With hundreds or
thousands of upstreams, write them with this script instead of by hand. The
clusters have the shape of the `web` cluster in envoy/production.yaml, and
their EDS timings (refresh_delay, request_timeout, initial_fetch_timeout) are
read from envoy/production.yaml unless given, so they stay in step with the
shipped settings (and with its `eds_hold_ms`, which must stay below
request_timeout).

Usage (standard library only; Python 3.8+):

    # 1,000 clusters u0000..u0999, to paste under `static_resources.clusters:`
    python3 scripts/gen_envoy_clusters.py --count 1000 --name-format 'u{:04d}' > clusters.yaml

    # named upstreams, other EDS timings
    python3 scripts/gen_envoy_clusters.py --names web,api,search --refresh-delay 0.5s

    # the matching `upstreams` JSON for the poller's configuration, reading
    # etcd v3 prefixes /upstreams/<name>/ with the gRPC watch on:
    python3 scripts/gen_envoy_clusters.py --count 1000 --name-format 'u{:04d}' \
        --output upstreams --prefix-format '/upstreams/{name}/' --grpc-target etcd_grpc

The cluster YAML is a list indented for `static_resources: clusters:` (two
spaces, as in envoy/production.yaml; --indent changes it). It names the
cluster that reaches the plugin's EDS listener `upsync_eds` (--eds-cluster).

From Python: `from gen_envoy_clusters import eds_clusters_yaml,
etcd_upstreams, shipped_eds_settings` (the benches in benches/ do).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCTION = REPO / "envoy" / "production.yaml"

# Upstream names the plugin accepts (and Envoy takes as cluster names).
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _one_value(text: str, pattern: str, what: str, path: Path) -> str:
    values = re.findall(pattern, text, re.M)
    if not values:
        raise ValueError(f"{path}: no {what} found")
    if len(set(values)) != 1:
        raise ValueError(f"{path}: the EDS clusters disagree on {what}: {sorted(set(values))}")
    return values[0]


def shipped_eds_settings(path: Path = PRODUCTION) -> dict:
    """The EDS timings and the plugin's eds_hold_ms as envoy/production.yaml
    ships them: {"refresh_delay": "0.02s", "request_timeout": "1s",
    "initial_fetch_timeout": "0.5s", "eds_hold_ms": 500} (today's values).
    Raises ValueError when a value is missing or differs between clusters."""
    text = Path(path).read_text()
    # YAML comments may mention the names; only read `key: value` lines.
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    hold = re.findall(r'"eds_hold_ms"\s*:\s*(\d+)', code)
    return {
        "refresh_delay": _one_value(code, r"^\s*refresh_delay:\s*(\S+)\s*$", "refresh_delay", path),
        "request_timeout": _one_value(code, r"^\s*request_timeout:\s*(\S+)\s*$", "request_timeout", path),
        "initial_fetch_timeout": _one_value(
            code, r"^\s*initial_fetch_timeout:\s*(\S+)\s*$", "initial_fetch_timeout", path
        ),
        # Not set means the plugin's default, 0 (answer 304 at once).
        "eds_hold_ms": int(_one_value(code, r'"eds_hold_ms"\s*:\s*(\d+)', "eds_hold_ms", path)) if hold else 0,
    }


def shipped_server_config(path: Path = PRODUCTION) -> str:
    """The JSON configuration of the plugin's EDS filter (root_id
    upsync_eds) in envoy/production.yaml, verbatim, e.g. '{"eds_hold_ms": 500}'."""
    text = Path(path).read_text()
    m = re.search(r"root_id:\s*upsync_eds\b.*?\n\s*value:\s*'([^'\n]*)'", text, re.S)
    if not m:
        raise ValueError(f"{path}: no configuration value for root_id upsync_eds")
    return m.group(1)


def eds_cluster_yaml(
    name: str,
    refresh_delay: str,
    request_timeout: str,
    initial_fetch_timeout: str,
    eds_cluster: str = "upsync_eds",
    indent: int = 2,
) -> str:
    """One EDS cluster named after the upstream, shaped like `web` in
    envoy/production.yaml (round robin weighted by the member's weight,
    panic routing off so `down` members get no traffic, outlier detection)."""
    if not NAME_RE.match(name):
        raise ValueError(f"upstream name {name!r}: must be 1-64 characters of A-Z a-z 0-9 _ . -")
    pad = " " * indent
    return f"""{pad}- name: {name}
{pad}  type: EDS
{pad}  connect_timeout: 1s
{pad}  lb_policy: ROUND_ROBIN
{pad}  common_lb_config:
{pad}    healthy_panic_threshold: {{value: 0}}
{pad}  outlier_detection:
{pad}    consecutive_5xx: 2
{pad}    interval: 10s
{pad}    base_ejection_time: 10s
{pad}    max_ejection_percent: 50
{pad}  eds_cluster_config:
{pad}    service_name: {name}
{pad}    eds_config:
{pad}      resource_api_version: V3
{pad}      initial_fetch_timeout: {initial_fetch_timeout}
{pad}      api_config_source:
{pad}        api_type: REST
{pad}        transport_api_version: V3
{pad}        cluster_names: [{eds_cluster}]
{pad}        refresh_delay: {refresh_delay}
{pad}        request_timeout: {request_timeout}
"""


def eds_clusters_yaml(names, eds_cluster: str = "upsync_eds", indent: int = 2, **timings) -> str:
    """EDS clusters for every name; timings (refresh_delay, request_timeout,
    initial_fetch_timeout) default to envoy/production.yaml's."""
    settings = {k: v for k, v in shipped_eds_settings().items() if k != "eds_hold_ms"}
    settings.update({k: v for k, v in timings.items() if v is not None})
    return "".join(eds_cluster_yaml(n, eds_cluster=eds_cluster, indent=indent, **settings) for n in names)


def etcd_upstreams(
    names,
    prefix_format: str = "/upstreams/{name}/",
    target: str = "etcd",
    grpc_target: str | None = None,
    **fields,
) -> list[dict]:
    """The poller's `upstreams` entries for etcd v3 prefixes (upsync layout
    `<prefix><ip:port>`); `fields` are added to every entry as they are
    (interval_ms, timeout_ms, backoff_max_ms, allow_empty, max_body_bytes...)."""
    out = []
    for name in names:
        registry = {"type": "etcd_v3", "target": target, "prefix": prefix_format.format(name=name)}
        if grpc_target:
            registry["grpc_target"] = grpc_target
        out.append({"name": name, "registry": registry, **fields})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--names", help="comma-separated upstream names")
    which.add_argument("--count", type=int, help="this many upstreams, named by --name-format")
    ap.add_argument("--name-format", default="u{:04d}", help="Python format for --count names (default u{:04d})")
    ap.add_argument("--output", choices=("clusters", "upstreams"), default="clusters",
                    help="clusters: Envoy YAML (default); upstreams: the poller's JSON list")
    ap.add_argument("--eds-cluster", default="upsync_eds", help="cluster of the plugin's EDS listener")
    ap.add_argument("--refresh-delay", help="default: envoy/production.yaml's")
    ap.add_argument("--request-timeout", help="default: envoy/production.yaml's")
    ap.add_argument("--initial-fetch-timeout", help="default: envoy/production.yaml's")
    ap.add_argument("--indent", type=int, default=2)
    ap.add_argument("--prefix-format", default="/upstreams/{name}/", help="etcd prefix per upstream")
    ap.add_argument("--target", default="etcd", help="Envoy cluster that reaches etcd")
    ap.add_argument("--grpc-target", help="Envoy HTTP/2 cluster for the etcd gRPC watch (off when not given)")
    ap.add_argument("--interval-ms", type=int, help="poll interval (with the watch: the safety net)")
    args = ap.parse_args(argv)
    if args.names:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
    else:
        names = [args.name_format.format(i) for i in range(args.count)]
    if len(set(names)) != len(names):
        print("error: upstream names repeat", file=sys.stderr)
        return 2
    try:
        if args.output == "clusters":
            sys.stdout.write(eds_clusters_yaml(
                names, eds_cluster=args.eds_cluster, indent=args.indent,
                refresh_delay=args.refresh_delay, request_timeout=args.request_timeout,
                initial_fetch_timeout=args.initial_fetch_timeout,
            ))
        else:
            fields = {} if args.interval_ms is None else {"interval_ms": args.interval_ms}
            ups = etcd_upstreams(names, args.prefix_format, args.target, args.grpc_target, **fields)
            print(json.dumps({"upstreams": ups}, indent=1))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
