#!/usr/bin/env bash
# Offline checks of every file in deploy/ (called by .ci/run; runnable by hand from anywhere):
#   - Kubernetes manifests against the Kubernetes OpenAPI schemas (kubernetes-validate, pinned,
#     from PyPI into a throwaway venv), each file on its own and, when kubectl is there, the
#     rendered kustomization; then what no schema knows (manifests.py): selectors and port
#     names agree, the dns: servers name the headless backend Service, the config checksum
#     annotation is current, the grace period covers the shutdown; the ConfigMap's TOML
#     through `switchboard check`;
#   - the Prometheus config and alert rules with promtool (check config, check rules, test rules),
#     and that every alert has a unit test;
#   - the Grafana dashboard parses (its queries run against a real Prometheus in
#     tests/prometheus_e2e.rs);
#   - the systemd units with `systemd-analyze verify` when it is installed.
# The container image is not built (no base image can be pulled here): deploy/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest Kubernetes the manifests are for (the preStop `sleep` action is beta from 1.30),
# and the newest the validator knows.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS

# A venv for the validator; Debian's python3 needs python3-venv for it.
if ! python3 -m venv "$work/venv" >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$work/venv"
  else
    echo "deploy: python3 -m venv failed; install python3-venv" >&2
    exit 1
  fi
fi
"$work/venv/bin/pip" install -q --disable-pip-version-check \
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
py="$work/venv/bin/python"

echo "deploy: kubernetes manifests (kubernetes-validate $KUBERNETES_VALIDATE_VERSION)"
# Kustomization files are kustomize's, not the API server's, and PodMonitor is a CRD of the
# Prometheus Operator: neither is in the Kubernetes OpenAPI schemas. manifests.py checks the
# PodMonitor's selector and port against the Deployment instead.
manifests=()
for f in deploy/kubernetes/*.yaml deploy/kubernetes/optional/*.yaml; do
  case "$(basename "$f")" in
    kustomization.yaml | podmonitor.yaml) echo "  $f: not in the Kubernetes schemas (kustomize / CRD), checked by manifests.py" ;;
    *) manifests+=("$f") ;;
  esac
done
for version in "${KUBERNETES_VERSIONS[@]}"; do
  "$work/venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
  echo "  ${#manifests[@]} files valid against Kubernetes $version"
done
# `kubectl kustomize` renders what `kubectl apply -k` would send, to catch a broken
# kustomization; kubectl is not on every machine.
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize deploy/kubernetes >"$work/rendered.yaml" 2>"$work/kustomize.err"; then
  "$work/venv/bin/kubernetes-validate" --strict --quiet "$work/rendered.yaml"
  kubectl kustomize deploy/kubernetes/optional >/dev/null
  echo "  kubectl kustomize: base and optional/ render; the rendered base is valid"
else
  echo "  kubectl kustomize skipped: $(command -v kubectl >/dev/null 2>&1 && head -c 300 "$work/kustomize.err" || echo 'kubectl is not installed')"
fi
"$py" deploy/manifests.py "$work/switchboard.toml"

echo "deploy: the ConfigMap's switchboard.toml"
cargo run --quiet --locked -- check --config "$work/switchboard.toml" >"$work/check.out" 2>&1 || {
  cat "$work/check.out"
  exit 1
}
echo "  switchboard check: $(head -n 1 "$work/check.out")"
# `check` parses the `dns:` servers and looks nothing up (the cluster's names do not resolve
# here): the lookups start with the process.

echo "deploy: prometheus ($(promtool --version 2>&1 | head -n 1))"
command -v promtool >/dev/null 2>&1 || {
  echo "promtool is missing: apt-get install prometheus (.ci/run does)" >&2
  exit 1
}
if ! promtool check config deploy/prometheus/prometheus.yml >"$work/promtool.out" 2>&1; then
  if grep -q 'field kubernetes_sd_configs not found' "$work/promtool.out"; then
    # Debian's Prometheus is built without Kubernetes service discovery. Check everything
    # else, the relabelling included, with that one block swapped for a static target.
    "$py" - "$work" <<'PY'
import sys, yaml
work = sys.argv[1]
config = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
for job in config["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["127.0.0.1:9100"]}]
        print(f"  {job['job_name']}: kubernetes_sd_configs swapped for a static target "
              "(this promtool is built without Kubernetes discovery)")
config["rule_files"] = ["alerts.yml"]
yaml.safe_dump(config, open(f"{work}/prometheus.yml", "w"))
PY
    cp deploy/prometheus/alerts.yml "$work/alerts.yml"
    promtool check config "$work/prometheus.yml"
  else
    cat "$work/promtool.out"
    exit 1
  fi
else
  cat "$work/promtool.out"
fi
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/tests/*.yml
"$py" - <<'PY'
import glob, sys, yaml
rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
firing = set()
for path in glob.glob("deploy/prometheus/tests/*.yml"):
    for test in yaml.safe_load(open(path))["tests"]:
        for case in test.get("alert_rule_test", []):
            if case.get("exp_alerts"):
                firing.add(case["alertname"])
missing = sorted(alerts - firing)
if missing:
    sys.exit(f"alerts without a unit test where they fire: {', '.join(missing)}")
print(f"  every alert ({len(alerts)}) has a unit test where it fires")
PY

echo "deploy: grafana dashboard"
"$py" - <<'PY'
import json
dash = json.load(open("deploy/grafana/switchboard.json"))
names = [v["name"] for v in dash["templating"]["list"]]
assert "datasource" in names, "the dashboard needs a datasource variable"
queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert queries and all(queries), "every panel target needs a query"
print(f"  {len(queries)} queries in {len(dash['panels'])} panels; variables: {', '.join(names)}")
PY

echo "deploy: systemd units"
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify wants ExecStart's binary to exist: point the copies at the one just built.
  binary=$(cargo metadata --format-version 1 --no-deps | "$py" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/switchboard
  [ -x "$binary" ] || cargo build --quiet --locked --bin switchboard
  for unit in switchboard.service switchboard.socket; do
    sed "s|/usr/bin/switchboard|$binary|g" "deploy/systemd/$unit" >"$work/$unit"
  done
  # It reports unknown keys as warnings with exit 0: any output is a failure.
  if ! systemd-analyze verify "$work/switchboard.service" "$work/switchboard.socket" >"$work/verify.out" 2>&1 \
    || [ -s "$work/verify.out" ]; then
    cat "$work/verify.out"
    exit 1
  fi
  echo "  systemd-analyze verify: both units clean"
else
  echo "  systemd-analyze verify skipped: systemd-analyze is not installed"
fi

echo "deploy: container image not built (no base image can be pulled here; deploy/README.md)"
echo "deploy: all checks passed in $((SECONDS - started)) s"
