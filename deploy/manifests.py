"""What the Kubernetes schemas cannot check in deploy/kubernetes/ (run by deploy/check.sh).

The files must agree with each other and with the config they carry: every selector picks the
Deployment's pods, every named port exists, the `dns:` servers name the headless backend
Service and its port, the checksum annotation is the ConfigMap's, the
probes and the Service use the ports switchboard.toml listens on, and the grace period covers
the preStop sleep plus timeouts.shutdown_grace. Writes the ConfigMap's TOML to argv[1] for
`switchboard check`.
"""

import hashlib
import re
import sys
import tomllib

import yaml

BASE = "deploy/kubernetes"
problems = []


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def check(ok, message):
    if not ok:
        problems.append(message)


def seconds(duration):
    """A switchboard duration ("30s", "1m30s", "250ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"([0-9.]+)(ms|s|m|h)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


config_map = load(f"{BASE}/configmap.yaml")
deployment = load(f"{BASE}/deployment.yaml")
service = load(f"{BASE}/service.yaml")
pdb = load(f"{BASE}/pdb.yaml")
hpa = load(f"{BASE}/optional/hpa.yaml")
pod_monitor = load(f"{BASE}/optional/podmonitor.yaml")
kustomization = load(f"{BASE}/kustomization.yaml")
optional = load(f"{BASE}/optional/kustomization.yaml")

# Every file is in a kustomization, and every kustomization entry is a file.
import os

for directory, kust in ((BASE, kustomization), (f"{BASE}/optional", optional)):
    files = {f for f in os.listdir(directory) if f.endswith(".yaml") and f != "kustomization.yaml"}
    check(set(kust["resources"]) == files,
          f"{directory}/kustomization.yaml lists {sorted(kust['resources'])}, the directory has {sorted(files)}")

toml_text = config_map["data"]["switchboard.toml"]
with open(sys.argv[1], "w") as f:
    f.write(toml_text)
config = tomllib.loads(toml_text)

template = deployment["spec"]["template"]
pod_labels = template["metadata"]["labels"]
container = template["spec"]["containers"][0]
ports = {p["name"]: p["containerPort"] for p in container["ports"]}


def selects_pods(selector, what):
    check(selector.items() <= pod_labels.items(), f"{what} selector {selector} does not match the pod labels {pod_labels}")


selects_pods(deployment["spec"]["selector"]["matchLabels"], "Deployment")
selects_pods(service["spec"]["selector"], "Service")
selects_pods(pdb["spec"]["selector"]["matchLabels"], "PodDisruptionBudget")
selects_pods(pod_monitor["spec"]["selector"]["matchLabels"], "PodMonitor")
check(pod_monitor["apiVersion"] == "monitoring.coreos.com/v1" and pod_monitor["kind"] == "PodMonitor",
      "podmonitor.yaml is not a monitoring.coreos.com/v1 PodMonitor")
for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
    check(endpoint["port"] == "admin" and endpoint.get("path", "/metrics") == "/metrics",
          "the PodMonitor must scrape /metrics on the admin port")
for p in service["spec"]["ports"]:
    check(p["targetPort"] in ports, f"Service targetPort {p['targetPort']} is not a container port")
target = hpa["spec"]["scaleTargetRef"]
check((target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"]),
      "the HPA does not scale the Deployment")
check(hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "switchboard_tunnels_active",
      "the HPA scales on switchboard_tunnels_active")

# The ports switchboard listens on are the ones the pod declares, probes and Service use.
check(port_of(config["listen"]) == ports["http"], "listen and the http container port differ")
check(port_of(config["admin"]["listen"]) == ports["admin"], "admin.listen and the admin container port differ")
check(config["admin"]["listen"].startswith("0.0.0.0:"), "admin.listen must be on the pod's address for the kubelet's probes")
for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    get = container[probe]["httpGet"]
    check((get["path"], get["port"]) == (path, "admin"), f"{probe} must be GET {path} on the admin port")

# The mounted file is the one the container is told to read.
mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
config_path = container["args"][container["args"].index("--config") + 1]
check(config_path == f"{mount['mountPath']}/switchboard.toml", f"--config {config_path} is not the mounted file")
check("subPath" not in mount, "a subPath mount is never updated: SIGHUP reloads would read the old file")

# The dns: servers name the headless backend Service (backend-service.yaml) and one of its ports.
backend = load(f"{BASE}/backend-service.yaml")
backend_name = backend["metadata"]["name"]
backend_namespace = backend["metadata"].get("namespace", "default")
backend_ports = {p["port"] for p in backend["spec"]["ports"]}
check(backend["spec"].get("clusterIP") == "None", "backend-service.yaml must be headless (clusterIP: None)")
for name, upstream in config.get("upstream", {}).items():
    for server in upstream.get("servers", []):
        if not (isinstance(server, str) and server.startswith("dns:")):
            continue
        host, port = server[len("dns:"):].rsplit(":", 1)
        check(host == f"{backend_name}.{backend_namespace}.svc.cluster.local" and int(port) in backend_ports,
              f"upstream.{name}: {server} is not the Service {backend_name}.{backend_namespace} on one of its ports {sorted(backend_ports)}")

# Changing the config must change the pod template (the checksum roll).
digest = hashlib.sha256(toml_text.encode()).hexdigest()
annotation = template["metadata"]["annotations"]["checksum/config"]
check(annotation == digest, f"checksum/config in deployment.yaml is {annotation}; the ConfigMap's TOML has {digest}")

# SIGKILL must not come before switchboard's own bound: preStop, then shutdown_grace.
grace = template["spec"]["terminationGracePeriodSeconds"]
pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
shutdown_grace = seconds(config.get("timeouts", {}).get("shutdown_grace", "30s"))
shutdown_delay = seconds(config.get("timeouts", {}).get("shutdown_delay", "0s"))
check(grace > pre_stop + shutdown_grace,
      f"terminationGracePeriodSeconds {grace} must be above preStop {pre_stop} s + shutdown_grace {shutdown_grace} s")
check(shutdown_delay < shutdown_grace, "shutdown_delay must be below shutdown_grace")

if problems:
    sys.exit("deploy/kubernetes:\n  " + "\n  ".join(problems))
print(f"  manifests agree: selectors, ports, probes, dns: servers, checksum {digest[:12]}…, "
      f"grace {grace} s > preStop {pre_stop} s + shutdown_grace {shutdown_grace:g} s")
