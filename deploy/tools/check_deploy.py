#!/usr/bin/env python3
"""Checks the rendered Kubernetes objects of deploy/ against real things (deploy/validate.sh runs
it; the rendering, promtool and the live processes are the script's part):

  schemas   every object validates (strict: unknown fields are errors) against the Kubernetes
            OpenAPI schemas that PyPI `kubernetes-validate` bundles, offline. The custom resources
            (ServiceMonitor, PrometheusRule, ScaledObject) have no schema there and are the only
            kinds skipped; their content is checked below instead.
  flags     every --flag of a tandem-router / -prefill / -decode / -planner container is in that
            binary's --help, and none is given twice (the binaries refuse a repeated flag).
  drain     terminationGracePeriodSeconds covers --drain-ms plus the 10 s cut grace (the
            serving binaries; the planner holds no requests and stops at once).
  replicas  the prefill and decode Deployments carry no replicas.
  tls       every --tls-cert / --tls-key / --tls-ca file lies in a mounted volume (a Secret's
            listed key, when the Secret volume lists items or the Secret is in the render);
            --metrics-tls comes with --tls-cert and --tls-key; an httpGet probe targets the
            metrics port (/health or /metrics) or the router's HTTP port (not its /health,
            which waits for workers), with scheme HTTPS exactly when that port serves
            TLS; a ServiceMonitor scrapes https (with a tlsConfig) exactly when the render's
            metrics ports serve TLS.
  health    every gRPC probe's service answers SERVING on a live process of its role (the
            endpoints that a running `tandem serve` printed, --serve-out).
  rules     the PrometheusRule's groups equal deploy/prometheus/rules/*.yml, and the SLO bounds in
            the rules equal the ConfigMap's TTFT_SLO_SECONDS / ITL_SLO_SECONDS.
  promql    every ScaledObject query and dashboard query parses (promtool check rules on them).
  metrics   every metric name that a rule, ScaledObject, HPA or the Grafana dashboard names is
            served on a live process's /metrics, or is recorded by a rule.

Prints one line per failure and a closing 'N passed, N failed' line; exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
# Kinds that kubernetes-validate has no schema for (custom resources); checked by content below.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
TANDEM_BINARIES = ("tandem-router", "tandem-prefill", "tandem-decode", "tandem-planner")
# Binaries that drain on SIGTERM (--drain-ms).
DRAINING_BINARIES = ("tandem-router", "tandem-prefill", "tandem-decode")
# What a cut stream gets after the drain budget ran out (kCutGrace in router_server.cc and
# decode_server.cc).
CUT_GRACE_S = 10
METRIC_NAME = re.compile(r"\btandem[_:][A-Za-z0-9_:]*")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}")
        return ok


def load_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def containers(obj: dict) -> list:
    if obj.get("kind") != "Deployment":
        return []
    return obj["spec"]["template"]["spec"].get("containers", [])


def binary_of(c: dict) -> str:
    cmd = c.get("command") or []
    return Path(cmd[0]).name if cmd else ""


def check_schemas(c: Checks, render: str, docs: list, k8s_version: str) -> None:
    import kubernetes_validate

    for d in docs:
        name = f"{render}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(d, k8s_version, strict=True)
            c.check(True, name)
        except kubernetes_validate.SchemaNotFoundError as e:
            c.check(False, f"{name}: no schema ({e.message})")
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            c.check(False, f"{name}: {path}: {e.message}")


def help_flags(bin_dir: Path, binary: str, cache: dict) -> set:
    if binary not in cache:
        out = subprocess.run([str(bin_dir / binary), "--help"], capture_output=True, text=True,
                             timeout=60)
        cache[binary] = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out.stdout))
    return cache[binary]


def check_flags_and_drain(c: Checks, render: str, docs: list, bin_dir: Path,
                          cache: dict) -> None:
    for d in docs:
        for ct in containers(d):
            binary = binary_of(ct)
            where = f"{render}: {d['metadata']['name']}/{ct['name']}"
            if not c.check(binary in TANDEM_BINARIES, f"{where}: unknown command {binary!r}"):
                continue
            known = help_flags(bin_dir, binary, cache)
            flags = [a.split("=", 1)[0] for a in ct.get("args", []) if a.startswith("--")]
            for f in flags:
                c.check(f in known, f"{where}: {binary} has no flag {f}")
            dup = sorted({f for f in flags if flags.count(f) > 1})
            c.check(not dup, f"{where}: flags given twice (the binary refuses that): {dup}")
            if binary not in DRAINING_BINARIES:
                continue
            drain_ms = 30000  # the binaries' default
            for a in ct.get("args", []):
                if a.startswith("--drain-ms="):
                    drain_ms = int(a.split("=", 1)[1])
            grace = d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            c.check(grace >= drain_ms / 1000 + CUT_GRACE_S,
                    f"{where}: terminationGracePeriodSeconds {grace} < --drain-ms {drain_ms} ms "
                    f"+ {CUT_GRACE_S} s")
        if d.get("kind") == "Deployment" and d["metadata"]["name"] in ("tandem-prefill",
                                                                        "tandem-decode"):
            c.check("replicas" not in d["spec"],
                    f"{render}: {d['metadata']['name']} sets replicas (it would fight the "
                    "autoscaler on every apply)")


def flag_values(ct: dict) -> dict:
    """--flag -> value ('' for a bare flag) of a container's args."""
    out = {}
    for a in ct.get("args", []):
        if a.startswith("--"):
            k, _, v = a.partition("=")
            out[k] = v
    return out


