#!/usr/bin/env bash
# Tests of the Damselfly Helm chart (deploy/helm/damselfly), offline: helm lint and helm
# template for the default values and every tests/values-*.yaml, Kubernetes schema checks
# (kubernetes-validate), and assertions on the rendered objects and config files
# (tests/chart_test.py). No Kubernetes API server is contacted.
#
# Installs helm and kubernetes-validate into ${DAMSELFLY_TOOLS:-~/.cache/damselfly-tools}
# when missing (see tools.sh). Prints "N passed, M failed"; exits non-zero on any failure.
# Pass -v to list every passing check too.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# shellcheck source=tools.sh
source "$here/tools.sh"
if ! damselfly_chart_tools; then
  echo "deploy/helm/test.sh: could not install the test tools (helm, kubernetes-validate)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

"$PYTHON" "$here/tests/chart_test.py" \
  --helm "$HELM" \
  --chart "$here/damselfly" \
  --values-dir "$here/tests" \
  "$@"
