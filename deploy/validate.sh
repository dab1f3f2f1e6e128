#!/usr/bin/env bash
# Validates what deploy/ ships, for real, without a cluster or a Docker engine:
#
#   1. the Dockerfile's build inputs exist (no Docker engine here, so no build);
#   2. the Helm chart: `helm lint --strict` and `helm template` with the default values and with
#      deploy/helm/values-production.yaml, for every Kubernetes version in NEXXUS_KUBE_VERSIONS;
#   3. `kubeconform -strict` on every rendered manifest against the Kubernetes JSON schemas of
#      that version (unknown fields, wrong types, missing required fields all fail);
#      the ServiceMonitor (a CRD) against prometheus-operator's schema when node is available;
#   4. the chart's own guards fail when they should, and kubeconform rejects a broken manifest
#      (so a permissive schema set cannot pass silently);
#   5. `docker compose config -q` on deploy/compose/compose.yaml, if Compose is available.
#
# Idempotent. First use installs, under NEXXUS_OPS_CACHE (default ~/.cache/nexxus-ops):
#   - helm and kubeconform, built with `go install` from the Go module proxy;
#   - Kubernetes JSON schemas from the PyPI package kubernetes-validate (it ships the standard
#     schemas of Kubernetes 1.25-1.37 as "local" schemas whose $refs point into a shared
#     _definitions.json); they are turned into standalone strict schemas that kubeconform reads
#     from disk. The wheel's sha256 is pinned.
#   - with node and npm: @kubernetes-models/prometheus-operator (the ServiceMonitor schema from
#     the CRD, compiled to a validator) and yaml, from the npm registry.
# Later runs install nothing and need no network. Go builds use GOTOOLCHAIN=local unless you set
# GOTOOLCHAIN (no toolchain download behind your back).
#
# Compose: the docker CLI here may lack the compose plugin. Then, with NEXXUS_INSTALL_COMPOSE=1
# (or NEXXUS_REQUIRE_COMPOSE=1), Compose itself (github.com/docker/compose/v5, the real plugin)
# is built from the Go module proxy into the cache and run as a standalone `docker-compose`;
# otherwise the check is skipped with a loud notice, and fails the run only when
# NEXXUS_REQUIRE_COMPOSE=1.
#
# Exit status: 0 when everything ran passed; 1 on any validation failure or missing tool.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART="$ROOT/deploy/helm/nexxus-worker"
PROD_VALUES="$ROOT/deploy/helm/values-production.yaml"
COMPOSE_FILE="$ROOT/deploy/compose/compose.yaml"
DOCKERFILE="$ROOT/deploy/docker/Dockerfile"

CACHE=${NEXXUS_OPS_CACHE:-$HOME/.cache/nexxus-ops}
HELM_VERSION=${NEXXUS_HELM_VERSION:-v3.22.0}
HELM_K8S_MINOR=37 # the client-go minor of that helm release: its default Kubernetes version
KUBECONFORM_VERSION=${NEXXUS_KUBECONFORM_VERSION:-v0.8.0}
# v5.6.0 and later depend on a module version the Go proxy refuses (403); v5.5.1 builds.
COMPOSE_VERSION=${NEXXUS_COMPOSE_VERSION:-v5.5.1}
SCHEMAS_PKG_VERSION=1.37.0
SCHEMAS_PKG_SHA256=85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9
SM_PKG="@kubernetes-models/prometheus-operator@6.0.0"
YAML_PKG="yaml@2.9.1"
# The chart's minimum (Chart.yaml kubeVersion) and the newest schema set available.
KUBE_VERSIONS=${NEXXUS_KUBE_VERSIONS:-"1.25.0 1.37.0"}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
ok() { printf '    ok: %s\n' "$*" >&2; }
die() { printf '\033[31mFAILED: %s\033[0m\n' "$*" >&2; exit 1; }
loud() {
  printf '\033[33m' >&2
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
  printf '!!! %s\n' "$@" >&2
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
  printf '\033[0m' >&2
}

FAILURES=()
SKIPPED=()
fail() { printf '\033[31m    FAIL: %s\033[0m\n' "$*" >&2; FAILURES+=("$*"); }

mkdir -p "$CACHE/bin"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nexxus-validate.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ------------------------------------------------------------------------------------------------
# Tools
# ------------------------------------------------------------------------------------------------

