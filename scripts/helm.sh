#!/usr/bin/env bash
# helm for the chart tests (deploy/helm/saga-server): built once with `go install` from the Go
# module proxy, cached under .services/helm/<version>/ (gitignored), and its path printed on
# stdout. Idempotent: a cached binary of the right version is reused without touching the network.
#
#   scripts/helm.sh            print the path of helm (building it first when missing)
#   SAGA_HELM_VERSION=v3.x.y   another release (default below)
#
# Needs Go (1.26 or later for v3.22); the first build takes a few minutes on two cores. It
# downloads Go modules only (through GOPROXY, the module proxy by default) and listens on
# nothing. Concurrent runs wait for each other (flock) instead of building twice.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${SAGA_HELM_VERSION:-v3.22.0}"
DIR="$ROOT/.services/helm/$VERSION"
HELM="$DIR/helm"

log() { echo "helm.sh: $*" >&2; }
die() { echo "helm.sh: ERROR: $*" >&2; exit 1; }

cached() { [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qx "$VERSION"; }

if cached; then
    echo "$HELM"
    exit 0
fi

command -v go >/dev/null || die "go not found; install Go (1.26+) to build helm $VERSION"
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
if command -v flock >/dev/null; then flock 9; fi
if ! cached; then
    log "building helm $VERSION with go install (once; cached in ${DIR#"$ROOT"/})"
    t0=$SECONDS
    # Stamped the way helm's own release build does it: its version, and the Kubernetes version
    # `helm template` and `helm lint` assume (one minor above client-go's, e.g. 0.37 -> 1.37).
    gomod="$(go mod download -json "helm.sh/helm/v3@$VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
    [ -f "$gomod" ] || die "cannot fetch helm.sh/helm/v3@$VERSION from the Go module proxy"
    client_go="$(awk '$1 == "k8s.io/client-go" { print $2 }' "$gomod")"
    [[ "$client_go" =~ ^v0\.([0-9]+)\. ]] || die "helm $VERSION: no k8s.io/client-go version in its go.mod"
    k8s_minor="${BASH_REMATCH[1]}"
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$VERSION"
    for pkg in pkg/chartutil pkg/lint/rules; do
        ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
    done
    GOBIN="$DIR" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" go install -ldflags "$ldflags" \
        "helm.sh/helm/v3/cmd/helm@$VERSION" >&2 || die "go install helm.sh/helm/v3/cmd/helm@$VERSION failed"
    cached || die "built $HELM but it does not report version $VERSION"
    log "helm $VERSION built in $((SECONDS - t0)) s"
fi
echo "$HELM"