def check_tls(c: Checks, render: str, docs: list) -> None:
    secrets = {d["metadata"]["name"]: set(d.get("data", {})) | set(d.get("stringData", {}))
               for d in docs if d.get("kind") == "Secret"}
    metrics_tls = set()
    for d in docs:
        pod = d["spec"]["template"]["spec"] if d.get("kind") == "Deployment" else {}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for ct in containers(d):
            binary = binary_of(ct)
            if binary not in DRAINING_BINARIES:
                continue
            where = f"{render}: {d['metadata']['name']}/{ct['name']}"
            flags = flag_values(ct)
            for flag in ("--tls-cert", "--tls-key", "--tls-ca"):
                path = flags.get(flag)
                if not path:
                    continue
                mounts = [m for m in ct.get("volumeMounts", [])
                          if path.startswith(m["mountPath"].rstrip("/") + "/")]
                if not c.check(bool(mounts), f"{where}: {flag}={path} is in no volume mount"):
                    continue
                m = max(mounts, key=lambda m: len(m["mountPath"]))
                vol = volumes.get(m["name"])
                if not c.check(vol is not None, f"{where}: mount {m['name']} has no volume"):
                    continue
                key = path[len(m["mountPath"].rstrip("/")) + 1:]
                secret = vol.get("secret")
                if secret is None:
                    continue
                if "items" in secret:
                    keys = {i["path"]: i["key"] for i in secret["items"]}
                    c.check(key in keys, f"{where}: {flag}={path}: Secret volume {m['name']} "
                            f"lists no item with path {key}")
                elif secret.get("secretName") in secrets:
                    c.check(key in secrets[secret["secretName"]],
                            f"{where}: {flag}={path}: Secret {secret['secretName']} has no key "
                            f"{key}")
            serves_tls = "--tls-cert" in flags
            if "--metrics-tls" in flags:
                c.check(serves_tls and "--tls-key" in flags,
                        f"{where}: --metrics-tls without --tls-cert and --tls-key (the binary "
                        "refuses to start)")
                metrics_tls.add(d["metadata"]["name"])
            ports = {p.get("name"): p["containerPort"] for p in ct.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                g = (ct.get(probe) or {}).get("httpGet")
                if g is None:
                    continue
                port = ports.get(g["port"], g["port"])
                scheme = g.get("scheme", "HTTP")
                if str(port) == flags.get("--metrics-port"):
                    tls, what = "--metrics-tls" in flags, "metrics"
                    c.check(g.get("path") in ("/health", "/metrics"),
                            f"{where}: {probe}: the metrics port serves no {g.get('path')}")
                elif binary == "tandem-router" and str(port) == flags.get("--http-port"):
                    tls, what = serves_tls, "HTTP"
                    c.check(g.get("path") != "/health",
                            f"{where}: {probe}: the HTTP API's /health is 503 without workers in "
                            "rotation, and they register through the router's Service (readiness "
                            "and startup would never pass, liveness would restart the router): "
                            "probe /health on the metrics port")
                else:
                    c.check(False, f"{where}: {probe}: httpGet on port {g['port']}, which is "
                            "neither the metrics nor the router's HTTP port")
                    continue
                c.check(scheme == ("HTTPS" if tls else "HTTP"),
                        f"{where}: {probe}: scheme {scheme} on the {what} port, which serves "
                        f"{'HTTPS' if tls else 'plain HTTP'}")
    for d in docs:
        if d.get("kind") != "ServiceMonitor":
            continue
        for e in d["spec"]["endpoints"]:
            if e.get("port") != "metrics":
                continue
            where = f"{render}: ServiceMonitor/{d['metadata']['name']}"
            https = e.get("scheme") == "https"
            if metrics_tls:
                c.check(https and "tlsConfig" in e,
                        f"{where}: {', '.join(sorted(metrics_tls))} serve metrics over HTTPS "
                        "(--metrics-tls): the endpoint needs scheme https and a tlsConfig")
            else:
                c.check(not https, f"{where}: scheme https, but no metrics port serves TLS")


def probe_services(docs: list) -> set:
    """(binary, service) of every gRPC probe."""
    out = set()
    for d in docs:
        for ct in containers(d):
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                g = (ct.get(probe) or {}).get("grpc")
                if g is not None:
                    out.add((binary_of(ct), g.get("service", "")))
    return out


def check_health(c: Checks, services: set, grpc_addr: dict) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for binary, service in sorted(services):
        role = binary.removeprefix("tandem-")
        addr = grpc_addr.get(role)
        if not c.check(addr is not None, f"health: no live {role} to ask for {service!r}"):
            continue
        with grpc.insecure_channel(addr) as ch:
            try:
                r = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=10)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
            except grpc.RpcError as e:
                status = f"{e.code().name}: {e.details()}"
            c.check(status == "SERVING",
                    f"health: {binary} at {addr}: service {service!r} is {status}, not SERVING")


