#!/usr/bin/env bash
# The PyTorch test image: Debian 12's python3-torch and workloads/pytorch/train.py.
#
#   scripts/pytorch-image.sh build
#       Build (or reuse) the cached rootfs and make the local image gp4u/pytorch-train:local
#       from it and the train.py in this checkout. Prints
#         export GP4U_PYTORCH_LOCAL_IMAGE=gp4u/pytorch-train:local
#   scripts/pytorch-image.sh push REGISTRY
#       Build, push the image to REGISTRY (127.0.0.1:PORT, e.g. scripts/test-images.sh's) as
#       REGISTRY/gp4u/pytorch:train, then remove it (and so :local) locally again, so that a
#       test pulls it by digest; its big base layer stays in Docker, so that pull fetches
#       train.py's small layer only. Prints
#         export GP4U_TEST_PYTORCH_IMAGE=REGISTRY/gp4u/pytorch
#         export GP4U_TEST_PYTORCH_DIGEST=sha256:...
#   scripts/pytorch-image.sh key
#       Print the cache key and the path of the rootfs tarball.
#   scripts/pytorch-image.sh clean
#       Delete every cached rootfs tarball and the base images imported from them.
#
# The image: a Debian bookworm rootfs made by mmdebstrap (variant apt, no Recommends, no docs
# but the copyright files, no man pages or translations) with python3, python3-torch (1.13,
# CPU only: Debian's build has no CUDA) and python3-numpy; /input, /output and /scratch
# exist (empty). On top, one small layer: /opt/gp4u/train.py, CMD
# ["python3","/opt/gp4u/train.py"], PYTHONUNBUFFERED=1. About 1 GB unpacked.
#
# Cache: building the rootfs takes minutes (apt downloads and unpacks ~180 packages), so its
# tarball is kept outside the checkout in $GP4U_IMAGE_CACHE (default /var/cache/gp4u-images)
# as pytorch-rootfs-KEY.tar, KEY a hash of everything that decides its contents (suite,
# variant, packages, mmdebstrap options and hooks: the ROOTFS_* settings below). Docker also
# keeps the tarball imported as gp4u/pytorch-base:KEY. Both are reused while KEY stays the
# same; train.py's layer is made anew on every build (seconds), so the image always carries
# the train.py in this checkout. A change to the recipe makes a new KEY (the old tarball stays
# until `clean`). Builds take a lock in the cache directory, so two runs don't build twice.
#
# Needs root or sudo for the first build (mmdebstrap's root mode; mmdebstrap is installed with
# apt-get if missing) and Debian's apt mirrors; nothing else from outside. The rootfs comes
# with bookworm's security and point-release updates of the day it was built.
#
# Environment (all optional): GP4U_IMAGE_CACHE (the cache directory), GP4U_PYTORCH_MIRROR
# (an apt mirror URL for mmdebstrap; default: its own, deb.debian.org plus security).
# Diagnostics go to stderr; stdout carries only the export lines.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly TRAIN_PY="$ROOT/workloads/pytorch/train.py"
readonly CACHE_DIR="${GP4U_IMAGE_CACHE:-/var/cache/gp4u-images}"
readonly BASE_REPO=gp4u/pytorch-base
readonly LOCAL_IMAGE=gp4u/pytorch-train:local
readonly REPO_PATH=gp4u/pytorch
readonly TAG=train
readonly IMAGE_CMD='CMD ["python3","/opt/gp4u/train.py"]'
readonly IMAGE_ENV=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'ENV PYTHONUNBUFFERED=1'
)

# --- the recipe: everything here goes into the cache key ---------------------------------
# Bump ROOTFS_REVISION for a change the settings below do not show.
readonly ROOTFS_REVISION=1
readonly ROOTFS_SUITE=bookworm
readonly ROOTFS_VARIANT=apt
readonly ROOTFS_PACKAGES=python3,python3-numpy,python3-torch
# The hooks run in mmdebstrap's shell, with $1 the rootfs: single quotes on purpose.
# shellcheck disable=SC2016
ROOTFS_OPTIONS=(
  --aptopt='APT::Install-Recommends "false"'
  --aptopt='APT::Install-Suggests "false"'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --customize-hook='mkdir -p "$1/opt/gp4u" "$1/input" "$1/output" "$1/scratch"'
  --customize-hook='chmod 755 "$1/opt/gp4u" "$1/input" "$1/output" "$1/scratch"'
  # Fail the build (not the first job) if torch does not import.
  --customize-hook='chroot "$1" python3 -c "import numpy, torch; print(\"rootfs check:\", torch)"'
  --customize-hook='rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/*'
  --customize-hook='rm -rf "$1/var/log"/*.log "$1/var/log/apt"/*'
)
readonly ROOTFS_OPTIONS

