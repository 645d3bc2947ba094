#!/usr/bin/env bash
# Throwaway container registry and test images for the Docker suites (gp4u-agent).
#
#   scripts/test-images.sh start     start a registry on 127.0.0.1, push two small busybox
#                                    images to it and remove them locally again (so that the
#                                    tests do a real pull by digest); prints only
#                                      export GP4U_TEST_REGISTRY=127.0.0.1:PORT
#                                      export GP4U_TEST_IMAGE=127.0.0.1:PORT/gp4u/busybox
#                                      export GP4U_TEST_IMAGE_DIGEST=sha256:...
#                                      export GP4U_TEST_OTHER_DIGEST=sha256:...
#                                      export GP4U_TEST_REGISTRY_DIR=/tmp/gp4u-registry.XXX
#                                    on stdout, so that eval "$(scripts/test-images.sh start)"
#                                    works by hand
#                                    With GP4U_TEST_PYTORCH=1 it also builds (or reuses) the
#                                    PyTorch image and pushes it there (scripts/pytorch-image.sh
#                                    push), and prints two more lines after those:
#                                      export GP4U_TEST_PYTORCH_IMAGE=127.0.0.1:PORT/gp4u/pytorch
#                                      export GP4U_TEST_PYTORCH_DIGEST=sha256:...
#   scripts/test-images.sh stop [DIR]  stop that registry, delete DIR (default:
#                                    $GP4U_TEST_REGISTRY_DIR), remove the local images pulled
#                                    from it and the leftover job containers (label gp4u.job)
#                                    that run them
#   scripts/test-images.sh status    exit 0 if Docker is usable (`docker info` works), else 1
#
# The images: GP4U_TEST_IMAGE@GP4U_TEST_IMAGE_DIGEST (tag :test) is a minimal rootfs with a
# static busybox (/bin/busybox and a symlink per applet, PATH=/bin, CMD ["/bin/sh"]), empty
# /tmp /input /output /proc /sys /dev, and /etc/passwd, /etc/group with root and nobody
# (uid/gid 65534). GP4U_TEST_OTHER_DIGEST (tag :other) is the same plus /etc/gp4u-other: a
# digest that exists in the registry but belongs to another image.
#
# The registry is Distribution 2.8 (Debian package docker-registry), run from our own config:
# no auth, listening on 127.0.0.1 only (never any other address), on a free port from 5055
# upward, storage and log (registry.log) in a fresh temporary directory. Docker treats
# 127.0.0.0/8 registries as insecure, so plain HTTP works without daemon configuration.
# Missing packages (docker-registry, busybox-static) are installed with apt-get (as root, or
# through sudo); the package's own registry service is never started.
#
# The PyTorch image (only with GP4U_TEST_PYTORCH=1): Debian's python3-torch (CPU) and
# workloads/pytorch/train.py, CMD ["python3","/opt/gp4u/train.py"]; see
# scripts/pytorch-image.sh. Its ~1 GB rootfs is built once (minutes) and cached outside the
# checkout; each start pushes it to the fresh registry (tens of seconds). Off by default, so
# that a plain test run stays quick; CI is meant to set it.
#
# Environment (all optional): GP4U_TEST_REGISTRY_PORT (first port to try, 5055),
# GP4U_TEST_REGISTRY_START_TIMEOUT (seconds, 30), GP4U_TEST_BUSYBOX (a static busybox binary
# to use instead of the packaged one), GP4U_TEST_PYTORCH (1: also the PyTorch image; 0 or
# unset: not), GP4U_IMAGE_CACHE (where the PyTorch rootfs is cached, /var/cache/gp4u-images).
# Diagnostics go to stderr; stdout carries only the export lines.
set -euo pipefail

readonly MARKER=.gp4u-test-registry
readonly HOST=127.0.0.1
readonly REPO_PATH=gp4u/busybox
readonly REGISTRY_BIN=/usr/bin/docker-registry
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPTS
# Applets the tests rely on; start fails if busybox lacks one.
readonly REQUIRED_APPLETS=(sh cat echo sleep yes dd head ls mkdir rm touch grep wc id env nc
  true false kill ps seq md5sum sha256sum tar gzip)