def rule_groups(path: Path) -> list:
    return yaml.safe_load(path.read_text())["groups"]


def check_rules(c: Checks, docs_by_render: dict, rule_files: list) -> None:
    groups = [g for f in rule_files for g in rule_groups(f)]
    for render, docs in docs_by_render.items():
        for d in docs:
            if d.get("kind") == "PrometheusRule":
                key = lambda g: g["name"]  # noqa: E731 (file order does not matter)
                c.check(sorted(d["spec"]["groups"], key=key) == sorted(groups, key=key),
                        f"{render}: PrometheusRule {d['metadata']['name']} differs from "
                        f"{', '.join(str(f.relative_to(DEPLOY)) for f in rule_files)}")
    config = load_docs(DEPLOY / "base" / "configmap.yaml")[0]["data"]
    exprs = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    for record, histogram, key in (
            ("tandem:ttft_slo_attainment:ratio1m", "tandem_time_to_first_token_seconds",
             "TTFT_SLO_SECONDS"),
            ("tandem:itl_slo_attainment:ratio1m", "tandem_inter_token_latency_seconds",
             "ITL_SLO_SECONDS")):
        m = re.search(histogram + r'_bucket\{[^}]*le="([^"]+)"', exprs.get(record, ""))
        c.check(m is not None and float(m.group(1)) == float(config[key]),
                f"rules: {record} measures le={m.group(1) if m else None}, but the ConfigMap's "
                f"{key} is {config[key]}")


def names_in_promql(expr: str) -> set:
    return set(METRIC_NAME.findall(QUOTED.sub('""', expr)))


def referenced_metrics(docs_by_render: dict, rule_files: list, dashboards: list) -> dict:
    """metric name -> where it is named."""
    refs: dict = {}

    def add(names, where):
        for n in names:
            refs.setdefault(n, where)

    for f in rule_files:
        for g in rule_groups(f):
            for r in g["rules"]:
                add(names_in_promql(r["expr"]), f"{f.name}: {r.get('record') or r.get('alert')}")
    for render, docs in docs_by_render.items():
        for d in docs:
            where = f"{render}: {d['kind']}/{d['metadata']['name']}"
            if d["kind"] == "ScaledObject":
                for t in d["spec"]["triggers"]:
                    add(names_in_promql(t["metadata"].get("query", "")), where)
            elif d["kind"] == "HorizontalPodAutoscaler":
                for m in d["spec"].get("metrics", []):
                    if m["type"] == "External":
                        add([m["external"]["metric"]["name"]], where)
            elif d["kind"] == "PrometheusRule":
                for g in d["spec"]["groups"]:
                    for r in g["rules"]:
                        add(names_in_promql(r["expr"]), where)
    for dash in dashboards:
        # The whole file: panel queries, template variables, legends.
        add(METRIC_NAME.findall(dash.read_text()), dash.name)
    return refs


