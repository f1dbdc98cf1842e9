#!/usr/bin/env bash
# Builds the binaries of the local test control plane from the Go module proxy and caches them outside the
# repo, in a folder keyed by the component versions and the Go version. Prints that folder's bin/ path.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd                                                               (go.etcd.io/etcd/server/v3)
#   kwok                                                               (sigs.k8s.io/kwok)
#   helm                                                               (helm.sh/helm/v3)
#
# k8s.io/kubernetes and etcd's server carry replace directives, so `go install pkg@version` refuses them:
# each is built from a throw-away wrapper module (kubernetes/kubernetes#79384).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
go_version=$(go env GOVERSION)
cache_root=${MLW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlworkflow-operator}
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_${go_version}"
dest="$cache_root/control-plane/$key"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)

complete() { for b in "${binaries[@]}"; do [ -x "$dest/bin/$b" ] || return 1; done; }
if complete; then echo "$dest/bin"; exit 0; fi

mkdir -p "$cache_root/control-plane"
# Serialise concurrent builds (two test sessions, `make cluster` beside `make test`): the second waits.
exec 9>"$cache_root/control-plane/.build.lock"
flock 9
if complete; then echo "$dest/bin"; exit 0; fi

work=$(mktemp -d "$cache_root/control-plane/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
log() { echo "[build-control-plane $(date +%T)] $*" >&2; }
# Linking kube-apiserver takes ~2 GiB: keep parallelism at the core count, no more.
build_flags=(-p "$(nproc)" -trimpath)

k8s_ldflags() {
  local major minor pkg flags="-s -w"
  major=$(echo "$K8S_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')
  minor=$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_kubernetes() {
  log "kubernetes $K8S_VERSION"
  local mod="$work/k8s" gomod staging_version
  mkdir -p "$mod"
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  staging_version="v0$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+//')"  # v1.36.3 -> v0.36.3
  {
    echo "module mlworkflow.local/k8s-build"
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    # Every staging module the kubernetes go.mod replaces with a local folder gets its published version.
    sed -n -E 's#^[[:space:]]*(k8s\.io/[^[:space:]]+) => \./staging/.*#\1#p' "$gomod" | sort -u |
      while read -r m; do echo "replace $m => $m $staging_version"; done
  } >"$mod/go.mod"
  cat >"$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$mod" && go mod tidy -e >/dev/null 2>&1 || true
   cd "$mod" && go build "${build_flags[@]}" -ldflags "$(k8s_ldflags)" -o "$work/bin/" \
     k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
     k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}

build_etcd() {
  log "etcd $ETCD_VERSION"
  local mod="$work/etcd"
  mkdir -p "$mod"
  (cd "$mod" && go mod init mlworkflow.local/etcd-build >/dev/null 2>&1 &&
   go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 &&
   cat >tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3/etcdmain"
GO
  )
  # The etcd main package lives in the repo root module (go.etcd.io/etcd/v3), which is not published with
  # a usable go.mod; etcdmain.Main is the same entry point, so a two-line main calls it.
  mkdir -p "$mod/cmd/etcd"
  cat >"$mod/cmd/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$mod" && go mod tidy >/dev/null && go build "${build_flags[@]}" -ldflags "-s -w" -o "$work/bin/etcd" ./cmd/etcd)
}

build_go_install() {  # module path, version
  log "$1 $2"
  GOBIN="$work/bin" go install "${build_flags[@]}" -ldflags "-s -w" "$1@$2"
}

build_kubernetes
build_etcd
build_go_install sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
build_go_install helm.sh/helm/v3/cmd/helm "$HELM_VERSION"

# kwok's standalone binary needs its Stage objects passed with --config: keep the module's stage files.
kwok_dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
mkdir -p "$work/kwok-stages"
cp -r "$kwok_dir/kustomize/stage/." "$work/kwok-stages/"
chmod -R u+w "$work/kwok-stages"

for b in "${binaries[@]}"; do [ -x "$work/bin/$b" ] || { log "missing $b after build"; exit 1; }; done
rm -rf "$work/k8s" "$work/etcd"
rm -rf "$dest"
mv "$work" "$dest"
trap - EXIT
log "done: $dest/bin"
echo "$dest/bin"
