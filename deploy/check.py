#!/usr/bin/env python3
"""Checks the deployment files against each other and against what uat does.

    python3 deploy/check.py        # from anywhere; needs PyYAML (pip install pyyaml)

No cluster and no Docker engine needed: it reads deploy/Dockerfile, .dockerignore and
deploy/k8s/*.yaml and checks what a YAML parser and a schema cannot see:

- every pod's grace period covers the preStop sleep, the server's drain
  (`server.shutdown_grace` in the ConfigMap) and what follows it (the final
  cache flush, 2 s, beside the vector snapshots, 10 s; both read from main.rs);
- a preStop `sleep`, a startupProbe on /health, and the securityContext that
  matches the image's numeric user (runAsNonRoot, runAsUser/fsGroup = the
  Dockerfile's uid, no privilege escalation, a read-only root with /data and
  /tmp mounted);
- `embeddings.memory_budget`, the L1 cache and `server.parse_budget` fit under the
  memory limit;
- images are named by a version (not `:latest`, which Kubernetes pulls on every
  start), a Deployment of several replicas has a PodDisruptionBudget, and the
  config file names the data dir the volume is mounted at (the image sets no
  environment that would override it);
- the vector store: a Deployment with several replicas keeps /data on an
  emptyDir only with the per-replica warning, and uat-vectors is one replica
  with a persistent volume for /data;
- the Dockerfile builds with --locked and runs as a numeric user, and
  .dockerignore keeps target/, data/ and .git/ out of the build context.

Prints one line per failed check and exits 1 if any failed.
"""