log() { printf 'test-images: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

docker_usable() { timeout 60 docker info >/dev/null 2>&1; }

# --- packages ----------------------------------------------------------------------------

# A statically linked busybox: $GP4U_TEST_BUSYBOX, else /bin/busybox when static.
find_busybox() {
  local b
  for b in "${GP4U_TEST_BUSYBOX:-}" /bin/busybox /usr/bin/busybox; do
    [[ -n "$b" && -x "$b" ]] || continue
    if is_static "$b"; then
      printf '%s\n' "$b"
      return 0
    fi
    if [[ -n "${GP4U_TEST_BUSYBOX:-}" && "$b" == "$GP4U_TEST_BUSYBOX" ]]; then
      die "GP4U_TEST_BUSYBOX=$GP4U_TEST_BUSYBOX is not statically linked"
    fi
  done
  return 1
}

is_static() {
  local out
  command -v ldd >/dev/null 2>&1 || return 1
  out="$(LC_ALL=C ldd "$1" 2>&1 || true)"
  [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]]
}

install_packages() {
  local pkgs=() sudo=() policy_rc=/usr/sbin/policy-rc.d added_policy=0 apt_log
  [[ -x "$REGISTRY_BIN" ]] || pkgs+=(docker-registry)
  find_busybox >/dev/null || pkgs+=(busybox-static)
  ((${#pkgs[@]})) || return 0

  log "installing the Debian package(s) ${pkgs[*]} (apt-get, quietly)"
  command -v apt-get >/dev/null 2>&1 ||
    die "no apt-get: install ${pkgs[*]} (a Distribution 2.x registry at $REGISTRY_BIN" \
      "and a static busybox) yourself"
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install ${pkgs[*]}"
    sudo=(sudo)
  fi
  # Keep the docker-registry package's scripts from starting its own service (which would
  # listen on all addresses): invoke-rc.d and deb-systemd-invoke both honour policy-rc.d.
  if [[ ! -e $policy_rc ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy_rc" >/dev/null
    "${sudo[@]}" chmod 755 "$policy_rc"
    added_policy=1
  fi
  apt_log="$(mktemp)"
  if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends "${pkgs[@]}"; } >"$apt_log" 2>&1; then
    tail -n 40 "$apt_log" >&2 || true
    rm -f "$apt_log"
    if ((added_policy)); then "${sudo[@]}" rm -f "$policy_rc"; fi
    die "apt-get could not install ${pkgs[*]} (see above)"
  fi
  if ((added_policy)); then "${sudo[@]}" rm -f "$policy_rc"; fi
  grep -E '^Setting up ' "$apt_log" | sed 's/^/test-images: /' >&2 || true
  rm -f "$apt_log"
  # Under systemd, make sure the packaged service is neither running nor enabled.
  if [[ " ${pkgs[*]} " == *" docker-registry "* && -d /run/systemd/system ]] &&
    command -v systemctl >/dev/null 2>&1; then
    "${sudo[@]}" systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
  fi
  [[ -x "$REGISTRY_BIN" ]] || die "docker-registry installed, but no $REGISTRY_BIN"
  find_busybox >/dev/null || die "busybox-static installed, but no static /bin/busybox"
}

# --- registry ----------------------------------------------------------------------------

port_in_use() {
  local port="$1"
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Htln "sport = :$port" 2>/dev/null)" ]] && return 0
  fi
  # Nothing answering on loopback, as far as we can see; a race is caught by the bind retry.
  timeout 1 bash -c "exec 3<>/dev/tcp/$HOST/$port" 2>/dev/null && return 0
  return 1
}

next_free_port() {
  local port="$1" last=$(($1 + 200))
  while ((port <= last)); do
    if ! port_in_use "$port"; then
      echo "$port"
      return 0
    fi
    port=$((port + 1))
  done
  return 1
}

write_config() {
  local dir="$1" port="$2" secret
  secret="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  cat >"$dir/config.yml" <<EOF
# gp4u throwaway test registry: no auth, loopback only
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: $HOST:$port
  secret: $secret
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
EOF
}

registry_pid_ok() {
  # The pid in DIR/registry.pid, if it is still our registry (guards against pid reuse).
  local dir="$1" pid
  [[ -f "$dir/registry.pid" ]] || return 1
  pid="$(head -n 1 "$dir/registry.pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/config.yml" || return 1
  printf '%s\n' "$pid"
}

stop_registry() {
  local dir="$1" pid i
  pid="$(registry_pid_ok "$dir")" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "registry $pid still running after 5s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
}

# Start the registry in DIR on a free port; prints the port.
start_registry() {
  local dir="$1" port attempt pid deadline timeout_s
  timeout_s="${GP4U_TEST_REGISTRY_START_TIMEOUT:-30}"
  port="${GP4U_TEST_REGISTRY_PORT:-5055}"
  mkdir -p "$dir/storage"
  for attempt in 1 2 3 4 5; do
    port="$(next_free_port "$port")" || die "no free port from ${GP4U_TEST_REGISTRY_PORT:-5055} upward"
    log "starting the registry on $HOST:$port (attempt $attempt)"
    write_config "$dir" "$port"
    echo "$port" >"$dir/port"
    : >"$dir/registry.log"
    # setsid: its own session, so that a ^C to the test run does not kill it before cleanup.
    setsid "$REGISTRY_BIN" serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/registry.pid"
    deadline=$((SECONDS + timeout_s))
    while :; do
      if curl -sf --noproxy '*' --max-time 2 -o /dev/null "http://$HOST:$port/v2/"; then
        printf '%s\n' "$port"
        return 0
      fi
      if ! kill -0 "$pid" 2>/dev/null; then
        break
      fi
      if ((SECONDS >= deadline)); then
        log "registry log tail ($dir/registry.log):"
        tail -n 40 "$dir/registry.log" >&2 || true
        die "registry on $HOST:$port not answering /v2/ after ${timeout_s}s"
      fi
      sleep 0.1
    done
    wait "$pid" 2>/dev/null || true
    if grep -q 'address already in use' "$dir/registry.log"; then
      log "port $port was taken meanwhile; trying the next one"
      port=$((port + 1))
      continue
    fi
    log "registry log tail ($dir/registry.log):"
    tail -n 40 "$dir/registry.log" >&2 || true
    die "the registry exited at startup"
  done
  die "could not find a port for the registry after 5 attempts"
}

# --- images ------------------------------------------------------------------------------

build_rootfs() {
  local root="$1" busybox="$2" applet missing=()
  mkdir -p "$root"/{bin,etc,tmp,input,output,proc,sys,dev}
  chmod 755 "$root" "$root"/{bin,etc,input,output,proc,sys,dev}
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  chmod 755 "$root/bin/busybox"
  # One symlink per applet, all in /bin (PATH=/bin in the image).
  while IFS= read -r applet; do
    [[ "$applet" =~ ^[A-Za-z0-9_.+-]+$ && "$applet" != busybox ]] || continue
    ln -sf busybox "$root/bin/$applet"
  done < <("$busybox" --list)
  for applet in "${REQUIRED_APPLETS[@]}"; do
    [[ -L "$root/bin/$applet" ]] || missing+=("$applet")
  done
  ((${#missing[@]} == 0)) || die "$busybox lacks the applet(s) ${missing[*]}"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
    'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$root/etc/group"
  chmod 644 "$root/etc/passwd" "$root/etc/group"
}

make_tar() {
  local root="$1" out="$2"
  tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$root" -cf "$out" .
}

# Import TARBALL as REF, push it, print the digest the registry assigned.
import_push() {
  local tarball="$1" ref="$2" dir="$3" push_log digest="" d
  push_log="$dir/push.log"
  docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' "$tarball" "$ref" \
    >/dev/null || die "docker import of $ref failed"
  if ! docker push "$ref" >"$push_log" 2>&1; then
    tail -n 20 "$push_log" >&2 || true
    log "registry errors ($dir/registry.log):"
    grep -E 'level=(error|fatal|panic)' "$dir/registry.log" | tail -n 10 >&2 || true
    die "docker push $ref failed"
  fi
  while IFS= read -r d; do
    if [[ "$d" == "${ref%:*}@sha256:"* ]]; then
      digest="${d#*@}"
      break
    fi
  done < <(docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$ref")
  if [[ -z "$digest" ]]; then
    digest="$(grep -oE 'digest: sha256:[0-9a-f]{64}' "$push_log" | head -n 1 | cut -d' ' -f2)"
  fi
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || die "no digest for $ref after the push"
  printf '%s\n' "$digest"
}

# The registry must serve the manifest under exactly that digest.
check_manifest() {
  local registry="$1" digest="$2" got
  got="$(curl -sf --noproxy '*' --max-time 10 -o /dev/null -D - \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$registry/v2/$REPO_PATH/manifests/$digest" |
    tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p')" ||
    die "the registry does not serve manifest $digest"
  [[ "$got" == "$digest" ]] || die "the registry serves $digest as '$got'"
}

# Remove a local image by reference, with every tag and digest reference it has, and make
# sure it is gone (so that the tests pull it).
remove_local() {
  local ref="$1" id
  id="$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null)" || return 0
  docker rmi -f "$id" >/dev/null 2>&1 || true
  if docker image inspect "$id" >/dev/null 2>&1; then
    die "could not remove the local image $ref ($id)"
  fi
}

# Local images from 127.0.0.1:PORT/ (any tag, or digest only): their ids, one a line.
registry_image_ids() {
  local prefix="$1"
  docker images --digests --no-trunc --format '{{.Repository}} {{.ID}}' 2>/dev/null |
    awk -v p="$prefix" 'index($1, p) == 1 { print $2 }' | sort -u
}

# Job containers (label gp4u.job) whose image comes from this registry.
job_containers() {
  local prefix="$1" ids_re="$2"
  docker ps -a --no-trunc --filter label=gp4u.job --format '{{.ID}} {{.Image}}' 2>/dev/null |
    while read -r cid image; do
      if [[ "$image" == "$prefix"* ]] ||
        { [[ -n "$ids_re" ]] && grep -qE "^(sha256:)?($ids_re)" <<<"$image"; }; then
        printf '%s\n' "$cid"
      fi
    done
}

cleanup_docker() {
  local port="$1" prefix ids ids_re="" containers
  prefix="$HOST:$port/"
  ids="$(registry_image_ids "$prefix")"
  if [[ -n "$ids" ]]; then
    ids_re="$(cut -c1-12 <<<"${ids//sha256:/}" | paste -sd'|')"
  fi
  containers="$(job_containers "$prefix" "$ids_re")"
  if [[ -n "$containers" ]]; then
    log "removing $(wc -l <<<"$containers") leftover job container(s)"
    # shellcheck disable=SC2086  # one id a word
    docker rm -f $containers >/dev/null 2>&1 || log "warning: could not remove every container"
  fi
  if [[ -n "$ids" ]]; then
    log "removing $(wc -l <<<"$ids") local image(s) from $prefix"
    # shellcheck disable=SC2086
    docker rmi -f $ids >/dev/null 2>&1 || log "warning: could not remove every image"
  fi
}

# --- commands ----------------------------------------------------------------------------

S_DIR='' S_PORT=''
# shellcheck disable=SC2317  # invoked through the EXIT trap
start_failed() {
  local status=$?
  trap - EXIT
  if [[ -n "$S_DIR" ]]; then
    if [[ -n "$S_PORT" ]]; then cleanup_docker "$S_PORT"; fi
    stop_registry "$S_DIR"
    rm -rf -- "$S_DIR"
  fi
  exit "$status"
}

cmd_start() {
  local t0=$SECONDS dir port registry image busybox digest other_digest base pytorch_lines=''
  case "${GP4U_TEST_PYTORCH:-0}" in
    0 | 1) ;;
    *) die "GP4U_TEST_PYTORCH must be 1 (also the PyTorch image) or 0, not '$GP4U_TEST_PYTORCH'" ;;
  esac
  command -v docker >/dev/null 2>&1 || die "no docker command"
  docker_usable || die "Docker is not usable (docker info fails); see: $0 status"
  command -v curl >/dev/null 2>&1 || die "no curl"
  install_packages
  busybox="$(find_busybox)" || die "no static busybox"

  base="${TMPDIR:-/tmp}"
  dir="$(mktemp -d "$base/gp4u-registry.XXXXXXXX")"
  : >"$dir/$MARKER"
  S_DIR="$dir"
  trap start_failed EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP

  port="$(start_registry "$dir")"
  S_PORT="$port"
  registry="$HOST:$port"
  image="$registry/$REPO_PATH"
  log "registry up on $registry ($((SECONDS - t0))s); building the images"

  build_rootfs "$dir/rootfs" "$busybox"
  make_tar "$dir/rootfs" "$dir/test.tar"
  echo "gp4u test image: other" >"$dir/rootfs/etc/gp4u-other"
  chmod 644 "$dir/rootfs/etc/gp4u-other"
  make_tar "$dir/rootfs" "$dir/other.tar"
  rm -rf -- "$dir/rootfs"

  digest="$(import_push "$dir/test.tar" "$image:test" "$dir")"
  other_digest="$(import_push "$dir/other.tar" "$image:other" "$dir")"
  [[ "$digest" != "$other_digest" ]] || die "both test images got the digest $digest"
  check_manifest "$registry" "$digest"
  check_manifest "$registry" "$other_digest"
  remove_local "$image:test"
  remove_local "$image:other"
  rm -f -- "$dir/test.tar" "$dir/other.tar" "$dir/push.log"

  if [[ "${GP4U_TEST_PYTORCH:-0}" == 1 ]]; then
    log "GP4U_TEST_PYTORCH=1: the PyTorch image too (scripts/pytorch-image.sh push $registry)"
    pytorch_lines="$("$SCRIPTS/pytorch-image.sh" push "$registry")" ||
      die "the PyTorch image could not be built or pushed (see above)"
    if ! grep -qE '^export GP4U_TEST_PYTORCH_IMAGE=' <<<"$pytorch_lines" ||
      ! grep -qE '^export GP4U_TEST_PYTORCH_DIGEST=sha256:[0-9a-f]{64}$' <<<"$pytorch_lines"; then
      die "scripts/pytorch-image.sh push printed no image and digest: $pytorch_lines"
    fi
  fi

  trap - EXIT INT TERM HUP
  log "ready in $((SECONDS - t0))s: $image@$digest (other: $other_digest)" \
    "(stop with: $0 stop $dir)"
  printf 'export GP4U_TEST_REGISTRY=%q\n' "$registry"
  printf 'export GP4U_TEST_IMAGE=%q\n' "$image"
  printf 'export GP4U_TEST_IMAGE_DIGEST=%q\n' "$digest"
  printf 'export GP4U_TEST_OTHER_DIGEST=%q\n' "$other_digest"
  printf 'export GP4U_TEST_REGISTRY_DIR=%q\n' "$dir"
  if [[ -n "$pytorch_lines" ]]; then printf '%s\n' "$pytorch_lines"; fi
}

cmd_stop() {
  local dir="${1:-${GP4U_TEST_REGISTRY_DIR:-}}" port=""
  [[ -n "$dir" ]] || die "usage: $0 stop DIR (or set GP4U_TEST_REGISTRY_DIR)"
  if [[ ! -e "$dir" ]]; then
    log "$dir is already gone"
    return 0
  fi
  # Never touch a directory this script did not create.
  [[ -f "$dir/$MARKER" ]] || die "$dir is not a test registry directory (no $MARKER)"
  if [[ -f "$dir/port" ]]; then
    port="$(head -n 1 "$dir/port")"
    [[ "$port" =~ ^[0-9]+$ ]] || port=""
  fi
  if [[ -n "$port" ]] && command -v docker >/dev/null 2>&1 && docker_usable; then
    cleanup_docker "$port"
  fi
  stop_registry "$dir"
  rm -rf -- "$dir"
  log "stopped the registry${port:+ on $HOST:$port} and removed $dir"
}

cmd_status() {
  if ! command -v docker >/dev/null 2>&1; then
    echo "test-images: Docker is NOT usable: no docker command" >&2
    return 1
  fi
  local err version
  if ! err="$(timeout 60 docker info 2>&1 >/dev/null)"; then
    echo "test-images: Docker is NOT usable: docker info fails: $(tail -n 1 <<<"$err")" >&2
    return 1
  fi
  version="$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"
  echo "test-images: Docker is usable (server $version)" >&2
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop "${2:-}" ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 start | stop [DIR] | status" >&2
    exit 2
    ;;
esac
