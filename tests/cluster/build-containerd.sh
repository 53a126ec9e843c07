#!/usr/bin/env bash
# Build containerd (daemon, ctr, runc shim) from its Go module with this machine's Go
# toolchain, cached outside git keyed by version, and print the directory that holds them.
# Nothing prebuilt is downloaded: only module sources from the Go module proxy.
#
#   TOTE_CONTAINERD_VERSION=v2.4.2 bash tests/cluster/build-containerd.sh   (the default)
#   TOTE_CONTAINERD_VERSION=v1.7.35 bash tests/cluster/build-containerd.sh
#
# "system" selects the Debian package's binaries instead (nothing is built).
# runc is not built here: Debian's runc is linked against libseccomp, which pod sandboxes
# need ("seccomp not supported" otherwise); containerd finds it on PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
VERSION="${TOTE_CONTAINERD_VERSION:-$CONTAINERD_VERSION}"
log() { echo "[build-containerd] $*" >&2; }

if [ "$VERSION" = system ]; then
  d="$(dirname "$(command -v containerd)")"; echo "$d"; exit 0
fi
# Without HOME (env -i): the account's home directory, as Python's Path.home() finds it (the
# cache below and go's own caches live there).
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${TOTE_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tote/bin}"
OUT="$CACHE/containerd-$VERSION"
WANT=(containerd ctr containerd-shim-runc-v2)
have_all() { for b in "${WANT[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
if have_all; then echo "$OUT"; exit 0; fi

case "$VERSION" in
  v1.*) module=github.com/containerd/containerd ;;
  v2.*) module=github.com/containerd/containerd/v2 ;;
  *) log "unsupported containerd version '$VERSION' (want v1.x, v2.x or system)"; exit 1 ;;
esac
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
t0=$(date +%s)
log "building containerd $VERSION (about a minute; cached afterwards)"
# no_btrfs: no btrfs headers needed; the snapshotters tests use are overlayfs and native.
# 1.x's go.mod carries exclude directives, which `go install pkg@version` refuses: build it
# as the main module from a writable copy of its source instead (same result).
ldflags="-s -w -X $module/version.Version=$VERSION -X $module/version.Package=$module"
src="$(go mod download -json "$module@$VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
cp -r "$src" "$WORK/src" && chmod -R u+w "$WORK/src"
for b in "${WANT[@]}"; do
  (cd "$WORK/src" && go build -trimpath -tags "no_btrfs" -ldflags "$ldflags" \
     -o "$OUT/$b.tmp" "./cmd/$b") >&2
  mv "$OUT/$b.tmp" "$OUT/$b"
done
log "built containerd $VERSION in $(( $(date +%s) - t0 ))s"
have_all || { log "some binaries are missing in $OUT"; exit 1; }
echo "$OUT"