import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MAIN_RS = (ROOT / "crates/uat/src/main.rs").read_text()
# After the drain uat flushes the cache (at most 2 s) and, at the same time,
# snapshots the vector collections with WAL records (none started past
# VECTOR_SNAPSHOT_BUDGET): the longer of the two, read from the code.
FLUSH_S = int(re.search(r"cache\.flush\(std::time::Duration::from_secs\((\d+)\)\)", MAIN_RS).group(1))
SNAPSHOT_S = int(re.search(r"VECTOR_SNAPSHOT_BUDGET: Duration = Duration::from_secs\((\d+)\)", MAIN_RS).group(1))
AFTER_DRAIN_S = max(FLUSH_S, SNAPSHOT_S)
MARGIN_S = 5
GIB = 1024**3

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def seconds(text):
    """humantime subset used in the manifests: 30s, 1m, 2m30s, 500ms."""
    total = 0.0
    for num, unit in re.findall(r"(\d+)\s*(ms|s|m|h)", text):
        total += int(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def quantity_bytes(q):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    if not m:
        raise ValueError(f"memory quantity {q!r}")
    mult = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": GIB, "Ti": 1024**4,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(m.group(1)) * mult


def image_uid():
    text = (ROOT / "deploy/Dockerfile").read_text()
    check("--locked" in re.search(r"cargo build[^\n]*", text).group(0),
          "deploy/Dockerfile: cargo build without --locked")
    check(not re.search(r"^ENV\b[^\n]*UAT_", text, re.M),
          "deploy/Dockerfile: a UAT_ environment variable overrides the config file")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    check(len(users) == 1 and re.fullmatch(r"\d+(:\d+)?", users[0] or ""),
          f"deploy/Dockerfile: USER must be numeric, got {users}")
    # The image has no curl: its HEALTHCHECK runs the binary's own probe.
    hc = re.search(r"^HEALTHCHECK\b(?:[^\n]*\\\n)*[^\n]*", text, re.M)
    check(hc is not None and re.search(r'CMD \["/usr/local/bin/uat", "health"', hc.group(0)),
          "deploy/Dockerfile: HEALTHCHECK must run `uat health`")
    listen = re.search(r'^CMD \[[^\n]*"--listen", "[^"]*:(\d+)"', text, re.M)
    probe = re.search(r'"--url", "http://127\.0\.0\.1:(\d+)/health"', hc.group(0) if hc else "")
    check(listen and probe and listen.group(1) == probe.group(1),
          "deploy/Dockerfile: the HEALTHCHECK must probe the port the default CMD listens on")
    check("Health(" in (ROOT / "crates/uat/src/cli.rs").read_text(),
          "deploy/Dockerfile: the HEALTHCHECK's `uat health` is not a command of the binary")
    uid = int(users[0].split(":")[0]) if users and users[0][0].isdigit() else None
    check(uid is not None and re.search(rf"useradd\b[^\n]*--uid {uid}\b", text),
          f"deploy/Dockerfile: useradd does not create uid {uid}")
    return uid


def dockerignore():
    path = ROOT / ".dockerignore"
    check(path.exists(), ".dockerignore is missing")
    if path.exists():
        pats = {p.strip().strip("/") for p in path.read_text().splitlines()
                if p.strip() and not p.startswith("#")}
        for need in ("target", "data", ".git"):
            check(need in pats, f".dockerignore does not exclude {need}/")
        for keep in ("crates", "scripts", "Cargo.toml", "Cargo.lock"):
            check(keep not in pats, f".dockerignore excludes {keep}, which the build needs")


def main():
    uid = image_uid()
    dockerignore()
    docs = []
    for f in sorted((ROOT / "deploy/k8s").glob("*.yaml")):
        docs += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    configs = {d["metadata"]["name"]: tomllib.loads(d["data"]["uat.toml"])
               for _, d in docs if d["kind"] == "ConfigMap" and "uat.toml" in d["data"]}
    workloads = [(f, d) for f, d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    check(any(d["metadata"]["name"] == "uat-vectors" for _, d in workloads),
          "no uat-vectors workload: vector collections have no shared home")

    for fname, w in workloads:
        name = f"{fname}: {w['kind']}/{w['metadata']['name']}"
        spec = w["spec"]
        pod = spec["template"]["spec"]
        (c,) = [c for c in pod["containers"] if c["name"] == "uat"]
        cm_name = next(v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v)
        cfg = configs[cm_name]

        # Shutdown: preStop sleep + drain + flush/snapshots + margin within the grace period.
        cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        check(len(cmd) == 2 and cmd[0] == "sleep", f"{name}: no preStop sleep")
        pre = int(cmd[1]) if len(cmd) == 2 else 0
        drain = seconds(cfg.get("server", {}).get("shutdown_grace", "30s"))
        need = pre + drain + AFTER_DRAIN_S + MARGIN_S
        grace = pod.get("terminationGracePeriodSeconds", 30)
        check(grace >= need, f"{name}: terminationGracePeriodSeconds {grace} < {need} "
              f"(preStop {pre} + shutdown_grace {drain:g} + cache flush {FLUSH_S} s / vector "
              f"snapshots {SNAPSHOT_S} s + margin {MARGIN_S})")

        sp = c.get("startupProbe", {})
        check(sp.get("httpGet", {}).get("path") == "/health", f"{name}: no startupProbe on /health")
        check(sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) >= 120,
              f"{name}: startupProbe allows less than 2 minutes")
        check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/health",
              f"{name}: livenessProbe not on /health")

        # Security: the image's numeric user, no escalation, read-only root.
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot is not true")
        check(psc.get("runAsUser") == uid, f"{name}: runAsUser {psc.get('runAsUser')} != image uid {uid}")
        check(psc.get("fsGroup") == uid, f"{name}: fsGroup {psc.get('fsGroup')} != image uid {uid}")
        check(csc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation not false")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        # The image's default command passes --data-dir /data; a command of its
        # own (--config) takes the file's data_dir, whose default is ./data.
        args = c.get("args", [])
        if "--data-dir" in args:
            data_dir = args[args.index("--data-dir") + 1]
        else:
            data_dir = cfg.get("storage", {}).get("data_dir")
            check(data_dir is not None, f"{name}: the config sets no storage.data_dir")
        check(data_dir in mounts, f"{name}: the data dir {data_dir} is not a volume")
        image = c.get("image", "")
        check(re.search(r":[\w][\w.-]*$", image.split("/")[-1]) and not image.endswith(":latest"),
              f"{name}: image {image!r} is not named by a version")
        if csc.get("readOnlyRootFilesystem"):
            check("/tmp" in mounts, f"{name}: read-only root without a /tmp volume")

        # Memory: the model budget and L1 under the limit, with room for the rest.
        limit = quantity_bytes(c["resources"]["limits"]["memory"])
        budget = cfg.get("embeddings", {}).get("memory_budget", 2 * GIB)
        l1 = cfg.get("cache", {}).get("l1", {}).get("max_bytes", 256 * 1024**2)
        parse = cfg.get("server", {}).get("parse_budget", GIB)
        check(budget + l1 + parse <= limit * 3 // 4,
              f"{name}: embeddings.memory_budget {budget} + L1 {l1} + server.parse_budget "
              f"{parse} leave less than a quarter of the memory limit {limit}")
        if w["kind"] == "Deployment" and spec.get("replicas", 1) > 1:
            pod_labels = w["spec"]["template"]["metadata"].get("labels", {})
            check(any(d["kind"] == "PodDisruptionBudget"
                      and d["spec"].get("selector", {}).get("matchLabels", {}).items()
                      <= pod_labels.items() for _, d in docs),
                  f"{name}: {spec['replicas']} replicas without a PodDisruptionBudget")

        # Vectors: per process. Several replicas only with /data on a scratch volume
        # (collections are routed to uat-vectors); uat-vectors: one replica, a PVC.
        data_vol = mounts.get(data_dir)
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        if w["metadata"]["name"] == "uat-vectors":
            check(w["kind"] == "StatefulSet", f"{name}: not a StatefulSet")
            check(spec.get("replicas", 1) == 1, f"{name}: more than one replica")
            check(data_vol in claims, f"{name}: {data_dir} is not on a persistent volume")
        elif spec.get("replicas", 1) > 1:
            text = (ROOT / "deploy/k8s" / fname).read_text()
            check("uat-vectors" in text and "not shared" in text.lower(),
                  f"{name}: several replicas without the per-replica vector store warning")

    readme = (ROOT / "README.md").read_text()
    check("uat-vectors.yaml" in readme, "README does not point to deploy/k8s/uat-vectors.yaml")

    for f in failures:
        print(f"deploy/check.py: {f}", file=sys.stderr)
    if failures:
        return 1
    print(f"deploy/check.py: {len(workloads)} workloads, Dockerfile and .dockerignore OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
