#!/usr/bin/env bash
# Prove the real Dockerfile builds and serves with no container registry: make a Debian base image with
# debootstrap (Debian's packages are reachable), build the Dockerfile on it with buildah (chroot
# isolation, vfs storage), start the server inside the image, and get a prediction from it with the
# client. Too slow for CI: run it by hand (as root) and record the result in docs/deploy.md.
#
#   deploy/container/build-local.sh            # needs: debootstrap, buildah; and make install (.venv)
#
# WORK (default /var/tmp/attnserve-build) keeps the base rootfs and buildah's storage between runs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/var/tmp/attnserve-build}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE=localhost/attnserve-base:bookworm
IMAGE=localhost/attnserve:local
PORT=${PORT:-50071}
METRICS_PORT=${METRICS_PORT:-9171}
STORAGE=(--root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
step() { printf '\n== %s\n' "$*"; }

mkdir -p "$WORK"
if ! buildah "${STORAGE[@]}" inspect "$BASE" >/dev/null 2>&1; then
    step "base image $BASE: Debian bookworm (minbase) with Python 3.11 by debootstrap"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" "$MIRROR"
    # this machine reaches PyPI through its own CA bundle: give it to pip inside the build
    cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
    container=$(buildah "${STORAGE[@]}" from scratch)
    buildah "${STORAGE[@]}" add "$container" "$WORK/rootfs.tar" /
    buildah "${STORAGE[@]}" config --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --cmd /bin/bash "$container"
    buildah "${STORAGE[@]}" commit "$container" "$BASE"
    buildah "${STORAGE[@]}" rm "$container"
fi

step "building $IMAGE from the Dockerfile on $BASE"
started=$(date +%s)
buildah "${STORAGE[@]}" bud --isolation chroot --layers=false --build-arg "BASE_IMAGE=$BASE" \
    -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
echo "built in $(( $(date +%s) - started )) s"

step "demo models, exported on the host, mounted read-only at /models"
models="$WORK/models"
"$ROOT/.venv/bin/attnserve" export --demo --skip-existing --repository "$models" --no-progress >/dev/null

step "serving inside the image on 127.0.0.1:$PORT"
container=$(buildah "${STORAGE[@]}" from "$IMAGE")
cleanup() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true;
            buildah "${STORAGE[@]}" rm "$container" >/dev/null 2>&1 || true; }
buildah "${STORAGE[@]}" run --isolation chroot --user 10001 -v "$models:/models:ro" "$container" -- \
    attnserve serve --host 127.0.0.1 --port "$PORT" --metrics-host 127.0.0.1 --metrics-port "$METRICS_PORT" \
    > "$WORK/server.log" 2>&1 &
server=$!
trap cleanup EXIT
for _ in $(seq 120); do grep -q "ready:" "$WORK/server.log" && break; sleep 1; done
cat "$WORK/server.log"

step "a prediction from the server in the image"
scene="$WORK/scene.png"
"$ROOT/.venv/bin/python" - "$scene" <<'PY'
import sys
from PIL import Image
from attnserve.models.scenes import CLASS_NAMES, classification_scene
scene = classification_scene(5000, 1, size=96)
Image.fromarray(scene.image).resize((384, 384)).save(sys.argv[1])
print("truth:", CLASS_NAMES[int(scene.labels[0])])
PY
"$ROOT/.venv/bin/attnserve" predict "$scene" --model cbam_classifier --server "127.0.0.1:$PORT" --overlay "$WORK/overlays"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -c '^attnserve_' | sed 's/^/metric samples: /'

step "image"
buildah "${STORAGE[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}} {{.CreatedAtRaw}}' "$IMAGE"
