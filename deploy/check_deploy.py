#!/usr/bin/env python3
"""Static checks of deploy/ that no off-the-shelf validator does: the DaemonSet, ConfigMap,
systemd unit and Dockerfile against the agent's flags and each other, the ServiceMonitor
against a CRD subset schema, the kustomization's file list, and the Prometheus scrape config.

Usage (from the repository root, with the project venv's python):
    python deploy/check_deploy.py CHECK [ARG...]
Exits 0 when CHECK passes; prints the reasons otherwise. deploy/check.sh runs every CHECK.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"

# --- What the agent is: read from its sources, so deploy/ cannot drift from the real CLI,
# config file and metrics (hoop-agent/src/main.rs, config.rs, audit.rs, metrics.rs) ----------
AGENT_BINARY = "/usr/local/bin/hoop-agent"
SRC = ROOT / "hoop-agent" / "src"


def rust_struct_fields(path: Path, name: str):
    """[(field, type, [attribute lines])] of `struct NAME { ... }` in a Rust file."""
    text = path.read_text()
    m = re.search(r"(?:pub )?struct %s \{\n(.*?)\n\}" % re.escape(name), text, re.S)
    if not m:
        raise Fail(f"{path.relative_to(ROOT)}: struct {name} not found")
    fields, attrs = [], []
    for line in m.group(1).splitlines():
        t = line.strip()
        if t.startswith("#["):
            attrs.append(t)
        elif t.startswith("//") or not t:
            continue
        else:
            fm = re.match(r"(?:pub(?:\(crate\))? )?(\w+): (.+?),?$", t)
            if fm:
                fields.append((fm.group(1), fm.group(2), attrs))
            attrs = []
    return fields


def cli_facts():
    """(flags taking a value, boolean flags, env vars) of `hoop-agent [global] run`."""
    value_flags, bool_flags, env = set(), set(), set()
    for struct in ("Cli", "RunArgs"):
        for name, ty, attrs in rust_struct_fields(SRC / "main.rs", struct):
            arg = next((a for a in attrs if a.startswith("#[arg(")), "")
            if not re.search(r"\blong\b", arg) or "hide = true" in arg:
                continue
            lm = re.search(r'long = "([^"]+)"', arg)
            flag = "--" + (lm.group(1) if lm else name.replace("_", "-"))
            (bool_flags if ty == "bool" else value_flags).add(flag)
            em = re.search(r'env = "([^"]+)"', arg)
            if em:
                env.add(em.group(1))
    return value_flags, bool_flags, env


def metric_names():
    """Every series name /metrics can expose (hoop_ prefix; histogram suffixes)."""
    text = (SRC / "metrics.rs").read_text()
    names = set()
    for m in re.finditer(r'(?:counter|gauge)\(\s*&r,\s*"(\w+)"|(?<!Histogram)Opts::new\(\s*"(\w+)"', text):
        names.add("hoop_" + (m.group(1) or m.group(2)))
    for m in re.finditer(r'HistogramOpts::new\(\s*"(\w+)"', text):
        names |= {f"hoop_{m.group(1)}{s}" for s in ("_bucket", "_sum", "_count")}
    return names


_VALUE_FLAGS, _BOOL_FLAGS, _ENV = cli_facts()
AGENT_FLAGS = _VALUE_FLAGS | _BOOL_FLAGS
AGENT_BOOL_FLAGS = _BOOL_FLAGS
# The agent's HOOP_* variables, HOOP_LOG (filter) and what the Kubernetes client reads.
AGENT_ENV = _ENV | {"HOOP_LOG", "NODE_NAME"}
CONFIG_KEYS = {f for f, _, _ in rust_struct_fields(SRC / "config.rs", "Config")}
STORE_KEYS = {f for f, _, _ in rust_struct_fields(SRC / "audit.rs", "StoreSection")}
RETENTION_KEYS = {f for f, _, _ in rust_struct_fields(SRC / "audit.rs", "RetentionSection")}
API_TLS_KEYS = {f for f, _, _ in rust_struct_fields(SRC / "config.rs", "ApiTlsSection")}
METRICS = metric_names()
LOG_FORMATS = {"human", "json"}
POLICY_EFFECTS = {"audit", "deny", "kill", "approve"}
POLICY_MODES = {"enforce", "monitor"}
IMDS = {"169.254.169.254", "fd00:ec2::254"}
HEALTH_PATH, READY_PATH, METRICS_PATH = "/healthz", "/readyz", "/metrics"
# The capability set, without and with the CAP_ prefix (Kubernetes vs systemd spelling).
CAPS = {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "SYS_RESOURCE", "KILL", "DAC_READ_SEARCH"}
# Host paths the DaemonSet mounts: container path -> (host path, read-only?, hostPath type).
MOUNTS = {
    "/sys/fs/bpf": ("/sys/fs/bpf", False, "Directory"),
    "/sys/kernel/tracing": ("/sys/kernel/tracing", None, "Directory"),
    "/sys/kernel/debug": ("/sys/kernel/debug", None, "Directory"),
    "/sys/fs/cgroup": ("/sys/fs/cgroup", None, "Directory"),
    "/host/proc": ("/proc", True, "Directory"),
    "/sys/kernel/btf": ("/sys/kernel/btf", True, "Directory"),
    "/var/lib/hoop": ("/var/lib/hoop", False, "DirectoryOrCreate"),
    "/run/hoop": ("/run/hoop", False, "DirectoryOrCreate"),
}

CHECKS = {}


def check(fn):
    CHECKS[fn.__name__.replace("_", "-")] = fn
    return fn


class Fail(Exception):
    pass


class Problems:
    def __init__(self):
        self.items: list[str] = []

    def expect(self, cond, msg):
        if not cond:
            self.items.append(msg)
        return cond

    def done(self):
        if self.items:
            raise Fail("\n".join(self.items))


def load_docs(path: Path):
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_objects():
    objs = []
    for p in sorted(K8S.glob("*.yaml")):
        if p.name == "kustomization.yaml":
            continue
        for d in load_docs(p):
            objs.append((p.name, d))
    return objs


def find(kind, name=None):
    hits = [d for _, d in k8s_objects() if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    if len(hits) != 1:
        raise Fail(f"expected exactly one {kind}{' ' + name if name else ''}, found {len(hits)}")
    return hits[0]


def daemonset():
    return find("DaemonSet")


def container(ds):
    cs = ds["spec"]["template"]["spec"]["containers"]
    if len(cs) != 1:
        raise Fail(f"expected one container, found {len(cs)}")
    return cs[0]


def parse_args(args):
    """Agent argv (after the image's ENTRYPOINT) -> (subcommand, {flag: value})."""
    if not args:
        raise Fail("container args are empty: the image's CMD `run` would be used without --config")
    sub, rest, flags = args[0], args[1:], {}
    i = 0
    while i < len(rest):
        a = rest[i]
        if "=" in a and a.startswith("--"):
            k, v = a.split("=", 1)
        elif a in AGENT_BOOL_FLAGS:
            k, v = a, True
        else:
            k = a
            if i + 1 >= len(rest):
                raise Fail(f"flag {k} has no value")
            v = rest[i + 1]
            i += 1
        flags[k] = v
        i += 1
    return sub, flags


def configmap_files():
    cm = find("ConfigMap")
    return cm, cm.get("data", {})


def config_from_configmap():
    _, data = configmap_files()
    if "config.yaml" not in data:
        raise Fail("ConfigMap has no config.yaml")
    return yaml.safe_load(data["config.yaml"])


def check_config_keys(cfg, p: Problems, where):
    p.expect(isinstance(cfg, dict), f"{where}: not a mapping")
    if not isinstance(cfg, dict):
        return
    unknown = set(cfg) - CONFIG_KEYS
    p.expect(not unknown, f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(CONFIG_KEYS)})")
    p.expect(cfg.get("log_format", "human") in LOG_FORMATS, f"{where}: log_format must be one of {sorted(LOG_FORMATS)}")
    store = cfg.get("store", {})
    p.expect(set(store) <= STORE_KEYS, f"{where}: unknown store keys {sorted(set(store) - STORE_KEYS)}")
    tls = cfg.get("api_tls")
    if tls is not None:
        p.expect(isinstance(tls, dict) and set(tls) == API_TLS_KEYS, f"{where}: api_tls needs exactly {sorted(API_TLS_KEYS)}")
    p.expect(isinstance(store.get("flush_interval_ms", 1000), int) and store.get("flush_interval_ms", 1000) > 0,
             f"{where}: store.flush_interval_ms must be a positive integer")
    ret = store.get("retention", {})
    p.expect(set(ret) <= RETENTION_KEYS, f"{where}: unknown retention keys {sorted(set(ret) - RETENTION_KEYS)}")
    if "max_age" in ret:
        p.expect(re.fullmatch(r"\d+(s|m|h|d|w)", str(ret["max_age"])), f"{where}: retention.max_age {ret['max_age']!r} is not like 30d")
    if "max_bytes" in ret:
        p.expect(re.fullmatch(r"\d+(B|KiB|MiB|GiB|TiB)?", str(ret["max_bytes"])), f"{where}: retention.max_bytes {ret['max_bytes']!r} is not like 10GiB")
    if "metrics_addr" in cfg:
        p.expect(re.fullmatch(r"(\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:]+\]):\d+", str(cfg["metrics_addr"])), f"{where}: metrics_addr is not host:port")
    for k in ("data_dir", "api_socket"):
        if k in cfg:
            p.expect(str(cfg[k]).startswith("/"), f"{where}: {k} must be absolute")
    sel = cfg.get("session", {}).get("selectors", [])
    p.expect(isinstance(sel, list) and all(isinstance(s, dict) and s for s in sel), f"{where}: session.selectors must be a list of mappings")
    p.expect(isinstance(cfg.get("kubernetes", {}).get("enabled", False), bool), f"{where}: kubernetes.enabled must be a boolean")


