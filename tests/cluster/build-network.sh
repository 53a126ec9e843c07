#!/usr/bin/env bash
# Build the test cluster's network add-ons from Go modules with this machine's Go toolchain,
# cached outside git keyed by version, and print the directory that holds them:
#
#   coredns      cluster DNS (the kubernetes plugin answers for cluster.local); a wrapper
#                main package links only the plugins a test cluster uses (no forward: tests
#                resolve nothing outside the cluster), in CoreDNS's own execution order;
#   kube-router  run only as the NetworkPolicy engine (--run-firewall=true
#                --run-router=false --run-service-proxy=false); it execs ipset, iptables,
#                iptables-save and iptables-restore from PATH.
#
# Nothing prebuilt is downloaded: only module sources from the Go module proxy.
#
#   TOTE_COREDNS_VERSION=v1.15.0 TOTE_KUBE_ROUTER_VERSION=v2.1.0 bash tests/cluster/build-network.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

COREDNS_VERSION="${TOTE_COREDNS_VERSION:-$COREDNS_VERSION}"
KUBE_ROUTER_VERSION="${TOTE_KUBE_ROUTER_VERSION:-$KUBE_ROUTER_VERSION}"
# Without HOME (env -i): the account's home directory, as Python's Path.home() finds it (the
# cache below and go's own caches live there).
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${TOTE_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tote/bin}"
OUT="$CACHE/network-coredns-$COREDNS_VERSION-kube-router-$KUBE_ROUTER_VERSION"
WANT=(coredns kube-router)

have_all() { for b in "${WANT[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
if have_all; then echo "$OUT"; exit 0; fi

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
log() { echo "[build-network] $*" >&2; }

# --- CoreDNS ----------------------------------------------------------------------
# Upstream's main imports core/plugin (every plugin, cloud DNS providers included). This
# one imports a handful and replaces dnsserver.Directives, the list that fixes the order in
# which a server block's plugins handle a query (whatever their order in the Corefile), with
# the same names in the same relative order as upstream's generated list. A Corefile naming
# any other plugin fails to load ("unknown directive").
if [ ! -x "$OUT/coredns" ]; then
  mkdir -p "$WORK/coredns" && cd "$WORK/coredns"
  go mod init tote.dev/coredns-build >/dev/null 2>&1
  cat > main.go <<'GO'
// Command coredns is CoreDNS with only the plugins the tote test cluster uses.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// Each import registers one plugin (its setup function) with Caddy.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metadata"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/transfer"
	_ "github.com/coredns/coredns/plugin/whoami"
)

// directives: execution order, first to last; a subsequence of upstream's plugin.cfg.
// "prometheus" is the directive of plugin/metrics. kubernetes links metadata and transfer
// anyway (they register themselves), so they are usable directives too.
var directives = []string{
	"metadata",
	"reload",
	"bind",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"transfer",
	"hosts",
	"kubernetes",
	"loop",
	"whoami",
}

func main() {
	// Plain assignment (not SetDirectives, which only newer releases have) so that an
	// overridden older pin builds too. Nothing reads the list before Run parses a Corefile.
	dnsserver.Directives = directives
	coremain.Run()
}
GO
  go get "github.com/coredns/coredns@$COREDNS_VERSION" >&2
  go mod tidy >&2
  log "building coredns $COREDNS_VERSION"
  t0=$(date +%s)
  go build -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.gitTag=$COREDNS_VERSION" \
    -o "$OUT/coredns.tmp" .
  mv "$OUT/coredns.tmp" "$OUT/coredns"
  log "built coredns in $(( $(date +%s) - t0 ))s"
fi

# --- kube-router ------------------------------------------------------------------
# Only for the isolated test harness's NetworkPolicy engine (pods in namespaces the tests
# create, on loopback and private bridges). Security flaws are reported for v2.1.0, the
# only release the module proxy here serves; prefer a newer one where it is available.
if [ ! -x "$OUT/kube-router" ]; then
  log "building kube-router $KUBE_ROUTER_VERSION"
  t0=$(date +%s)
  pkg=github.com/cloudnativelabs/kube-router/v2
  GOBIN="$WORK/gobin" go install -trimpath \
    -ldflags "-s -w -X $pkg/pkg/version.Version=$KUBE_ROUTER_VERSION -X $pkg/pkg/version.BuildDate=1970-01-01T00:00:00Z" \
    "$pkg/cmd/kube-router@$KUBE_ROUTER_VERSION" >&2
  mv "$WORK/gobin/kube-router" "$OUT/kube-router"
  log "built kube-router in $(( $(date +%s) - t0 ))s"
fi

have_all || { log "some binaries are missing in $OUT"; exit 1; }
echo "$OUT"
