#!/usr/bin/env bash
# Build the Kubernetes (kube-proxy included), etcd and helm binaries the test cluster needs,
# from Go modules, with this machine's Go toolchain. Nothing prebuilt is downloaded: only
# module sources from the Go module proxy. Binaries are cached outside git, keyed by version,
# so a second run returns at once (and a binary added to the list later is built alone).
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod points its staging modules
# (k8s.io/api, k8s.io/apiserver, ...) at ./staging with replace directives. A wrapper
# module requires it and replaces each staging module with the published v0.x release of
# the same Kubernetes version.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"   # the default pins, one place for scripts and tests

K8S_VERSION="${TOTE_K8S_VERSION:-$K8S_VERSION}"
ETCD_VERSION="${TOTE_ETCD_VERSION:-$ETCD_VERSION}"
HELM_VERSION="${TOTE_HELM_VERSION:-$HELM_VERSION}"
# Without HOME (env -i): the account's home directory, as Python's Path.home() finds it (the
# cache below and go's own caches live there).
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${TOTE_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tote/bin}"
OUT="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
WANT=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy helm)

have_all() { for b in "${WANT[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
if have_all; then echo "$OUT"; exit 0; fi

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
log() { echo "[build-binaries] $*" >&2; }

minor="${K8S_VERSION#v1.}"               # 34.4
staging_version="v0.${minor}"            # v0.34.4
major_minor="${K8S_VERSION%.*}"          # v1.34

# --- Kubernetes -------------------------------------------------------------------
k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)
need_k8s=0; for b in "${k8s_bins[@]}"; do [ -x "$OUT/$b" ] || need_k8s=1; done
if [ "$need_k8s" = 1 ]; then
  mkdir -p "$WORK/k8s" && cd "$WORK/k8s"
  go mod init tote.dev/k8s-build >/dev/null 2>&1
  modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  # Each staging module is a `k8s.io/x => ./staging/src/k8s.io/x` replace in kubernetes' go.mod.
  mapfile -t staging < <(grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging' "$modfile" | awk '{print $1}' | sort -u)
  [ "${#staging[@]}" -gt 10 ] || { log "could not read staging modules from $modfile"; exit 1; }
  go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
  for m in "${staging[@]}"; do go mod edit -replace="$m=$m@$staging_version"; done
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
  log "resolving k8s.io/kubernetes $K8S_VERSION with ${#staging[@]} staging replacements"
  go mod tidy -e >/dev/null 2>&1 || true
  go get "k8s.io/kubernetes@$K8S_VERSION" >&2
  ver_pkg=k8s.io/component-base/version
  ldflags="-s -w -X $ver_pkg.gitVersion=$K8S_VERSION -X $ver_pkg.gitMajor=1 -X $ver_pkg.gitMinor=${minor%%.*} -X $ver_pkg.gitTreeState=clean -X $ver_pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  for b in "${k8s_bins[@]}"; do
    [ -x "$OUT/$b" ] && continue
    log "building $b (this takes minutes on a small machine; cached afterwards)"
    t0=$(date +%s)
    go build -trimpath -ldflags "$ldflags" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$OUT/$b.tmp" "$OUT/$b"
    log "built $b in $(( $(date +%s) - t0 ))s"
  done
fi

# --- etcd -------------------------------------------------------------------------
if [ ! -x "$OUT/etcd" ]; then
  mkdir -p "$WORK/etcd" && cd "$WORK/etcd"
  go mod init tote.dev/etcd-build >/dev/null 2>&1
  cat > main.go <<'GO'
// Command etcd is the upstream etcd server entry point, built from its Go module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
  go mod tidy >&2
  log "building etcd $ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" . && mv "$OUT/etcd.tmp" "$OUT/etcd"
fi

# --- helm -------------------------------------------------------------------------
if [ ! -x "$OUT/helm" ]; then
  log "building helm $HELM_VERSION"
  GOBIN="$WORK/gobin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  mv "$WORK/gobin/helm" "$OUT/helm"
fi

have_all || { log "some binaries are missing in $OUT"; exit 1; }
echo "$OUT"