log() { printf 'pytorch-image: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

SUDO=()
need_root() {
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: $*"
    SUDO=(sudo)
  fi
}

cache_key() {
  {
    printf 'revision %s\nsuite %s\nvariant %s\npackages %s\n' "$ROOTFS_REVISION" \
      "$ROOTFS_SUITE" "$ROOTFS_VARIANT" "$ROOTFS_PACKAGES"
    printf 'mirror %s\n' "${GP4U_PYTORCH_MIRROR:-}"
    printf 'option %s\n' "${ROOTFS_OPTIONS[@]}"
  } | sha256sum | cut -c1-16
}

# --- the rootfs tarball --------------------------------------------------------------------

install_mmdebstrap() {
  command -v mmdebstrap >/dev/null 2>&1 && return 0
  local apt_log
  need_root "cannot install mmdebstrap"
  command -v apt-get >/dev/null 2>&1 || die "no mmdebstrap and no apt-get to install it"
  log "installing the Debian package mmdebstrap (apt-get, quietly)"
  apt_log="$(mktemp)"
  if ! { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends mmdebstrap; } >"$apt_log" 2>&1; then
    tail -n 40 "$apt_log" >&2 || true
    rm -f "$apt_log"
    die "apt-get could not install mmdebstrap (see above)"
  fi
  rm -f "$apt_log"
  command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap installed, but not on PATH"
}

# Prints "still building" every minute while PID (the caller) runs; on TERM it ends its sleep
# too, so that no stray process keeps a caller's pipe open.
ticker() {
  local pid="$1" t0="$2" sleeper=''
  trap 'kill $sleeper 2>/dev/null; exit 0' TERM
  while :; do
    sleep 60 &
    sleeper=$!
    wait "$sleeper" || true
    kill -0 "$pid" 2>/dev/null || exit 0
    log "... still building ($((SECONDS - t0))s)"
  done
}

BUILD_WORK='' BUILDER='' READER=''
# mmdebstrap runs in a session of its own (setsid), so that it is stopped as a whole, the way
# a ^C at a terminal stops it: it then unmounts and removes its temporary tree itself.
stop_mmdebstrap() {
  local pgid i
  [[ -n "$BUILDER" ]] || return 0
  if ((${#SUDO[@]})); then
    pgid="$(ps -o pgid= --ppid "$BUILDER" 2>/dev/null | tr -d ' ' | head -n 1)"
  else
    pgid="$BUILDER"
  fi
  [[ "$pgid" =~ ^[0-9]+$ ]] || return 0
  log "stopping mmdebstrap (process group $pgid)"
  "${SUDO[@]}" kill -TERM -- "-$pgid" 2>/dev/null || return 0
  for ((i = 0; i < 600; i++)); do
    "${SUDO[@]}" kill -0 -- "-$pgid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "mmdebstrap still running after 60s; killing it (its tree in \$TMPDIR may remain)"
  "${SUDO[@]}" kill -KILL -- "-$pgid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # invoked through the EXIT trap
build_interrupted() {
  local status=$?
  trap - EXIT
  if [[ -n "$BUILD_WORK" ]]; then
    log "build stopped; removing $BUILD_WORK"
    stop_mmdebstrap
    local jobs_left
    mapfile -t jobs_left < <(jobs -p)
    ((${#jobs_left[@]} == 0)) || kill "${jobs_left[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    "${SUDO[@]}" rm -rf -- "$BUILD_WORK"
  fi
  exit "$status"
}

build_rootfs() {
  local tarball="$1" t0=$SECONDS work status=0 tick mirror=()
  install_mmdebstrap
  need_root "mmdebstrap needs root (its root mode) to build the rootfs"
  command -v setsid >/dev/null 2>&1 || die "no setsid (util-linux)"
  [[ -n "${GP4U_PYTORCH_MIRROR:-}" ]] && mirror=("$GP4U_PYTORCH_MIRROR")
  work="$(mktemp -d "$CACHE_DIR/.build.XXXXXXXX")"
  BUILD_WORK="$work"
  trap build_interrupted EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  log "building the rootfs ($ROOTFS_SUITE, $ROOTFS_PACKAGES) with mmdebstrap;" \
    "this takes a few minutes (log: $work/mmdebstrap.log)"
  ticker "$BASHPID" "$t0" >/dev/null &
  tick=$!
  # Its output goes through a pipe to the log, and its progress lines (minus apt's noise) to
  # stderr. The readers ignore ^C, so that mmdebstrap can still log its cleanup after one.
  mkfifo "$work/output.fifo"
  (
    trap '' INT TERM HUP
    tee "$work/mmdebstrap.log" <"$work/output.fifo" |
      grep --line-buffered -E '^(I:|W:|E:|rootfs check)' |
      sed -u 's/^/pytorch-image:   /' >&2 || true
  ) &
  READER=$!
  "${SUDO[@]}" setsid mmdebstrap --variant="$ROOTFS_VARIANT" --mode=root --format=tar \
    --include="$ROOTFS_PACKAGES" "${ROOTFS_OPTIONS[@]}" \
    "$ROOTFS_SUITE" "$work/rootfs.tar" "${mirror[@]}" </dev/null >"$work/output.fifo" 2>&1 &
  BUILDER=$!
  # `wait` (unlike a foreground command) lets a signal to this script run its trap at once.
  wait "$BUILDER" || status=$?
  BUILDER=''
  wait "$READER" || true
  READER=''
  kill "$tick" 2>/dev/null || true
  wait "$tick" 2>/dev/null || true
  if ((status != 0)); then
    log "mmdebstrap failed (status $status); the end of its log:"
    tail -n 40 "$work/mmdebstrap.log" >&2 || true
    "${SUDO[@]}" rm -rf -- "$work"
    BUILD_WORK=''
    die "could not build the rootfs"
  fi
  mv -f -- "$work/rootfs.tar" "$tarball"
  "${SUDO[@]}" rm -rf -- "$work"
  trap - EXIT INT TERM HUP
  BUILD_WORK=''
  log "rootfs built in $((SECONDS - t0))s: $tarball ($(du -h "$tarball" | cut -f1))"
}

# Make sure the cached tarball and the base image for KEY exist.
ensure_base() {
  local key="$1" tarball base t0
  tarball="$CACHE_DIR/pytorch-rootfs-$key.tar"
  base="$BASE_REPO:$key"
  if [[ ! -d "$CACHE_DIR" ]]; then
    mkdir -p -- "$CACHE_DIR" 2>/dev/null || {
      need_root "cannot create $CACHE_DIR (set GP4U_IMAGE_CACHE)"
      "${SUDO[@]}" mkdir -p -- "$CACHE_DIR"
      "${SUDO[@]}" chown "$(id -u):$(id -g)" "$CACHE_DIR"
    }
  fi
  [[ -w "$CACHE_DIR" ]] || die "$CACHE_DIR is not writable (set GP4U_IMAGE_CACHE)"
  # One build at a time per cache directory.
  exec 9>"$CACHE_DIR/.lock"
  if ! flock -n 9; then
    log "another build holds $CACHE_DIR/.lock; waiting for it"
    flock 9
  fi
  if [[ -s "$tarball" ]]; then
    log "cached rootfs: $tarball (key $key)"
  else
    build_rootfs "$tarball"
  fi
  if docker image inspect "$base" >/dev/null 2>&1; then
    log "cached base image: $base"
  else
    t0=$SECONDS
    log "importing the rootfs into Docker as $base ($(du -h "$tarball" | cut -f1))"
    local changes=() c
    for c in "${IMAGE_ENV[@]}"; do changes+=(--change "$c"); done
    docker import "${changes[@]}" --change "$IMAGE_CMD" "$tarball" "$base" >/dev/null ||
      die "docker import of $tarball failed"
    log "imported in $((SECONDS - t0))s"
  fi
  flock -u 9
}

# The final image: the base plus train.py from this checkout, tagged LOCAL_IMAGE.
make_image() {
  local key t0=$SECONDS cid stage changes=() c previous current
  [[ -f "$TRAIN_PY" ]] || die "no $TRAIN_PY"
  key="$(cache_key)"
  ensure_base "$key"
  stage="$(mktemp -d)"
  install -m 644 "$TRAIN_PY" "$stage/train.py"
  cid="$(docker create "$BASE_REPO:$key" /bin/true)" || die "docker create failed"
  # A tar stream with fixed owner and mtime: the layer depends on train.py's content only.
  if ! tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$stage" -cf - train.py |
    docker cp - "$cid:/opt/gp4u/"; then
    docker rm -f "$cid" >/dev/null 2>&1 || true
    rm -rf -- "$stage"
    die "could not copy train.py into the image"
  fi
  rm -rf -- "$stage"
  for c in "${IMAGE_ENV[@]}"; do changes+=(--change "$c"); done
  previous="$(docker image inspect --format '{{.Id}}' "$LOCAL_IMAGE" 2>/dev/null || true)"
  if ! docker commit "${changes[@]}" --change "$IMAGE_CMD" --change 'WORKDIR /' \
    "$cid" "$LOCAL_IMAGE" >/dev/null; then
    docker rm -f "$cid" >/dev/null 2>&1 || true
    die "docker commit failed"
  fi
  docker rm -f "$cid" >/dev/null 2>&1 || true
  # The image this one replaces, now untagged: gone, unless a container still uses it.
  current="$(docker image inspect --format '{{.Id}}' "$LOCAL_IMAGE")"
  if [[ -n "$previous" && "$previous" != "$current" ]]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
  fi
  log "image $LOCAL_IMAGE ready ($(docker image inspect --format '{{.Size}}' "$LOCAL_IMAGE" |
    awk '{ printf "%.0f MB", $1 / 1e6 }'), train.py sha256" \
    "$(sha256sum "$TRAIN_PY" | cut -c1-12)) in $((SECONDS - t0))s"
}

# --- commands ----------------------------------------------------------------------------

cmd_build() {
  command -v docker >/dev/null 2>&1 || die "no docker command"
  make_image
  printf 'export GP4U_PYTORCH_LOCAL_IMAGE=%q\n' "$LOCAL_IMAGE"
}

cmd_push() {
  local registry="${1:-}" image ref t0 push_log digest="" d got
  [[ -n "$registry" ]] || die "usage: $0 push REGISTRY (e.g. 127.0.0.1:5055)"
  [[ "$registry" =~ ^127\.0\.0\.1:[0-9]+$ || "$registry" =~ ^localhost:[0-9]+$ ]] ||
    die "REGISTRY must be 127.0.0.1:PORT (a local test registry), not '$registry'"
  command -v docker >/dev/null 2>&1 || die "no docker command"
  command -v curl >/dev/null 2>&1 || die "no curl"
  make_image
  image="$registry/$REPO_PATH"
  ref="$image:$TAG"
  docker tag "$LOCAL_IMAGE" "$ref"
  t0=$SECONDS
  log "pushing $ref (the first push to a registry uploads the ~1 GB base layer)"
  push_log="$(mktemp)"
  if ! docker push "$ref" >"$push_log" 2>&1; then
    tail -n 20 "$push_log" >&2 || true
    rm -f "$push_log"
    docker rmi "$ref" >/dev/null 2>&1 || true
    die "docker push $ref failed"
  fi
  while IFS= read -r d; do
    if [[ "$d" == "$image@sha256:"* ]]; then
      digest="${d#*@}"
      break
    fi
  done < <(docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$ref")
  if [[ -z "$digest" ]]; then
    digest="$(grep -oE 'digest: sha256:[0-9a-f]{64}' "$push_log" | head -n 1 | cut -d' ' -f2)"
  fi
  rm -f "$push_log"
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || die "no digest for $ref after the push"
  got="$(curl -sf --noproxy '*' --max-time 10 -o /dev/null -D - \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$registry/v2/$REPO_PATH/manifests/$digest" |
    tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p')" ||
    die "the registry does not serve manifest $digest"
  [[ "$got" == "$digest" ]] || die "the registry serves $digest as '$got'"
  log "pushed in $((SECONDS - t0))s: $image@$digest"
  # Gone locally (both tags: one image id), so that a test pulls it; the base stays.
  docker rmi -f "$(docker image inspect --format '{{.Id}}' "$ref")" >/dev/null 2>&1 || true
  if docker image inspect "$ref" >/dev/null 2>&1; then
    die "could not remove the local image $ref"
  fi
  printf 'export GP4U_TEST_PYTORCH_IMAGE=%q\n' "$image"
  printf 'export GP4U_TEST_PYTORCH_DIGEST=%q\n' "$digest"
}

cmd_key() {
  local key
  key="$(cache_key)"
  printf '%s %s\n' "$key" "$CACHE_DIR/pytorch-rootfs-$key.tar"
}

cmd_clean() {
  local ids f
  if command -v docker >/dev/null 2>&1; then
    ids="$(docker images --no-trunc --format '{{.ID}}' "$BASE_REPO" | sort -u)"
    if [[ -n "$ids" ]]; then
      log "removing the base image(s) $(docker images --format '{{.Repository}}:{{.Tag}}' \
        "$BASE_REPO" | paste -sd' ')"
      # shellcheck disable=SC2086  # one id a word
      docker rmi -f $ids >/dev/null || log "warning: could not remove every base image"
    fi
    docker rmi "$LOCAL_IMAGE" >/dev/null 2>&1 || true
  fi
  for f in "$CACHE_DIR"/pytorch-rootfs-*.tar; do
    [[ -e "$f" ]] || continue
    log "deleting $f"
    rm -f -- "$f"
  done
}

case "${1:-}" in
  build) cmd_build ;;
  push) cmd_push "${2:-}" ;;
  key) cmd_key ;;
  clean) cmd_clean ;;
  *)
    echo "usage: $0 build | push REGISTRY | key | clean" >&2
    exit 2
    ;;
esac
