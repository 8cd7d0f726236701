#!/usr/bin/env bash
# Checks the deployment files: bash deploy/check.sh [METRICS_FILE]
#
#   (a) promtool: `check rules` on the alerts, `check config` on prometheus.yml, `test rules` on
#       the alert unit tests, and `check rules` on every dashboard query (wrapped as recording
#       rules), so a PromQL typo in a panel fails here rather than as an empty panel.
#   (b) every YAML file under deploy/ and docker-compose.yml parses (multi-document aware), every
#       JSON file under deploy/ parses, plus a few consistency checks that YAML syntax alone
#       does not catch (grace periods above SHUTDOWN_GRACE_SECS, ConfigMap values are strings,
#       compose bind mounts exist, ...).
#   (c) every metric name used by deploy/prometheus/alerts.yml and deploy/grafana/dashboards/*.json
#       exists. With METRICS_FILE (the text exposition of a worker's /metrics, captured after at
#       least one job so that labelled metrics have a child) the names must appear as samples in
#       it. Without it, they are checked against the names declared in src/metrics.rs, a weaker
#       check (it cannot tell whether a labelled series is ever exported).
#
# Installs what it lacks: promtool from Debian's `prometheus` package, PyYAML from PyPI or
# Debian's python3-yaml. Exits non-zero if any check fails; the last line is the summary.
set -uo pipefail

METRICS_FILE=""
if [ -n "${1:-}" ]; then
  METRICS_FILE="$(realpath -m -- "$1")" # before the cd below, so a relative path still works