def check_promql(c: Checks, docs_by_render: dict, dashboards: list) -> None:
    """Parses the queries that no rule file holds by handing them to promtool as recording rules
    (Grafana's variables replaced by values)."""
    exprs = {}
    for render, docs in docs_by_render.items():
        for d in docs:
            if d["kind"] == "ScaledObject":
                for i, t in enumerate(d["spec"]["triggers"]):
                    where = f"{render}: ScaledObject/{d['metadata']['name']} trigger {i}"
                    exprs[t["metadata"]["query"]] = where
    for dash in dashboards:
        def walk(node):
            if isinstance(node, dict):
                if "expr" in node:
                    exprs[node["expr"]] = f"{dash.name}: {node.get('legendFormat', '')}"
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(json.loads(dash.read_text()))
    if not c.check(bool(exprs), "promql: no queries found"):
        return
    for expr, where in exprs.items():
        concrete = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
        rules = {"groups": [{"name": "q", "rules": [{"record": "q", "expr": concrete}]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            yaml.safe_dump(rules, f)
            f.flush()
            r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True,
                               text=True, timeout=60)
        c.check(r.returncode == 0, f"promql: {where}: {expr!r} does not parse: "
                f"{(r.stdout + r.stderr).strip().splitlines()[-1:]}")


# Loopback only: never through a proxy that the environment may name.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ENDPOINT_LINE = re.compile(r"^(router|prefill|decode) (grpc|http|metrics) (\S+)$", re.M)


def endpoints(serve_out: Path) -> dict:
    """"role kind" -> address, from the lines `tandem serve` prints once everything is ready."""
    return {f"{role} {kind}": where
            for role, kind, where in ENDPOINT_LINE.findall(serve_out.read_text())}


def scrape_live(c: Checks, ep: dict) -> list:
    """The /metrics text of every live process, after one refused request on the router (a
    counter family with no series yet, tandem_request_errors_total, is not exposed)."""
    req = urllib.request.Request(
        f"http://{ep.get('router http')}/v1/completions",
        data=json.dumps({"prompt": "x", "max_tokens": -1}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        OPENER.open(req, timeout=30)
        code = 200
    except urllib.error.HTTPError as e:
        code = e.code
    except OSError as e:
        code = str(e)
    c.check(code == 400, f"live: the refused request got {code}, not HTTP 400")
    texts = []
    for role in ("router", "prefill", "decode"):
        url = ep.get(f"{role} metrics")
        if not c.check(url is not None, f"live: tandem serve printed no {role} metrics URL"):
            continue
        with OPENER.open(url, timeout=30) as r:
            texts.append(r.read().decode())
    return texts


def live_names(texts: list) -> set:
    names = set()
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# TYPE ") or line.startswith("# HELP "):
                names.add(line.split()[2])
            elif line and not line.startswith("#"):
                names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return names


def check_metrics(c: Checks, refs: dict, live: set, recorded: set) -> None:
    for name, where in sorted(refs.items()):
        c.check(name in live or name in recorded,
                f"metrics: {name} ({where}) is on no live /metrics and recorded by no rule")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render", action="append", default=[], metavar="NAME=FILE",
                    help="a rendered kustomization (repeatable)")
    ap.add_argument("--bin-dir", type=Path, required=True)
    ap.add_argument("--serve-out", type=Path, required=True,
                    help="stdout of a running `tandem serve` (its endpoint lines)")
    ap.add_argument("--k8s-version", default="1.30")
    a = ap.parse_args()

    c = Checks()
    docs_by_render = {}
    for r in a.render:
        name, path = r.split("=", 1)
        docs_by_render[name] = load_docs(Path(path))
        c.check(bool(docs_by_render[name]), f"{name}: rendered nothing")
    rule_files = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    dashboards = sorted((DEPLOY / "grafana").glob("*.json"))

    help_cache: dict = {}
    services = set()
    for name, docs in docs_by_render.items():
        check_schemas(c, name, docs, a.k8s_version)
        check_flags_and_drain(c, name, docs, a.bin_dir, help_cache)
        check_tls(c, name, docs)
        services |= probe_services(docs)
    ep = endpoints(a.serve_out)
    check_health(c, services, {role: ep.get(f"{role} grpc") for role in ("router", "prefill",
                                                                          "decode")})
    check_rules(c, docs_by_render, rule_files)
    for dash in dashboards:
        try:
            json.loads(dash.read_text())
            c.check(True, dash.name)
        except json.JSONDecodeError as e:
            c.check(False, f"{dash.name}: not JSON: {e}")
    check_promql(c, docs_by_render, dashboards)
    recorded = {r["record"] for f in rule_files for g in rule_groups(f) for r in g["rules"]
                if "record" in r}
    refs = referenced_metrics(docs_by_render, rule_files, dashboards)
    c.check(len(refs) > 0, "metrics: no metric names found to check")
    live = live_names(scrape_live(c, ep))
    c.check(any(n.startswith("tandem_") for n in live),
            "metrics: the scrapes hold no tandem_ series")
    check_metrics(c, refs, live, recorded)

    skipped = sorted({f"{d['kind']}" for docs in docs_by_render.values() for d in docs
                      if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS})
    print(f"check_deploy: {len(docs_by_render)} renders, {len(refs)} metric names, "
          f"{len(services)} probe services; schema skipped only for {', '.join(skipped)} "
          f"(custom resources, content checked)")
    print(f"{c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
