"""Checks rendered manifests for what the Kubernetes schemas cannot see.

Usage: python3 k8s/check-manifests.py [--settings workers/src/settings/mod.rs] [--ttfd BIN] RENDERED.yaml...

kubernetes-validate checks every built-in resource against the API schemas; this
script adds:
- the custom resources (KEDA ScaledObject, PodMonitor) against the schemas in
  k8s/schemas/ (a documented subset of each CRD, unknown fields refused);
- the house rules of docs/operations.md: no Secret in git and no secret value in a
  ConfigMap or an env literal; every pod non-root with a read-only root filesystem,
  no capabilities, RuntimeDefault seccomp and no service account token; requests and
  limits on every container; probes on every long-running container, on a port it
  declares; a termination grace period longer than the app's; one image for every
  role; Prometheus scrape annotations;
- configuration: every TOML file in a ConfigMap parses, and every TTFD__<SECTION>__...
  variable names a section of `Settings` (workers/src/settings/mod.rs; a warning only, since
  a section can land with another branch: ttfd refuses unknown keys at start-up);
- with `--ttfd BIN`: each container's role started with the real binary and exactly
  the settings the pod would get (stand-ins for the Secret's values, the databases on a
  closed port) must get past loading and checking its settings;
- references: ConfigMaps and Secrets named by pods, Services and PodDisruptionBudgets
  that select pods, Ingress backends, the Deployment a ScaledObject scales (which must
  not fix its own replica count), and what the migration Job needs carrying the label
  `ttfd/stage: prepare` (the first `kubectl apply -l` of docs/operations.md).

Prints one line per problem and exits 1 if there is any.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).with_name("schemas")
# Secrets referenced by the manifests, created by hand (docs/operations.md).
KNOWN_SECRETS = {"ttfd-secrets", "ttfd-nats-users"}
SECRET_NAME = re.compile(r"(DATABASE__URL|TOKEN|SECRET|PASSWORD|COOKIE_KEY)", re.I)
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
problems = []
warnings = []


def problem(doc, message):
    problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {message}")


def load(paths):
    docs = []
    for path in paths:
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def is_custom(api_version):
    """Custom resources have a dotted group outside *.k8s.io (keda.sh, monitoring.coreos.com)."""
    group = api_version.split("/")[0] if "/" in api_version else ""
    return "." in group and not group.endswith(".k8s.io")


def check_custom_resources(docs):
    for doc in docs:
        if not is_custom(doc["apiVersion"]):
            continue
        schema_file = SCHEMAS / f"{doc['apiVersion'].replace('/', '_')}_{doc['kind']}.json"
        if not schema_file.exists():
            problem(doc, f"no schema for {doc['apiVersion']} {doc['kind']} in k8s/schemas/")
            continue
        schema = json.loads(schema_file.read_text())
        for error in jsonschema.Draft202012Validator(schema).iter_errors(doc):
            where = ".".join(str(p) for p in error.absolute_path) or "(root)"
            problem(doc, f"{where}: {error.message}")


def app_grace(pod, config_maps):
    """The longest grace period the app gives itself, from the env the pod reads."""
    env = {}
    for container in pod.get("containers", []):
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef", {}).get("name")
            env.update(config_maps.get(ref, {}))
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
    graces = [int(env.get("TTFD__SYNC__SHUTDOWN_GRACE_SECS", 20))]
    if "TTFD__TELEGRAM__MODE" in env:
        graces.append(int(env.get("TTFD__TELEGRAM__SHUTDOWN_GRACE_SECS", 10)))
    return max(graces)


def check_pods(docs, config_maps, images):
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        template = doc["spec"]["template"]
        pod = template["spec"]
        long_running = doc["kind"] != "Job"
        security = pod.get("securityContext", {})
        if security.get("runAsNonRoot") is not True:
            problem(doc, "pod securityContext.runAsNonRoot must be true")
        if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problem(doc, "pod seccompProfile must be RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            problem(doc, "automountServiceAccountToken must be false (no role uses the API)")
        if long_running:
            annotations = template.get("metadata", {}).get("annotations", {})
            if annotations.get("prometheus.io/scrape") != "true":
                problem(doc, "pod template lacks prometheus.io/scrape: \"true\"")
            grace = app_grace(pod, config_maps)
            declared = pod.get("terminationGracePeriodSeconds", 30)
            if declared < grace + 10:
                problem(doc, f"terminationGracePeriodSeconds {declared} is not at least 10 s "
                             f"longer than the app's grace period {grace} s")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                problem(doc, f"volume {volume['name']}: no ConfigMap {volume['configMap']['name']}")
            if "secret" in volume and volume["secret"]["secretName"] not in KNOWN_SECRETS:
                problem(doc, f"volume {volume['name']}: unknown Secret {volume['secret']['secretName']}")
        containers = pod.get("containers", []) + pod.get("initContainers", [])
        for c in containers:
            name = f"container {c['name']}"
            images.add(c.get("image"))
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in resources.get(kind, {}):
                        problem(doc, f"{name}: no {kind}.{res}")
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problem(doc, f"{name}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problem(doc, f"{name}: readOnlyRootFilesystem must be true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problem(doc, f"{name}: capabilities must drop ALL")
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problem(doc, f"{name}: mounts unknown volume {mount['name']}")
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref and ref not in config_maps:
                    problem(doc, f"{name}: envFrom names no ConfigMap {ref}")
            for var in c.get("env", []):
                if SECRET_NAME.search(var["name"]) and var["name"] != "TTFD__NATS__USER":
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if not ref:
                        problem(doc, f"{name}: {var['name']} must come from a Secret")
                    elif ref["name"] not in KNOWN_SECRETS:
                        problem(doc, f"{name}: {var['name']} reads unknown Secret {ref['name']}")
                ref = var.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["name"] not in config_maps:
                    problem(doc, f"{name}: {var['name']} names no ConfigMap {ref['name']}")
            if long_running and c in pod.get("containers", []):
                ports = {p.get("name") for p in c.get("ports", [])} | \
                        {p.get("containerPort") for p in c.get("ports", [])}
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        problem(doc, f"{name}: no {probe}")
                        continue
                    port = c[probe].get("httpGet", {}).get("port")
                    if port is not None and port not in ports:
                        problem(doc, f"{name}: {probe} uses port {port}, which it does not declare")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_references(docs):
    pod_labels = [d["spec"]["template"].get("metadata", {}).get("labels", {})
                  for d in docs if d["kind"] in WORKLOADS]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    for d in docs:
        if d["kind"] == "Service" and d["spec"].get("selector"):
            if not any(selects(d["spec"]["selector"], labels) for labels in pod_labels):
                problem(d, "selects no pod")
        if d["kind"] == "PodDisruptionBudget":
            if not any(selects(d["spec"]["selector"]["matchLabels"], labels) for labels in pod_labels):
                problem(d, "selects no pod")
        if d["kind"] == "Ingress":
            for rule in d["spec"].get("rules", []):
                for path in rule.get("http", {}).get("paths", []):
                    backend = path["backend"]["service"]
                    service = by_kind.get("Service", {}).get(backend["name"])
                    if not service:
                        problem(d, f"backend Service {backend['name']} does not exist")
                    elif "name" in backend["port"] and backend["port"]["name"] not in \
                            {p.get("name") for p in service["spec"]["ports"]}:
                        problem(d, f"Service {backend['name']} has no port {backend['port']['name']}")
        if d["kind"] == "ScaledObject":
            target = d["spec"]["scaleTargetRef"]["name"]
            deployment = by_kind.get("Deployment", {}).get(target)
            if not deployment:
                problem(d, f"scales Deployment {target}, which does not exist")
            elif "replicas" in deployment["spec"]:
                problem(d, f"Deployment {target} fixes spec.replicas: each apply would fight KEDA")
        if d["kind"] == "Job" and d["metadata"].get("labels", {}).get("ttfd/stage") == "prepare":
            # `kubectl apply -l ttfd/stage=prepare` must bring everything the Job needs.
            pod = d["spec"]["template"]["spec"]
            needed = [("ServiceAccount", pod.get("serviceAccountName", "default"))]
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                needed += [("ConfigMap", s["configMapRef"]["name"])
                           for s in c.get("envFrom", []) if "configMapRef" in s]
            needed += [("ConfigMap", v["configMap"]["name"])
                       for v in pod.get("volumes", []) if "configMap" in v]
            for kind, name in needed:
                dep = by_kind.get(kind, {}).get(name)
                if dep and dep["metadata"].get("labels", {}).get("ttfd/stage") != "prepare":
                    problem(d, f"{kind} {name} lacks the label ttfd/stage: prepare, so the "
                               f"first apply would not create it")
        if d["kind"] == "Secret":
            problem(d, "a Secret is in the manifests: secrets are created by hand, never kept in git")
        if d["kind"] == "ConfigMap":
            for key in d.get("data", {}):
                if SECRET_NAME.search(key):
                    problem(d, f"{key} looks like a secret: reference ttfd-secrets instead")


def settings_sections(config_rs):
    """The sections of `Settings`: the fields of `pub struct Settings { ... }`."""
    text = Path(config_rs).read_text()
    body = re.search(r"pub struct Settings \{(.*?)\n\}", text, re.S)
    return set(re.findall(r"pub (\w+):", body.group(1))) if body else set()


def check_configuration(docs, sections):
    for d in docs:
        if d["kind"] != "ConfigMap":
            continue
        for key, value in d.get("data", {}).items():
            if key.endswith(".toml"):
                try:
                    tomllib.loads(value)
                except tomllib.TOMLDecodeError as e:
                    problem(d, f"{key} is not valid TOML: {e}")
            match = re.match(r"TTFD__([A-Z0-9_]+?)__", key)
            if match and sections and match.group(1).lower() not in sections:
                warnings.append(f"{d['kind']}/{d['metadata']['name']}: {key}: no section "
                                f"{match.group(1).lower()!r} in Settings yet; ttfd refuses it at "
                                f"start-up until that section lands")
    for d in docs:
        if d["kind"] not in WORKLOADS:
            continue
        for c in d["spec"]["template"]["spec"].get("containers", []):
            for var in c.get("env", []):
                match = re.match(r"TTFD__([A-Z0-9_]+?)__", var["name"])
                if match and sections and match.group(1).lower() not in sections:
                    warnings.append(f"{d['kind']}/{d['metadata']['name']}: {var['name']}: no section "
                                    f"{match.group(1).lower()!r} in Settings yet")


# Stand-ins for the Secret's values, shaped as each setting wants them.
FAKE_SECRETS = {
    "TTFD__DATABASE__URL": "postgres://ttfd@127.0.0.1:9/ttfd",
    "TTFD__DISCORD__TOKEN": "MTAwMDAwMDAwMDAwMDAwMDAw.fake.token",
    "TTFD__TELEGRAM__TOKEN": "123456789:AAEfaketokenfaketokenfaketoken12345",
    "TTFD__WEB__TELEGRAM__BOT_TOKEN": "123456789:AAEfaketokenfaketokenfaketoken12345",
    "TTFD__WEB__TELEGRAM__BOT_TOKEN_SHA256": "ab" * 32,
    "TTFD__TELEGRAM__WEBHOOK_SECRET": "fake_webhook-secret-" + "w" * 32,
    "TTFD__WEB__COOKIE_KEY": "k" * 48,
    "TTFD__NATS__PASSWORD": "fake-nats-password",
    "TTFD__TRUST__KEYS__RELAY": "r" * 64,
    "TTFD__TRUST__KEYS__ADMIN": "a" * 64,
    "TTFD__TRUST__KEYS__MODERATOR": "m" * 64,
    "TTFD__WEB__DISCORD__CLIENT_SECRET": "fake-client-secret",
}


def check_with_binary(docs, config_maps, ttfd):
    """Starts each workload's role with the real binary and the workload's settings (its
    ConfigMaps, env literals, the mounted TOML file, stand-ins for the Secret), with
    PostgreSQL, NATS and the chat APIs on a closed local port: the role must get past
    loading and checking its settings and stop only at "cannot reach ..."."""
    import os
    import subprocess
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        pod = doc["spec"]["template"]["spec"]
        files = {}
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                files[volume["name"]] = config_maps.get(volume["configMap"]["name"], {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "POD_NAME": f"{doc['metadata']['name']}-0"}
            for source in c.get("envFrom", []):
                env.update(config_maps.get(source.get("configMapRef", {}).get("name"), {}))
            for var in c.get("env", []):
                if "value" in var:
                    env[var["name"]] = var["value"]
                elif "secretKeyRef" in var.get("valueFrom", {}):
                    if var["name"] in FAKE_SECRETS:
                        env[var["name"]] = FAKE_SECRETS[var["name"]]
                    elif var["name"].startswith("TTFD__WEB__INGEST_TOKENS__"):
                        env[var["name"]] = "fake-ingest-token-" + var["name"][-8:].lower()
            jobs.append((doc, c, env, files))

    def start(job):
        doc, c, env, files = job
        with tempfile.TemporaryDirectory() as tmp:
            for mount in c.get("volumeMounts", []):
                if mount["name"] in files and "TTFD_CONFIG" in env \
                        and env["TTFD_CONFIG"].startswith(mount["mountPath"] + "/"):
                    name = env["TTFD_CONFIG"][len(mount["mountPath"]) + 1:]
                    path = os.path.join(tmp, name)
                    Path(path).write_text(files[mount["name"]].get(name, ""))
                    env["TTFD_CONFIG"] = path
            env["TTFD__DATABASE__URL"] = FAKE_SECRETS["TTFD__DATABASE__URL"]
            env["TTFD__NATS__URL"] = "nats://127.0.0.1:9"
            # Nothing leaves the machine: the chat APIs on a closed local port too.
            env["TTFD__TELEGRAM__API_URL"] = "http://127.0.0.1:9"
            env["TTFD__DISCORD__API_URL"] = "http://127.0.0.1:9"
            # Listeners on free ports, so that nothing here clashes with a port in use.
            for key in ("TTFD__METRICS__LISTEN", "TTFD__WEB__LISTEN", "TTFD__TELEGRAM__LISTEN"):
                if key in env:
                    env[key] = "127.0.0.1:0"
            args = c.get("args", [])
            if c.get("command", [None])[0] == "sh":
                # The Discord shard script: run it, with ttfd replaced by the binary.
                command = ["sh", "-c", args[0].replace("exec ttfd ", f"exec {ttfd} ")]
            else:
                command = [ttfd, *args]
            try:
                run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
                output = run.stdout + run.stderr
            except subprocess.TimeoutExpired as e:
                output = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        return doc, c, args, output

    with ThreadPoolExecutor(max_workers=8) as pool:
        for doc, c, args, output in pool.map(start, jobs):
            role = "discord (shard script)" if c.get("command", [None])[0] == "sh" else " ".join(args)
            lines = [l for l in output.splitlines() if "error" in l.lower()]
            # Past its settings, a role stops at the first dependency it cannot reach.
            if "cannot reach" not in output:
                problem(doc, f"container {c['name']}: `ttfd {role}` stopped before connecting: "
                             + (lines[0] if lines else output.strip()[-300:]))
            else:
                checked.append(f"{doc['kind']}/{doc['metadata']['name']} {c['name']}")


checked = []


def main(args):
    sections = set()
    ttfd = None
    while args and args[0].startswith("--"):
        if args[0] == "--settings":
            sections = settings_sections(args[1])
        elif args[0] == "--ttfd":
            ttfd = args[1]
        args = args[2:]
    paths = args
    docs = load(paths)
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    images = set()
    check_custom_resources(docs)
    check_pods(docs, config_maps, images)
    check_references(docs)
    check_configuration(docs, sections)
    if ttfd:
        check_with_binary(docs, config_maps, ttfd)
    if len(images) > 1:
        problems.append(f"more than one image: {sorted(map(str, images))} (one image serves every role)")
    for w in sorted(set(warnings)):
        print(f"WARN {w}")
    for p in problems:
        print(f"FAIL {p}")
    workloads = sum(1 for d in docs if d["kind"] in WORKLOADS)
    settings = f", settings accepted by {ttfd} in {len(checked)} containers" if ttfd else ""
    print(f"check-manifests: {len(docs)} resources, {workloads} workloads{settings}, "
          f"{len(problems)} problems ({', '.join(paths)})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