fi
cd "$(dirname "$0")/.." || exit 1
TMP="$(mktemp -d)"
POLICY_RC=""
cleanup() {
  rm -rf "$TMP"
  if [ -n "$POLICY_RC" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

PASSED=0
FAILED=0
FAILED_NAMES=()
log() { printf '\n== %s\n' "$*"; }
# run NAME CMD...: runs one check, records its result, never stops the script.
run() {
  local name="$1"
  shift
  log "$name"
  if "$@"; then
    PASSED=$((PASSED + 1))
    echo "-- ok: $name"
  else
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
    echo "-- FAILED: $name"
  fi
}

APT_UPDATED=""
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "need root to apt-get install $*" >&2
    return 1
  fi
  if [ -z "$APT_UPDATED" ]; then
    apt-get update -qq || return 1
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ------------------------------------------------------------------ tools
ensure_python() {
  if ! command -v python3 >/dev/null; then
    echo "installing python3"
    apt_install python3 python3-yaml || return 1
  fi
  python3 -c 'import yaml' 2>/dev/null && return 0
  echo "installing PyYAML"
  # pip first (it serves pyenv/venv interpreters too); Debian's package for the system python3,
  # whose pip refuses to install (PEP 668, externally managed).
  python3 -m pip install -q pyyaml >/dev/null 2>&1 || apt_install python3-yaml || true
  python3 -c 'import yaml' 2>/dev/null || {
    echo "PyYAML is not importable by $(command -v python3)" >&2
    return 1
  }
}

ensure_promtool() {
  command -v promtool >/dev/null && return 0
  echo "installing promtool (Debian package prometheus)"
  # The package's maintainer scripts would start a Prometheus server on :9090; on a machine
  # without a policy-rc.d, forbid service starts for the duration of the install.
  if [ "$(id -u)" = 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    POLICY_RC=1
  fi
  apt_install prometheus
  local rc=$?
  if [ -n "$POLICY_RC" ]; then
    rm -f /usr/sbin/policy-rc.d
    POLICY_RC=""
  fi
  [ $rc = 0 ] && command -v promtool >/dev/null
}

# ------------------------------------------------------------------ the Python half
cat >"$TMP/check.py" <<'PY'
"""Helpers for deploy/check.sh: python3 check.py COMMAND [ARGS]."""
import glob
import json
import os
import re
import sys

import yaml

ALERTS = "deploy/prometheus/alerts.yml"
DASHBOARDS = sorted(glob.glob("deploy/grafana/dashboards/*.json"))
METRIC_PREFIX = "roadmap_"
NAME_RE = re.compile(r"(?<![A-Za-z0-9_:])roadmap_[A-Za-z0-9_:]*")
QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def fail(msg):
    print("  " + msg)


# -------------------------------------------------------------- expressions
def alert_exprs():
    """(where, expr) for every rule in alerts.yml."""
    doc = yaml.safe_load(open(ALERTS))
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            yield f"{ALERTS}: {name}", str(rule["expr"])


def dashboard_exprs():
    """(where, expr) for every query in the dashboards: panel targets and template variables."""
    for path in DASHBOARDS:
        dash = json.load(open(path))

        def walk(node, where):
            if isinstance(node, dict):
                title = node.get("title") or node.get("name") or where
                for key, value in node.items():
                    if key in ("expr", "definition") and isinstance(value, str) and value.strip():
                        yield f"{path}: {title}", value
                    elif key == "query" and isinstance(value, str) and "(" in value:
                        yield f"{path}: {title}", value
                    else:
                        yield from walk(value, title)
            elif isinstance(node, list):
                for item in node:
                    yield from walk(item, where)

        yield from walk(dash, path)


def grafana_to_promql(expr):
    """Replaces Grafana's variables with something PromQL parses."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?", "5m", expr)
    return re.sub(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*", ".*", expr)


def metric_names(expr):
    """Names starting with roadmap_ outside of quoted strings (label values, regexes)."""
    return set(NAME_RE.findall(QUOTED_RE.sub('""', expr)))


# -------------------------------------------------------------- commands
def cmd_dashboard_rules(out):
    """Writes every dashboard query as a recording rule, for `promtool check rules`."""
    rules, seen = [], set()
    for i, (where, expr) in enumerate(dashboard_exprs()):
        if expr.strip().startswith("label_values(") or expr in seen:
            continue  # Grafana's own function, not PromQL
        seen.add(expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)})
    if not rules:
        fail("no dashboard queries found")
        return 1
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)
    print(f"  {len(rules)} distinct dashboard queries from {len(DASHBOARDS)} dashboard(s)")
    return 0


def cmd_parse():
    """(b) Every YAML and JSON file parses; plus consistency checks."""
    errors = 0
    yaml_files = sorted(
        set(glob.glob("deploy/**/*.yml", recursive=True) + glob.glob("deploy/**/*.yaml", recursive=True))
    ) + ["docker-compose.yml"]
    docs = {}
    for path in yaml_files:
        try:
            with open(path) as f:
                loaded = [d for d in yaml.safe_load_all(f)]
        except (OSError, yaml.YAMLError) as e:
            fail(f"{path}: {e}")
            errors += 1
            continue
        if not [d for d in loaded if d is not None]:
            fail(f"{path}: empty")
            errors += 1
        docs[path] = [d for d in loaded if d is not None]
        print(f"  yaml ok: {path} ({len(docs[path])} document(s))")
    json_files = sorted(glob.glob("deploy/**/*.json", recursive=True))
    for path in json_files:
        try:
            with open(path) as f:
                json.load(f)
            print(f"  json ok: {path}")
        except (OSError, ValueError) as e:
            fail(f"{path}: {e}")
            errors += 1
    if errors:
        return 1
    problems = consistency(docs)
    for p in problems:
        fail(p)
    print(f"  {len(yaml_files)} YAML and {len(json_files)} JSON files parsed; {len(problems)} consistency problem(s)")
    return 1 if problems else 0


def seconds(value):
    """'40s', '1m30s', 40 -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    total, matched = 0.0, False
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", str(value)):
        matched = True
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total if matched else None


def consistency(docs):
    problems = []
    # ---- Kubernetes manifests
    k8s = [(p, d) for p, ds in docs.items() if p.startswith("deploy/k8s/") for d in ds]
    by_kind = {}
    for path, d in k8s:
        for field in ("apiVersion", "kind"):
            if not d.get(field):
                problems.append(f"{path}: a document without {field}")
        if not (d.get("metadata") or {}).get("name"):
            problems.append(f"{path}: a {d.get('kind')} without metadata.name")
        by_kind.setdefault(d.get("kind"), []).append((path, d))
        if d.get("kind") in ("ConfigMap", "Secret"):
            for section in ("data", "stringData"):
                for key, value in (d.get(section) or {}).items():
                    if not isinstance(value, str):
                        problems.append(
                            f"{path}: {d['kind']} {section}.{key} is {type(value).__name__}, must be a "
                            "quoted string or the API server rejects it"
                        )
    grace_setting = 25.0  # SHUTDOWN_GRACE_SECS default
    for path, cm in by_kind.get("ConfigMap", []):
        if "SHUTDOWN_GRACE_SECS" in (cm.get("data") or {}):
            grace_setting = float(cm["data"]["SHUTDOWN_GRACE_SECS"])
    for path, dep in by_kind.get("Deployment", []):
        spec = dep["spec"]["template"]["spec"]
        tgps = spec.get("terminationGracePeriodSeconds", 30)
        if not tgps > grace_setting:
            problems.append(
                f"{path}: terminationGracePeriodSeconds {tgps} is not above SHUTDOWN_GRACE_SECS {grace_setting:g}"
            )
        for c in spec.get("containers", []):
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
            for probe, path_expected in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = (c.get(probe) or {}).get("httpGet") or {}
                port = ports.get(get.get("port"), get.get("port"))
                if get.get("path") != path_expected or port != 9464:
                    problems.append(f"{path}: container {c.get('name')} {probe} is not GET {path_expected} on 9464")
    for path, so in by_kind.get("ScaledObject", []):
        types = {t.get("type") for t in so["spec"].get("triggers", [])}
        if not {"rabbitmq", "prometheus"} <= types:
            problems.append(f"{path}: ScaledObject triggers {sorted(types)} lack rabbitmq or prometheus")
        for t in so["spec"].get("triggers", []):
            for key, value in (t.get("metadata") or {}).items():
                if not isinstance(value, str):
                    problems.append(f"{path}: {t.get('type')} trigger metadata.{key} must be a quoted string")

    # ---- docker compose
    compose = (docs.get("docker-compose.yml") or [{}])[0]
    services = compose.get("services") or {}
    for name in ("postgres", "rabbitmq", "mock-llm", "worker", "prometheus", "grafana"):
        if name not in services:
            problems.append(f"docker-compose.yml: no service {name}")
    worker = services.get("worker") or {}
    env = worker.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    for key in ("AMQP_URL", "DATABASE_URL", "LLM_PROVIDER", "METRICS_ADDR"):
        if key not in env:
            problems.append(f"docker-compose.yml: worker environment lacks {key}")
    if not str(env.get("METRICS_ADDR", "")).startswith("0.0.0.0:"):
        problems.append("docker-compose.yml: worker METRICS_ADDR must listen on 0.0.0.0 for Prometheus")
    deps = worker.get("depends_on") or {}
    for dep in ("postgres", "rabbitmq"):
        if not isinstance(deps, dict) or (deps.get(dep) or {}).get("condition") != "service_healthy":
            problems.append(f"docker-compose.yml: worker must depend on {dep} with condition service_healthy")
        elif "healthcheck" not in (services.get(dep) or {}):
            problems.append(f"docker-compose.yml: {dep} has no healthcheck to be service_healthy")
    compose_grace = float(env.get("SHUTDOWN_GRACE_SECS", 25))
    stop = seconds(worker.get("stop_grace_period", "10s"))
    if stop is None or not stop > compose_grace:
        problems.append(
            f"docker-compose.yml: worker stop_grace_period {worker.get('stop_grace_period', '10s (default)')} "
            f"is not above SHUTDOWN_GRACE_SECS {compose_grace:g}"
        )
    for sname, svc in services.items():
        build = svc.get("build")
        if isinstance(build, dict):
            dockerfile = os.path.join(build.get("context", "."), build.get("dockerfile", "Dockerfile"))
            if not os.path.exists(dockerfile):
                problems.append(f"docker-compose.yml: {sname} builds from missing {dockerfile}")
        for vol in svc.get("volumes") or []:
            src = vol.split(":", 1)[0] if isinstance(vol, str) else (vol.get("source") or "")
            if src.startswith((".", "/")) and not os.path.exists(src):
                problems.append(f"docker-compose.yml: {sname} mounts missing {src}")

    # ---- Prometheus and Grafana wiring
    prom = (docs.get("deploy/prometheus/prometheus.yml") or [{}])[0]
    jobs = [j.get("job_name") for j in prom.get("scrape_configs") or []]
    if "roadmap-worker" not in jobs:
        problems.append('deploy/prometheus/prometheus.yml: no scrape job "roadmap-worker" (alerts select on it)')
    for rf in prom.get("rule_files") or []:
        if not glob.glob(os.path.join("deploy/prometheus", rf)):
            problems.append(f"deploy/prometheus/prometheus.yml: rule file {rf} not found next to it")
    ds_uids = {
        ds.get("uid")
        for path, ds_docs in docs.items()
        if path.startswith("deploy/grafana/provisioning/datasources/")
        for d in ds_docs
        for ds in d.get("datasources") or []
    }
    for path in DASHBOARDS:
        dash = json.load(open(path))
        if not dash.get("uid") or not dash.get("panels"):
            problems.append(f"{path}: no uid or no panels")
        variables = {v.get("name") for v in (dash.get("templating") or {}).get("list", [])}
        for panel in dash.get("panels", []):
            for t in panel.get("targets", []):
                uid = (t.get("datasource") or panel.get("datasource") or {}).get("uid", "")
                var = re.fullmatch(r"\$\{?(\w+)\}?", uid or "")
                if not t.get("expr"):
                    problems.append(f"{path}: panel {panel.get('title')!r} has a target without expr")
                if not ((var and var.group(1) in variables) or uid in ds_uids):
                    problems.append(f"{path}: panel {panel.get('title')!r} uses unknown datasource {uid!r}")
    return problems


def exposition_names(path):
    samples, types = set(), {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split()
                if len(parts) >= 4 and parts[1] == "TYPE":
                    types[parts[2]] = parts[3]
                continue
            m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            if m:
                samples.add(m.group(0))
    return samples, types


def source_names(paths=("src/metrics.rs", "src/metrics/families.rs", "src/metrics/process.rs")):
    """Sample names the metrics declared in src/metrics* can export (histograms as
    _bucket/_sum/_count)."""
    text = "".join(open(p).read() for p in paths if os.path.exists(p))
    declared = set(re.findall(r'"(roadmap_[A-Za-z0-9_:]+)"', text))
    histograms = set(re.findall(r'(?:histogram\(|HistogramOpts::new\()\s*"(roadmap_[A-Za-z0-9_:]+)"', text))
    samples = {n for n in declared if n not in histograms}
    for h in histograms:
        samples.update(h + s for s in HISTOGRAM_SUFFIXES)
    return samples, {h: "histogram" for h in histograms}


def cmd_names(metrics_file):
    """(c) Every roadmap_ metric referenced by the alerts and dashboards exists."""
    if metrics_file:
        samples, types = exposition_names(metrics_file)
        source = f"the /metrics capture {metrics_file}"
    else:
        samples, types = source_names()
        source = "src/metrics* (no /metrics capture given)"
    ours = {s for s in samples if s.startswith(METRIC_PREFIX)}
    if not ours:
        fail(f"no {METRIC_PREFIX}* metric in {source}: not a worker's /metrics output?")
        return 1
    referenced = {}
    for where, expr in list(alert_exprs()) + list(dashboard_exprs()):
        for name in metric_names(expr):
            referenced.setdefault(name, set()).add(where)
    if not referenced:
        fail("no metric names found in the alerts and dashboards")
        return 1
    missing = sorted(n for n in referenced if n not in ours)
    for name in missing:
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
        if name in types and types[name] in ("histogram", "summary"):
            hint = "a histogram: query it as _bucket, _sum or _count"
        elif name in types:
            hint = "declared (# TYPE) but without samples: capture /metrics after a job that gives it a labelled child"
        elif base in types:
            hint = f"{base} is a {types[base]}"
        else:
            hint = "unknown metric"
        fail(f"{name}: not in {source} ({hint}); used by {'; '.join(sorted(referenced[name]))}")
    def family(n):
        for s in HISTOGRAM_SUFFIXES:
            if n.endswith(s) and types.get(n[: -len(s)]) in ("histogram", "summary"):
                return n[: -len(s)]
        return n

    unused = sorted({family(n) for n in ours} - {family(n) for n in referenced})
    print(f"  {len(referenced)} metric names referenced, checked against {len(ours)} {METRIC_PREFIX}* names in {source}")
    if unused:
        print(f"  (exported but used by no alert or panel: {', '.join(unused)})")
    if missing:
        fail(f"{len(missing)} referenced metric name(s) missing")
        return 1
    return 0


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "dashboard-rules":
        sys.exit(cmd_dashboard_rules(sys.argv[2]))
    if command == "parse":
        sys.exit(cmd_parse())
    if command == "names":
        sys.exit(cmd_names(sys.argv[2] if len(sys.argv) > 2 else ""))
    sys.exit(f"unknown command {command}")
PY

py() { python3 "$TMP/check.py" "$@"; }

# ------------------------------------------------------------------ (a) promtool
promtool_checks() {
  ensure_promtool || { echo "promtool is not available and could not be installed" >&2; return 1; }
  local ok=0
  promtool check rules deploy/prometheus/alerts.yml || ok=1
  # rule_files in prometheus.yml are relative to it, so this also loads alerts.yml.
  promtool check config deploy/prometheus/prometheus.yml || ok=1
  if [ -f deploy/prometheus/alerts.test.yml ]; then
    promtool test rules deploy/prometheus/alerts.test.yml || ok=1
  fi
  return $ok
}

dashboard_promql() {
  ensure_promtool || return 1
  py dashboard-rules "$TMP/dashboard-queries.yml" && promtool check rules "$TMP/dashboard-queries.yml"
}

metric_names() {
  if [ -n "$METRICS_FILE" ] && [ ! -s "$METRICS_FILE" ]; then
    echo "  metrics file $METRICS_FILE is missing or empty" >&2
    return 1
  fi
  py names "$METRICS_FILE"
}

if ensure_python; then
  run "promtool: alert rules, Prometheus config, alert unit tests" promtool_checks
  run "promtool: dashboard queries parse as PromQL" dashboard_promql
  run "YAML/JSON parse and consistency" py parse
  if [ -n "$METRICS_FILE" ]; then
    run "metric names against /metrics capture $METRICS_FILE" metric_names
  else
    run "metric names against src/metrics.rs (pass a /metrics capture for the full check)" metric_names
  fi
else
  run "promtool: alert rules, Prometheus config, alert unit tests" promtool_checks
  run "python3 with PyYAML (needed for the other checks)" false
fi

echo
if [ "$FAILED" -gt 0 ]; then
  printf 'failed: %s\n' "${FAILED_NAMES[@]}"
fi
echo "deploy: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