# go_tool NAME PACKAGE VERSION [LDFLAGS]: the binary path, installed on first use into
# $CACHE/bin/NAME-VERSION/ (written to a temporary directory first, so an interrupted install is
# simply redone).
go_tool() {
  local name=$1 pkg=$2 version=$3 ldflags=${4:-} dir="$CACHE/bin/$1-$3"
  if [[ ! -x $dir/$name ]]; then
    command -v go >/dev/null || die "$name $version is not installed and there is no go toolchain to build it"
    log "installing $name $version: go install $pkg@$version"
    rm -rf "$dir.tmp"
    GOBIN="$dir.tmp" GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-local} go install -trimpath -ldflags "-s -w $ldflags" "$pkg@$version" >&2 ||
      die "go install $pkg@$version"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  printf '%s\n' "$dir/$name"
}

HELM=$(go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR")
KUBECONFORM=$(go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" \
  "-X main.version=$KUBECONFORM_VERSION")

# ------------------------------------------------------------------------------------------------
# Kubernetes JSON schemas (PyPI kubernetes-validate -> standalone strict schemas)
# ------------------------------------------------------------------------------------------------

SCHEMAS="$CACHE/schemas/kubernetes-validate-$SCHEMAS_PKG_VERSION"

ensure_schemas() {
  local missing=() v
  for v in $KUBE_VERSIONS; do
    [[ -f $SCHEMAS/v$v-standalone-strict/.complete ]] || missing+=("$v")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v python3 >/dev/null || die "python3 is needed to install the Kubernetes schemas"
  local wheel="$CACHE/downloads/kubernetes_validate-$SCHEMAS_PKG_VERSION-py3-none-any.whl"
  if [[ ! -f $wheel ]]; then
    log "downloading kubernetes-validate $SCHEMAS_PKG_VERSION (Kubernetes JSON schemas) from PyPI"
    mkdir -p "$CACHE/downloads"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$WORK/dl" \
      "kubernetes-validate==$SCHEMAS_PKG_VERSION" >&2 || die "pip download kubernetes-validate==$SCHEMAS_PKG_VERSION"
    mv "$WORK/dl/$(basename "$wheel")" "$wheel"
  fi
  echo "$SCHEMAS_PKG_SHA256  $wheel" | sha256sum -c --quiet - >&2 ||
    { rm -f "$wheel"; die "sha256 mismatch of $(basename "$wheel") (removed; run again)"; }
  log "converting schemas for Kubernetes ${missing[*]} to standalone strict schemas"
  python3 - "$wheel" "$SCHEMAS" "${missing[@]}" <<'PY'
# Each "local" schema of kubernetes-validate refers to /api/_definitions.json#/$defs/<name>
# (resolved by that package's own registry). kubeconform loads one self-contained file per kind,
# so every kind's file gets the definitions it reaches copied into its own $defs.
import json, os, re, shutil, sys, zipfile

wheel, out_root, versions = sys.argv[1], sys.argv[2], sys.argv[3:]
REF = re.compile(r"^(?:/api/_definitions\.json)?#/\$defs/(.+)$")

def rewrite(node, found):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                m = REF.match(v)
                if not m:
                    raise SystemExit(f"unexpected $ref {v!r}")
                found.add(m.group(1))
                out[k] = "#/$defs/" + m.group(1)
            else:
                out[k] = rewrite(v, found)
        return out
    if isinstance(node, list):
        return [rewrite(x, found) for x in node]
    return node

with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    for version in versions:
        prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
        files = [n for n in names if n.startswith(prefix) and n.endswith(".json")]
        if not files:
            raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {version}")
        defs = json.loads(z.read(prefix + "_definitions.json"))["$defs"]
        dest = os.path.join(out_root, f"v{version}-standalone-strict")
        tmp = dest + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        count = 0
        for name in files:
            base = name[len(prefix):]
            if base.startswith("_") or base == "all.json":
                continue
            schema = json.loads(z.read(name))
            if "x-kubernetes-group-version-kind" not in schema:
                continue  # a sub-object, never a top-level manifest
            found = set()
            schema = rewrite(schema, found)
            schema.pop("$id", None)
            closure, todo = {}, list(found)
            while todo:
                d = todo.pop()
                if d in closure:
                    continue
                more = set()
                closure[d] = rewrite(defs[d], more)
                todo.extend(more - closure.keys())
            schema["$defs"] = closure
            with open(os.path.join(tmp, base), "w") as f:
                json.dump(schema, f, separators=(",", ":"))
            count += 1
        open(os.path.join(tmp, ".complete"), "w").write(f"{count}\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
        print(f"    {count} kinds for Kubernetes {version} in {dest}", file=sys.stderr)
PY
}
ensure_schemas

# ServiceMonitor validator (optional: needs node and npm).
SM_DIR="$CACHE/npm/servicemonitor-${SM_PKG##*@}"
SM_CHECK=""
if command -v node >/dev/null && command -v npm >/dev/null; then
  if [[ ! -f $SM_DIR/.complete ]]; then
    log "installing $SM_PKG and $YAML_PKG from npm (ServiceMonitor schema)"
    rm -rf "$SM_DIR" && mkdir -p "$SM_DIR"
    (cd "$SM_DIR" && npm init -y >/dev/null && npm install --no-audit --no-fund --no-update-notifier --loglevel=error "$SM_PKG" "$YAML_PKG" >&2) ||
      die "npm install $SM_PKG $YAML_PKG"
    touch "$SM_DIR/.complete"
  fi
  cat >"$SM_DIR/check.mjs" <<'JS'
// Validates every ServiceMonitor in the YAML files given against prometheus-operator's CRD
// schema (types, required fields, patterns). Unknown fields are not detected by this schema.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
let seen = 0, bad = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    const obj = doc.toJS();
    if (!obj || obj.kind !== "ServiceMonitor") continue;
    seen++;
    try { new ServiceMonitor(obj).validate(); }
    catch (e) { bad++; console.error(`${file}: ServiceMonitor ${obj.metadata?.name}: ${e.message}`); }
  }
}
console.log(`ServiceMonitor: ${seen} checked, ${bad} invalid`);
process.exit(bad ? 1 : 0);
JS
  SM_CHECK="node $SM_DIR/check.mjs"
fi

# ------------------------------------------------------------------------------------------------
# 1. Dockerfile inputs
# ------------------------------------------------------------------------------------------------
log "Dockerfile: build inputs exist in the context (the repository root)"
while read -r src; do
  if [[ -e $ROOT/$src ]]; then ok "COPY $src"; else fail "Dockerfile copies $src, which does not exist"; fi
done < <(awk '/^COPY / && !/--from=/ { for (i = 2; i < NF; i++) print $i }' "$DOCKERFILE")
grep -q '^ENTRYPOINT \["nexxus-worker"\]' "$DOCKERFILE" || fail "Dockerfile ENTRYPOINT is not nexxus-worker"
IGNORE="$DOCKERFILE.dockerignore"
if [[ -f $IGNORE ]]; then
  for keep in Cargo.toml Cargo.lock src benches topics; do
    grep -qx "!$keep" "$IGNORE" || fail "$IGNORE does not re-include $keep"
  done
fi

# ------------------------------------------------------------------------------------------------
# 2-3. Helm lint, template, kubeconform
# ------------------------------------------------------------------------------------------------
kubeconform_run() { # KUBE_VERSION FILE...
  local kv=$1
  shift
  "$KUBECONFORM" -strict -summary -kubernetes-version "$kv" \
    -schema-location "$SCHEMAS/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -skip ServiceMonitor "$@"
}

for kv in $KUBE_VERSIONS; do
  for variant in default production; do
    args=()
    [[ $variant == production ]] && args=(-f "$PROD_VALUES")
    log "helm lint --strict ($variant values, Kubernetes $kv)"
    if "$HELM" lint --strict --kube-version "$kv" "$CHART" "${args[@]}" >"$WORK/lint.log" 2>&1; then
      ok "lint"
    else
      cat "$WORK/lint.log" >&2
      fail "helm lint ($variant, $kv)"
    fi
    out="$WORK/$variant-$kv.yaml"
    log "helm template ($variant values, Kubernetes $kv) | kubeconform -strict"
    if "$HELM" template nexxus "$CHART" --namespace nexxus --kube-version "$kv" "${args[@]}" >"$out" 2>"$WORK/template.log"; then
      ok "rendered $(grep -c '^kind: ' "$out") objects: $(grep '^kind: ' "$out" | sort | uniq -c | awk '{printf "%s %s, ", $1, $3}' | sed 's/, $//')"
      if kubeconform_run "$kv" "$out" >&2; then ok "kubeconform"; else fail "kubeconform ($variant, $kv)"; fi
    else
      cat "$WORK/template.log" >&2
      fail "helm template ($variant, $kv)"
    fi
  done
done

newest=${KUBE_VERSIONS##* }
default_out="$WORK/default-$newest.yaml"
prod_out="$WORK/production-$newest.yaml"

log "ServiceMonitor schema (prometheus-operator CRD)"
if [[ -n $SM_CHECK ]]; then
  if $SM_CHECK "$prod_out" >&2; then ok "ServiceMonitor"; else fail "ServiceMonitor invalid"; fi
else
  echo "    skipped: node/npm not found; the ServiceMonitor is only rendered (kubeconform -skip ServiceMonitor)" >&2
  SKIPPED+=("ServiceMonitor schema (no node/npm)")
fi

# What the values promise shows in the manifests.
log "rendered manifests keep the chart's promises"
expect() { # DESCRIPTION FILE EXTENDED-REGEX MIN-COUNT
  local n
  n=$(grep -cE -- "$3" "$2" || true)
  if ((n >= $4)); then ok "$1 ($n)"; else fail "$1: expected >= $4 lines matching /$3/, found $n"; fi
}
expect "default: 5 Deployments" "$default_out" '^kind: Deployment$' 5
expect "default: 2 StatefulSets (aggregation, sockets_transport)" "$default_out" '^kind: StatefulSet$' 2
expect "default: a topics hook job" "$default_out" 'helm.sh/hook: pre-install,pre-upgrade' 1
expect "default: readiness on /readyz" "$default_out" 'path: /readyz' 7
expect "default: liveness on /healthz" "$default_out" 'path: /healthz' 7
expect "default: read-only root filesystem" "$default_out" 'readOnlyRootFilesystem: true' 8
expect "default: sockets index from the pod ordinal" "$default_out" 'i="\$\{POD_NAME##\*-\}"' 2
expect "production: 6 HPAs" "$prod_out" '^kind: HorizontalPodAutoscaler$' 6
expect "production: a ServiceMonitor" "$prod_out" '^kind: ServiceMonitor$' 1
expect "production: TLS for sockets" "$prod_out" 'name: TP_SCKT_SSL' 1
expect "production: TLS secret mounted" "$prod_out" 'secretName: nexxus-sockets-tls' 1
expect "production: existing Secret" "$prod_out" 'name: nexxus-worker-env' 8
expect "production: the Redis CA in every worker" "$prod_out" 'value: /etc/nexxus/redis-ca/ca.crt' 7
expect "production: the Redis CA from its ConfigMap" "$prod_out" 'name: nexxus-redis-ca' 7
# terminationGracePeriodSeconds above TP_SHUTDOWN_GRACE_MS, in every workload.
for f in "$default_out" "$prod_out"; do
  ms=$(awk -F'"' '/TP_SHUTDOWN_GRACE_MS:/ { print $2; exit }' "$f")
  bad=$(awk -v ms="${ms:-10000}" '/terminationGracePeriodSeconds:/ { if ($2 * 1000 <= ms) print $2 }' "$f")
  if [[ -z $bad && -n $ms ]]; then ok "$(basename "$f" .yaml): every terminationGracePeriodSeconds > ${ms} ms"; else fail "$(basename "$f"): grace period not above TP_SHUTDOWN_GRACE_MS=$ms: $bad"; fi
done

# ------------------------------------------------------------------------------------------------
# 4. Guards and the validator itself must reject what is wrong
# ------------------------------------------------------------------------------------------------
log "the chart refuses bad values (values.schema.json and the templates' own checks)"
must_fail_template() { # DESCRIPTION EXPECTED-MESSAGE ARGS...
  local what=$1 msg=$2
  shift 2
  if "$HELM" template nexxus "$CHART" --kube-version "$newest" "$@" >/dev/null 2>"$WORK/neg.log"; then
    fail "$what: rendered, should have been refused"
  elif grep -q -- "$msg" "$WORK/neg.log"; then
    ok "$what"
  else
    cat "$WORK/neg.log" >&2
    fail "$what: refused for another reason"
  fi
}
must_fail_template "more sockets pods than socket topics" "exceeds topics.socketsIndexes" --set roles.sockets_transport.replicaCount=5
must_fail_template "a secret in the ConfigMap" "is secret" --set config.TP_JWT_SECRET=x
must_fail_template "a secret in a role's env" "set it in secret" --set roles.write.env.TP_KAFKA_OPTS=x
must_fail_template "a Redis CA from both a Secret and a ConfigMap" "not both" --set redisCa.secretName=a --set redisCa.configMapName=b
must_fail_template "TP_REDIS_CA_FILE in config" "is set by the chart" --set config.TP_REDIS_CA_FILE=/x
must_fail_template "TLS without a certificate Secret" "needs roles.sockets_transport.tls.secretName" --set roles.sockets_transport.tls.enabled=true
# values.schema.json: a misspelt or unknown key, a value out of range
must_fail_template "a misspelt value (roles.write.replicas)" "additional properties 'replicas' not allowed" --set roles.write.replicas=3
must_fail_template "an unknown role" "additional properties 'indexer' not allowed" --set roles.indexer.enabled=true
must_fail_template "http.port 0" "/http/port" --set http.port=0
must_fail_template "a non-TP_ key in config" "does not match pattern" --set config.KAFKA=x

log "kubeconform rejects a broken manifest (the schemas are strict and really loaded)"
cat >"$WORK/broken.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
spec:
  replica: 2
  selector:
    matchLabels: {app: broken}
  template:
    metadata:
      labels: {app: broken}
    spec:
      containers:
        - name: c
          image: x
          ports:
            - containerPort: "http"
EOF
if kubeconform_run "$newest" "$WORK/broken.yaml" >"$WORK/broken.log" 2>&1; then
  cat "$WORK/broken.log" >&2
  fail "kubeconform accepted an unknown field and a string port"
elif grep -q "replica" "$WORK/broken.log" && grep -q "containerPort" "$WORK/broken.log"; then
  ok "unknown field spec.replica and string containerPort rejected"
else
  cat "$WORK/broken.log" >&2
  fail "kubeconform failed on the broken manifest for an unexpected reason"
fi

# ------------------------------------------------------------------------------------------------
# 5. Compose
# ------------------------------------------------------------------------------------------------
log "docker compose config -q ($COMPOSE_FILE)"
COMPOSE=()
if command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif [[ -x $CACHE/bin/docker-compose-$COMPOSE_VERSION/docker-compose ]]; then
  COMPOSE=("$CACHE/bin/docker-compose-$COMPOSE_VERSION/docker-compose")
elif [[ ${NEXXUS_INSTALL_COMPOSE:-0} == 1 || ${NEXXUS_REQUIRE_COMPOSE:-0} == 1 ]] && command -v go >/dev/null; then
  # Built inside its own module (its go.mod has exclude directives, which `go install pkg@v`
  # refuses), as upstream builds it.
  log "building Docker Compose $COMPOSE_VERSION from the Go module proxy"
  dir=$(GOTOOLCHAIN=${GOTOOLCHAIN:-local} go mod download -json "github.com/docker/compose/v5@$COMPOSE_VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') || die "go mod download docker/compose $COMPOSE_VERSION"
  dest="$CACHE/bin/docker-compose-$COMPOSE_VERSION"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  (cd "$dir" && GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-local} go build -trimpath \
    -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION" \
    -o "$dest.tmp/docker-compose" ./cmd) >&2 || die "building docker compose $COMPOSE_VERSION"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  COMPOSE=("$dest/docker-compose")
fi
if ((${#COMPOSE[@]})); then
  ok "using $("${COMPOSE[@]}" version 2>/dev/null | head -n 1)"
  if "${COMPOSE[@]}" -f "$COMPOSE_FILE" config -q; then
    ok "compose config"
    services=$("${COMPOSE[@]}" -f "$COMPOSE_FILE" config --services | sort | tr '\n' ' ')
    for s in kafka scylla redis topics aggregation write transport_manager track ios_transport android_transport sockets_transport; do
      [[ " $services " == *" $s "* ]] || fail "compose has no service $s"
    done
    ok "services: $services"
  else
    fail "docker compose config"
  fi
else
  loud "Docker Compose is NOT available: deploy/compose/compose.yaml was NOT validated." \
    "The docker CLI has no compose plugin here. NEXXUS_INSTALL_COMPOSE=1 builds Compose $COMPOSE_VERSION" \
    "from the Go module proxy (about 2 minutes, cached); NEXXUS_REQUIRE_COMPOSE=1 makes this fatal."
  if [[ ${NEXXUS_REQUIRE_COMPOSE:-0} == 1 ]]; then
    fail "Docker Compose required (NEXXUS_REQUIRE_COMPOSE=1) but not available"
  else
    SKIPPED+=("docker compose config (Compose not available)")
  fi
fi

# ------------------------------------------------------------------------------------------------
if ((${#FAILURES[@]})); then
  printf '\033[31m%d check(s) failed:\033[0m\n' "${#FAILURES[@]}" >&2
  printf '  - %s\n' "${FAILURES[@]}" >&2
  exit 1
fi
if ((${#SKIPPED[@]})); then
  log "all deploy/ validations that ran passed; NOT checked: $(printf '%s; ' "${SKIPPED[@]}" | sed 's/; $//')"
else
  log "all deploy/ validations passed"
fi