# --- Checks -----------------------------------------------------------------------------------


@check
def kustomization(_args):
    """kustomization.yaml lists every manifest file, each exactly once, and nothing else."""
    p = Problems()
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    p.expect(k.get("kind") == "Kustomization", "kind is not Kustomization")
    res = k.get("resources", [])
    files = sorted(x.name for x in K8S.glob("*.yaml") if x.name != "kustomization.yaml")
    p.expect(len(res) == len(set(res)), f"duplicate resources: {res}")
    p.expect(sorted(res) == files, f"resources {sorted(res)} != files {files}")
    ns = k.get("namespace")
    for fname, d in k8s_objects():
        md = d.get("metadata", {})
        if d["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            continue
        p.expect(md.get("namespace") == ns, f"{fname}: {d['kind']} namespace {md.get('namespace')!r} != kustomization namespace {ns!r}")
    imgs = {i["name"] for i in k.get("images", [])}
    p.expect(container(daemonset())["image"].split(":")[0] in imgs, "the DaemonSet image has no images: entry to override it")
    p.done()


@check
def kustomize_render(args):
    """`kubectl kustomize` output (path given) has every object of the source files, unchanged kinds."""
    p = Problems()
    rendered = [d for d in yaml.safe_load_all(Path(args[0]).read_text()) if d]
    got = sorted((d["kind"], d["metadata"]["name"]) for d in rendered)
    want = sorted((d["kind"], d["metadata"]["name"]) for _, d in k8s_objects())
    p.expect(got == want, f"rendered {got} != sources {want}")
    p.done()


@check
def servicemonitor_schema(_args):
    """servicemonitor.yaml against deploy/schemas/servicemonitor-v1.schema.json (CRD subset)."""
    import jsonschema

    schema = json.loads((DEPLOY / "schemas" / "servicemonitor-v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    docs = load_docs(K8S / "servicemonitor.yaml")
    errs = []
    for d in docs:
        v = jsonschema.Draft202012Validator(schema)
        errs += [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in v.iter_errors(d)]
    if len(docs) != 1:
        errs.append(f"expected one document, found {len(docs)}")
    if errs:
        raise Fail("\n".join(errs))


@check
def metrics_wiring(_args):
    """Service selects the DaemonSet's pods and port; ServiceMonitor selects the Service."""
    p = Problems()
    ds, svc, sm = daemonset(), find("Service"), find("ServiceMonitor")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    ports = {pt["name"]: pt for pt in container(ds)["ports"]}
    p.expect(svc["spec"].get("clusterIP") == "None", "Service is not headless (clusterIP: None)")
    sel = svc["spec"]["selector"]
    p.expect(all(pod_labels.get(k) == v for k, v in sel.items()), f"Service selector {sel} does not match pod labels {pod_labels}")
    sp = {pt["name"]: pt for pt in svc["spec"]["ports"]}
    for name, pt in sp.items():
        tgt = pt.get("targetPort", pt["port"])
        cport = ports.get(tgt) if isinstance(tgt, str) else next((x for x in ports.values() if x["containerPort"] == tgt), None)
        p.expect(cport is not None, f"Service port {name} targets {tgt!r}, not a container port")
        p.expect(pt["port"] == 9464, f"Service port {name} is {pt['port']}, not 9464")
    sm_sel = sm["spec"]["selector"].get("matchLabels", {})
    svc_labels = svc["metadata"]["labels"]
    p.expect(all(svc_labels.get(k) == v for k, v in sm_sel.items()), f"ServiceMonitor selector {sm_sel} does not match Service labels {svc_labels}")
    names = sm["spec"].get("namespaceSelector", {}).get("matchNames", [])
    p.expect(svc["metadata"]["namespace"] in names or sm["spec"].get("namespaceSelector", {}).get("any"),
             "ServiceMonitor namespaceSelector does not include the Service's namespace")
    for ep in sm["spec"]["endpoints"]:
        p.expect(ep.get("port") in sp, f"ServiceMonitor endpoint port {ep.get('port')!r} is not a Service port name")
        p.expect(ep.get("path", METRICS_PATH) == METRICS_PATH, f"ServiceMonitor path {ep.get('path')} != {METRICS_PATH}")
    p.done()


@check
def rbac(_args):
    """ClusterRole grants only get/list/watch on pods; bound to the DaemonSet's ServiceAccount."""
    p = Problems()
    role, binding, sa, ds = find("ClusterRole"), find("ClusterRoleBinding"), find("ServiceAccount"), daemonset()
    rules = role.get("rules", [])
    p.expect(len(rules) == 1, f"expected one rule, found {len(rules)}")
    for r in rules:
        p.expect(r.get("apiGroups") == [""], f"apiGroups {r.get('apiGroups')} != ['']")
        p.expect(r.get("resources") == ["pods"], f"resources {r.get('resources')} != ['pods']")
        p.expect(sorted(r.get("verbs", [])) == ["get", "list", "watch"], f"verbs {r.get('verbs')} != get/list/watch")
    p.expect(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
             f"roleRef {binding['roleRef']} does not name the ClusterRole")
    subj = {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
    p.expect(subj in binding.get("subjects", []), f"binding subjects {binding.get('subjects')} lack {subj}")
    p.expect(ds["spec"]["template"]["spec"].get("serviceAccountName") == sa["metadata"]["name"], "DaemonSet does not use the ServiceAccount")
    p.expect(ds["metadata"]["namespace"] == sa["metadata"]["namespace"], "DaemonSet and ServiceAccount namespaces differ")
    p.done()


@check
def daemonset_agent_flags(_args):
    """Container args/env use only the agent's flags and agree with the ConfigMap and mounts."""
    p = Problems()
    ds = daemonset()
    c = container(ds)
    p.expect(c.get("command") in (None, [AGENT_BINARY]), f"command {c.get('command')} overrides the image ENTRYPOINT {AGENT_BINARY}")
    sub, flags = parse_args(c.get("args", []))
    p.expect(sub == "run", f"subcommand {sub!r} != 'run'")
    unknown = set(flags) - AGENT_FLAGS
    p.expect(not unknown, f"unknown agent flags {sorted(unknown)}")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    cm, data = configmap_files()

    def mount_of(path):
        best = None
        for mp, m in mounts.items():
            if path == mp or path.startswith(mp.rstrip("/") + "/"):
                if best is None or len(mp) > len(best["mountPath"]):
                    best = m
        return best

    def configmap_key(path, what):
        m = mount_of(path)
        if not p.expect(m is not None, f"{what} {path} is not under any volume mount"):
            return
        vol = vols[m["name"]]
        p.expect(vol.get("configMap", {}).get("name") == cm["metadata"]["name"], f"{what} {path}: mount {m['mountPath']} is not the ConfigMap")
        key = path[len(m["mountPath"]):].lstrip("/")
        p.expect(key in data, f"{what} {path}: ConfigMap has no key {key!r}")

    configmap_key(flags.get("--config", ""), "--config")
    configmap_key(flags.get("--policy", "/etc/hoop/policy.yaml"), "--policy")
    cfg = config_from_configmap()
    check_config_keys(cfg, p, "ConfigMap config.yaml")
    eff = {  # effective values: flag > config file > default
        "metrics_addr": flags.get("--metrics-addr", cfg.get("metrics_addr", "127.0.0.1:9464")),
        "data_dir": flags.get("--data-dir", cfg.get("data_dir", "/var/lib/hoop")),
        "api_socket": flags.get("--api-socket", cfg.get("api_socket", "/run/hoop/hoop.sock")),
    }
    for key, flag in (("metrics_addr", "--metrics-addr"), ("data_dir", "--data-dir"), ("api_socket", "--api-socket")):
        if flag in flags and key in cfg:
            p.expect(flags[flag] == cfg[key], f"{flag} {flags[flag]} disagrees with config.yaml {key}: {cfg[key]}")
    host, _, port = eff["metrics_addr"].rpartition(":")
    p.expect(host in ("0.0.0.0", "[::]"), f"metrics address {eff['metrics_addr']} is not reachable from Prometheus on the node IP")
    port = int(port)
    cports = {pt["name"]: pt for pt in c.get("ports", [])}
    p.expect("metrics" in cports and cports["metrics"]["containerPort"] == port, f"containerPort 'metrics' != metrics address port {port}")
    if "metrics" in cports and "hostPort" in cports["metrics"]:
        p.expect(cports["metrics"]["hostPort"] == port, "hostPort differs from containerPort (hostNetwork requires them equal)")
    ann = ds["spec"]["template"]["metadata"].get("annotations", {})
    p.expect(ann.get("prometheus.io/scrape") == "true", "prometheus.io/scrape annotation is not \"true\"")
    p.expect(ann.get("prometheus.io/port") == str(port), f"prometheus.io/port {ann.get('prometheus.io/port')} != {port}")
    p.expect(ann.get("prometheus.io/path", METRICS_PATH) == METRICS_PATH, "prometheus.io/path is not /metrics")
    for what, path in (("data dir", eff["data_dir"]), ("API socket dir", str(Path(eff["api_socket"]).parent))):
        m = mount_of(path)
        if p.expect(m is not None, f"{what} {path} is not mounted (readOnlyRootFilesystem)"):
            p.expect(not m.get("readOnly"), f"{what} {path} is mounted read-only")
            p.expect("hostPath" in vols[m["name"]], f"{what} {path} is not a hostPath (must survive restarts / be reachable from the node)")
    env = {e["name"]: e for e in c.get("env", [])}
    p.expect(set(env) <= AGENT_ENV, f"unknown env vars {sorted(set(env) - AGENT_ENV)}")
    p.expect(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName", "NODE_NAME is not from fieldRef spec.nodeName")
    p.expect(env.get("HOOP_LOG_FORMAT", {}).get("value") == "json", "HOOP_LOG_FORMAT is not json")
    p.expect(flags.get("--log-format", "json") in LOG_FORMATS, "--log-format must be human|json")
    p.expect(cfg.get("kubernetes", {}).get("enabled") is True, "config.yaml kubernetes.enabled is not true in the DaemonSet")
    # The process cache reads process.proc_root: it must be the host's /proc mount.
    proc_root = str(cfg.get("process", {}).get("proc_root", "/proc"))
    m = mount_of(proc_root)
    p.expect(m is not None and m["mountPath"] == proc_root and vols[m["name"]].get("hostPath", {}).get("path") == "/proc",
             f"config.yaml process.proc_root {proc_root} is not the mount of the host's /proc")
    p.done()


@check
def daemonset_probes(_args):
    """Liveness on /healthz, readiness on /readyz, both on the metrics port 9464."""
    p = Problems()
    c = container(daemonset())
    cports = {pt["name"]: pt["containerPort"] for pt in c.get("ports", [])}
    for probe, path in (("livenessProbe", HEALTH_PATH), ("readinessProbe", READY_PATH)):
        pr = c.get(probe)
        if not p.expect(pr and "httpGet" in pr, f"{probe} missing or not httpGet"):
            continue
        g = pr["httpGet"]
        port = cports.get(g["port"]) if isinstance(g["port"], str) else g["port"]
        p.expect(g.get("path") == path, f"{probe} path {g.get('path')} != {path}")
        p.expect(port == 9464, f"{probe} port {g['port']} is not 9464")
        p.expect(g.get("scheme", "HTTP") == "HTTP", f"{probe} scheme is not HTTP")
    p.done()


@check
def daemonset_security(_args):
    """hostPID/hostNetwork, not privileged, exactly the capability set, read-only root fs."""
    p = Problems()
    ds = daemonset()
    spec = ds["spec"]["template"]["spec"]
    c = container(ds)
    sc = c.get("securityContext", {})
    p.expect(spec.get("hostPID") is True, "hostPID is not true")
    p.expect(spec.get("hostNetwork") is True, "hostNetwork is not true")
    p.expect(spec.get("dnsPolicy") == "ClusterFirstWithHostNet", "dnsPolicy is not ClusterFirstWithHostNet")
    p.expect(not spec.get("hostIPC"), "hostIPC is set (not needed)")
    p.expect(sc.get("privileged") is not True, "container is privileged")
    caps = sc.get("capabilities", {})
    p.expect(caps.get("drop") == ["ALL"], f"capabilities.drop {caps.get('drop')} != ['ALL']")
    added = [a.removeprefix("CAP_") for a in caps.get("add", [])]
    p.expect(len(added) == len(set(added)), f"duplicate capabilities {added}")
    p.expect(set(added) == CAPS, f"capabilities.add {sorted(added)} != {sorted(CAPS)} (missing {sorted(CAPS - set(added))}, extra {sorted(set(added) - CAPS)})")
    # The API server rejects allowPrivilegeEscalation: false with an added SYS_ADMIN.
    p.expect(sc.get("allowPrivilegeEscalation") is not False, "allowPrivilegeEscalation: false is rejected together with SYS_ADMIN")
    p.expect(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
    p.expect(sc.get("runAsUser", 0) == 0 and sc.get("runAsNonRoot") is not True, "the agent must run as root (UID 0)")
    p.done()


@check
def daemonset_mounts(_args):
    """bpffs, tracefs, debugfs, cgroup, /proc as /host/proc, BTF, data dir, /run/hoop, /etc/hoop."""
    p = Problems()
    ds = daemonset()
    c = container(ds)
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    p.expect(len(vols) == len(ds["spec"]["template"]["spec"]["volumes"]), "duplicate volume names")
    used = {m["name"] for m in mounts.values()}
    p.expect(used == set(vols), f"volumes without mounts {sorted(set(vols) - used)}, mounts without volumes {sorted(used - set(vols))}")
    for mp, (host, ro, typ) in MOUNTS.items():
        m = mounts.get(mp)
        if not p.expect(m is not None, f"no mount at {mp}"):
            continue
        hp = vols.get(m["name"], {}).get("hostPath")
        if not p.expect(hp is not None, f"{mp} is not a hostPath volume"):
            continue
        p.expect(hp["path"] == host, f"{mp} mounts host {hp['path']}, not {host}")
        p.expect(hp.get("type") == typ, f"{mp} hostPath type {hp.get('type')} != {typ}")
        if ro is not None:
            p.expect(bool(m.get("readOnly")) == ro, f"{mp} readOnly should be {ro}")
        p.expect(m.get("mountPropagation") != "Bidirectional", f"{mp} is Bidirectional (needs privileged)")
    etc = mounts.get("/etc/hoop")
    p.expect(etc is not None and etc.get("readOnly") and "configMap" in vols.get(etc["name"], {}), "/etc/hoop is not the ConfigMap mounted read-only")
    p.done()


@check
def daemonset_operations(_args):
    """Resources, tolerations, priority, rolling update, grace period, node selector."""
    p = Problems()
    ds = daemonset()
    spec = ds["spec"]["template"]["spec"]
    c = container(ds)

    def cpu(v):
        v = str(v)
        return float(v[:-1]) / 1000 if v.endswith("m") else float(v)

    def mem(v):
        units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
        v = str(v)
        return float(v[:-2]) * units[v[-2:]] if v[-2:] in units else float(v)

    r = c.get("resources", {})
    req, lim = r.get("requests", {}), r.get("limits", {})
    for k, conv in (("cpu", cpu), ("memory", mem)):
        if p.expect(k in req and k in lim, f"resources.requests/limits.{k} missing"):
            p.expect(conv(req[k]) <= conv(lim[k]), f"{k} request {req[k]} > limit {lim[k]}")
    p.expect({"operator": "Exists"} in spec.get("tolerations", []), "no catch-all toleration (operator: Exists)")
    p.expect(spec.get("priorityClassName") == "system-node-critical", "priorityClassName is not system-node-critical")
    us = ds["spec"].get("updateStrategy", {})
    p.expect(us.get("type") == "RollingUpdate" and us.get("rollingUpdate", {}).get("maxUnavailable") == 1, "updateStrategy is not RollingUpdate maxUnavailable 1")
    p.expect(spec.get("terminationGracePeriodSeconds") == 30, "terminationGracePeriodSeconds != 30")
    sel = ds["spec"]["selector"]["matchLabels"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    p.expect(all(labels.get(k) == v for k, v in sel.items()), "selector does not match template labels")
    p.done()


@check
def policy(_args):
    """policy.yaml in the ConfigMap: mode, unique rule names, known effects, an IMDS rule."""
    p = Problems()
    _, data = configmap_files()
    if "policy.yaml" not in data:
        raise Fail("ConfigMap has no policy.yaml")
    pol = yaml.safe_load(data["policy.yaml"])
    p.expect(set(pol) <= {"mode", "rules"}, f"unknown top-level policy keys {sorted(set(pol) - {'mode', 'rules'})}")
    p.expect(pol.get("mode") in POLICY_MODES, f"mode {pol.get('mode')!r} not in {sorted(POLICY_MODES)}")
    rules = pol.get("rules", [])
    names = [r.get("name") for r in rules]
    p.expect(all(names) and len(names) == len(set(names)), f"rule names missing or duplicated: {names}")
    imds = set()
    for r in rules:
        n = r.get("name")
        p.expect(set(r) <= {"name", "effect", "match", "hold"}, f"rule {n}: unknown keys {sorted(set(r) - {'name', 'effect', 'match', 'hold'})}")
        p.expect(r.get("effect") in POLICY_EFFECTS, f"rule {n}: effect {r.get('effect')!r} not in {sorted(POLICY_EFFECTS)}")
        m = r.get("match", {})
        p.expect(set(m) <= {"actions", "resources", "workload", "principals", "access_keys", "endpoints"}, f"rule {n}: unknown match keys {sorted(m)}")
        for a in m.get("actions", []):
            p.expect(re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9*?]+|\*", a), f"rule {n}: action {a!r} is not service:Action")
        for res in m.get("resources", []):
            p.expect(res.startswith("arn:aws"), f"rule {n}: resource {res!r} is not an ARN glob")
        if m.get("endpoints"):
            p.expect(r.get("effect") == "deny", f"rule {n}: endpoint rules can only deny")
            if m.get("workload"):
                imds |= set(m["endpoints"])
    p.expect(IMDS <= imds, f"no endpoint rule denying both {sorted(IMDS)} to a workload")
    p.done()


def unit_settings(path: Path):
    """systemd unit -> {(section, key): [values]} (no line continuations used in ours)."""
    out, section = {}, None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        k, _, v = line.partition("=")
        out.setdefault((section, k.strip()), []).append(v.strip())
    return out


@check
def systemd_unit(_args):
    """hoop-agent.service settings: ExecStart, restart, dirs, capability bounding, hardening."""
    p = Problems()
    u = unit_settings(DEPLOY / "systemd" / "hoop-agent.service")

    def one(key, section="Service"):
        v = u.get((section, key))
        return v[-1] if v else None

    want = {
        "Type": "simple",
        "ExecStart": f"{AGENT_BINARY} run --config /etc/hoop/config.yaml",
        "Restart": "on-failure",
        "StateDirectory": "hoop",
        "RuntimeDirectory": "hoop",
        "RuntimeDirectoryMode": "0700",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "ProtectSystem": "strict",
        "LimitMEMLOCK": "infinity",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "30",
    }
    for k, v in want.items():
        p.expect(one(k) == v, f"{k}={one(k)!r}, want {v!r}")
    rw = set((one("ReadWritePaths") or "").split())
    p.expect({"/var/lib/hoop", "/sys/fs/bpf"} <= rw, f"ReadWritePaths {sorted(rw)} lacks /var/lib/hoop or /sys/fs/bpf")
    caps = (one("CapabilityBoundingSet") or "").split()
    p.expect(all(c.startswith("CAP_") for c in caps), "CapabilityBoundingSet entries must be CAP_*")
    p.expect({c.removeprefix("CAP_") for c in caps} == CAPS, f"CapabilityBoundingSet {caps} != the DaemonSet's {sorted(CAPS)}")
    for k in ("ProtectKernelTunables", "ProtectControlGroups", "PrivateNetwork", "PrivatePIDs", "DynamicUser"):
        p.expect(one(k) in (None, "no", "false"), f"{k}={one(k)} breaks BPF/cgroup/host visibility")
    p.expect(one("ProtectProc") in (None, "default"), "ProtectProc hides other processes")
    p.expect(one("User") in (None, "root", "0"), "the agent must run as root")
    p.expect(one("WantedBy", "Install") == "multi-user.target", "WantedBy is not multi-user.target")
    p.done()


@check
def systemd_config(_args):
    """deploy/systemd/config.yaml: known keys, dirs match StateDirectory/RuntimeDirectory."""
    p = Problems()
    cfg = yaml.safe_load((DEPLOY / "systemd" / "config.yaml").read_text())
    check_config_keys(cfg, p, "systemd/config.yaml")
    p.expect(cfg.get("data_dir", "/var/lib/hoop") == "/var/lib/hoop", "data_dir is not the StateDirectory /var/lib/hoop")
    p.expect(str(Path(cfg.get("api_socket", "/run/hoop/hoop.sock")).parent) == "/run/hoop", "api_socket is not in the RuntimeDirectory /run/hoop")
    p.expect(cfg.get("kubernetes", {}).get("enabled", False) is False, "kubernetes.enabled should be false on plain EC2")
    p.done()


def dockerfile_instructions(path: Path):
    """Dockerfile -> [(INSTRUCTION, args)] with line continuations joined, comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        ins, _, rest = buf.partition(" ")
        out.append((ins.upper(), rest.strip()))
        buf = ""
    return out


@check
def dockerfile(_args):
    """Multi-stage, pinned bases (builder = rust-toolchain channel), bpf-linker recipe, entrypoint."""
    p = Problems()
    ins = dockerfile_instructions(DEPLOY / "Dockerfile")
    froms = [a for i, a in ins if i == "FROM"]
    p.expect(len(froms) >= 2, f"not multi-stage ({len(froms)} FROM)")
    for f in froms:
        img = f.split()[0]
        if "--platform" in img:
            img = f.split()[1]
        name, _, tag = img.partition(":")
        p.expect(("@sha256:" in img) or (tag and tag != "latest"), f"base image {img} is not pinned")
    channel = re.search(r'channel\s*=\s*"([^"]+)"', (ROOT / "rust-toolchain.toml").read_text()).group(1)
    builder = froms[0].split()[0]
    p.expect(builder.startswith(f"rust:{channel}"), f"builder {builder} does not match rust-toolchain.toml channel {channel}")
    runtime = froms[-1].split()[0]
    p.expect(runtime.startswith(("debian:bookworm-slim", "gcr.io/distroless/cc")), f"runtime base {runtime} is not debian:bookworm-slim or distroless/cc")
    for i, a in ins:
        if i == "ADD":
            p.expect(not re.search(r"https?://|git@", a), f"ADD of a URL: {a}")
    runs = " ".join(a for i, a in ins if i == "RUN")
    p.expect("rustup toolchain install" in runs, "the pinned toolchain is not installed with `rustup toolchain install`")
    p.expect(re.search(r"cargo install [^;&]*bpf-linker[^;&]*--no-default-features[^;&]*--features llvm-\d+", runs), "bpf-linker is not built with --no-default-features --features llvm-N")
    p.expect("LLVM_PREFIX" in " ".join(a for i, a in ins if i in ("ENV", "RUN")) and "libLLVM.so" in runs, "bpf-linker is not linked against the toolchain's libLLVM via LLVM_PREFIX")
    p.expect(re.search(r"cargo build [^;&]*--release[^;&]*-p hoop-agent", runs), "no `cargo build --release -p hoop-agent`")
    # Final stage: only the binary is copied, from the builder.
    last = max(idx for idx, (i, _) in enumerate(ins) if i == "FROM")
    final = ins[last + 1:]
    copies = [a for i, a in final if i == "COPY"]
    p.expect(len(copies) == 1 and copies[0].startswith("--from=") and copies[0].endswith(AGENT_BINARY), f"final stage COPY {copies} is not just the agent binary from the builder")
    ep = [a for i, a in final if i == "ENTRYPOINT"]
    cmd = [a for i, a in final if i == "CMD"]
    p.expect(ep and json.loads(ep[-1]) == [AGENT_BINARY], f"ENTRYPOINT {ep} != [\"{AGENT_BINARY}\"]")
    p.expect(cmd and json.loads(cmd[-1]) == ["run"], f"CMD {cmd} != [\"run\"]")
    p.expect(any(i == "LABEL" and "org.opencontainers.image.title" in a for i, a in final), "no OCI labels")
    users = [a for i, a in final if i == "USER"]
    p.expect(not users or users[-1] in ("0", "0:0", "root"), "the image must run as root (BPF)")
    p.done()


SD_TO_STATIC = ("kubernetes_sd_configs", "ec2_sd_configs")


@check
def scrape_config(args):
    """scrape.yaml: SD sections well-formed; writes a copy with SD replaced by static targets
    (Debian's promtool is built without the Kubernetes and EC2 discoveries) to args[0]."""
    p = Problems()
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "scrape.yaml").read_text())
    jobs = cfg.get("scrape_configs", [])
    p.expect(any("kubernetes_sd_configs" in j for j in jobs), "no kubernetes_sd_configs job")
    ds = daemonset()
    ns = ds["metadata"]["namespace"]
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    for j in jobs:
        for sd in j.get("kubernetes_sd_configs", []):
            p.expect(sd.get("role") in ("node", "pod", "endpoints", "endpointslice", "service"), f"{j['job_name']}: bad role {sd.get('role')}")
            p.expect(set(sd) <= {"role", "namespaces", "selectors", "api_server", "attach_metadata", "kubeconfig_file"}, f"{j['job_name']}: unknown kubernetes_sd keys {sorted(sd)}")
            if "namespaces" in sd:
                p.expect(ns in sd["namespaces"].get("names", []), f"{j['job_name']}: namespaces do not include {ns}")
            for s in sd.get("selectors", []):
                p.expect(s.get("role") == sd["role"], f"{j['job_name']}: selector role {s.get('role')} != {sd['role']}")
                for term in filter(None, s.get("label", "").split(",")):
                    k, _, v = term.partition("=")
                    p.expect(ds["spec"]["template"]["metadata"]["labels"].get(k) == v, f"{j['job_name']}: selector {term} does not match the agent pods")
            if sd.get("role") == "pod":
                src = {tuple(r.get("source_labels", [])) for r in j.get("relabel_configs", [])}
                for a in ann:
                    if a.startswith("prometheus.io/"):
                        meta = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", a)
                        p.expect(any(meta in s for s in src), f"{j['job_name']}: annotation {a} is not used by relabel_configs")
        for sd in j.get("ec2_sd_configs", []):
            p.expect(sd.get("port") == 9464, f"{j['job_name']}: ec2 port is not 9464")
            p.expect(set(sd) <= {"region", "port", "filters", "refresh_interval", "role_arn", "endpoint", "profile"}, f"{j['job_name']}: unknown ec2_sd keys {sorted(sd)}")
            for f in sd.get("filters", []):
                p.expect(set(f) == {"name", "values"} and isinstance(f["values"], list), f"{j['job_name']}: bad ec2 filter {f}")
        for key in SD_TO_STATIC:
            if key in j:
                del j[key]
                j["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
    p.done()
    out = Path(args[0])
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for rf in cfg.get("rule_files", []):
        src = DEPLOY / "prometheus" / rf
        if src.exists():
            (out.parent / rf).write_text(src.read_text())


@check
def agent_facts(_args):
    """The facts read from the agent's sources are sane, and every hoop_* series the alert
    rules and their tests use is one the agent exports (metrics.rs)."""
    p = Problems()
    for f in ("--config", "--data-dir", "--metrics-addr", "--api-socket", "--policy", "--log-format"):
        p.expect(f in AGENT_FLAGS, f"main.rs: no {f} flag found (parser out of date?)")
    for k in ("data_dir", "metrics_addr", "api_socket", "store", "kubernetes", "api_tls"):
        p.expect(k in CONFIG_KEYS, f"config.rs: no {k} key found")
    for m in ("hoop_aws_calls_total", "hoop_records_lost_total", "hoop_ready", "hoop_store_write_seconds_bucket"):
        p.expect(m in METRICS, f"metrics.rs: no {m} found")
    for f in ("alerts.yaml", "alerts_test.yaml"):
        text = (DEPLOY / "prometheus" / f).read_text()
        for name in sorted(set(re.findall(r"\bhoop_[a-z0-9_]+", text))):
            p.expect(name in METRICS, f"prometheus/{f}: {name} is not a metric the agent exports")
    unit = (DEPLOY / "systemd" / "hoop-agent.service").read_text()
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            for tok in line.split()[2:]:
                if tok.startswith("--"):
                    p.expect(tok.split("=")[0] in AGENT_FLAGS, f"hoop-agent.service: unknown flag {tok}")
        if line.startswith("Environment="):
            var = line.split("=", 2)[1]
            p.expect(var in AGENT_ENV, f"hoop-agent.service: unknown variable {var}")
    p.done()


def main(argv):
    if len(argv) < 2 or argv[1] not in CHECKS:
        print(f"usage: {argv[0]} {{{'|'.join(CHECKS)}}} [ARG...]", file=sys.stderr)
        return 2
    try:
        CHECKS[argv[1]](argv[2:])
    except Fail as e:
        print(str(e))
        return 1
    except (KeyError, TypeError, AttributeError, ValueError, yaml.YAMLError) as e:
        print(f"malformed input: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
