#!/usr/bin/env bash
# Installs the docker compose v2 CLI plugin where only the docker CLI is present (CI, this
# workplace): built from its Go module (github.com/docker/compose/v2) with the Go toolchain, since
# no package registry here ships the plugin binary. `go install ...@version` refuses the module
# (its go.mod has exclude directives), so the module source is fetched and built as the main
# module. Needs Go >= 1.24; takes a few minutes on 2 cores; idempotent.
set -euo pipefail

VERSION="${COMPOSE_VERSION:-v2.40.3}"
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
TARGET="$PLUGIN_DIR/docker-compose"

if docker compose version 2>/dev/null | grep -q "${VERSION#v}"; then
  echo "docker compose ${VERSION} is already installed"; exit 0
fi
command -v go >/dev/null || { echo "go not found: install Go to build the compose plugin" >&2; exit 1; }

module=$(go mod download -json "github.com/docker/compose/v2@${VERSION}" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$module" "$work/src"
chmod -R u+w "$work/src"
mkdir -p "$PLUGIN_DIR"
(cd "$work/src" && CGO_ENABLED=0 go build -trimpath \
  -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=${VERSION}" -o "$TARGET" ./cmd)
docker compose version
