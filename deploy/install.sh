#!/usr/bin/env bash
# Install (or remove) the edge-anomaly daemon as a hardened systemd service.
#
# Idempotent: every file is compared with what is already installed and only written when its content or
# mode differs ("unchanged ..." otherwise), so running it twice changes nothing and restarts nothing.
# Run `deploy/install.sh --help` for the options; deploy/README.md walks through a whole installation.
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SERVICE=edge-anomaly
SERVICE_USER=edge-anomaly
DEFAULT_PREFIX=/opt/edge-anomaly

# Fixed locations; the unit (StateDirectory=, CacheDirectory=, ConfigurationDirectory=) relies on them.
ETC_DIR=/etc/edge-anomaly
CONFIG_PATH=$ETC_DIR/config.toml
STATE_DIR=/var/lib/edge-anomaly
BUNDLE_DIR=$STATE_DIR/bundle
CACHE_DIR=/var/cache/edge-anomaly
UNIT_DIR=/etc/systemd/system
UNIT_PATH=$UNIT_DIR/$SERVICE.service
DROPIN_DIR=$UNIT_PATH.d
TENSORRT_DROPIN=$DROPIN_DIR/10-tensorrt.conf
JETSON_DROPIN=$DROPIN_DIR/20-jetson.conf

BUNDLE_SRC=""
CONFIG_SRC=""
FORCE_CONFIG=0
PREFIX=$DEFAULT_PREFIX
ROOT=""
DRY_RUN=0
SYSTEM_PYTHON=0
PYTHON=""
TENSORRT=0
JETSON=0
PACKAGE=""
EXTRAS=""
PIP_ARGS=""
SKIP_VENV=0
ENABLE=0
UNINSTALL=0
PURGE=0
CHANGED=0
TMP_DIR=""

usage() {
    cat <<EOF
Usage: install.sh [options]            install or update the service
       install.sh --uninstall [--purge] remove it

Install:
  --bundle DIR        model bundle (manifest.json + model.*.onnx) to copy to $BUNDLE_DIR
  --config FILE       config to install as $CONFIG_PATH (root:$SERVICE_USER 0640); an existing config is
                      kept unless --force-config. Without --config the first install copies
                      config.example.toml, which you must edit before starting.
  --force-config      replace an existing $CONFIG_PATH
  --prefix DIR        where the venv and docs go (default $DEFAULT_PREFIX)
  --wheel PATH        wheel to pip install into the venv
  --source PATH       source tree to pip install into the venv (default: the checkout holding this script)
  --extras LIST       extras to install with it, e.g. tensorrt,metrics
  --pip-args ARGS     extra pip arguments/requirements, e.g. "--no-index --find-links /media/usb/wheels"
  --python PATH       interpreter for the venv (default python3; /usr/bin/python3 with --system-python)
  --system-python     make the venv with --system-site-packages so JetPack's tensorrt and cv2 are visible
  --skip-venv         do not create the venv or pip install (the venv is managed elsewhere; used by tests)
  --tensorrt          add the GPU drop-in (MemoryDenyWriteExecute=no for the CUDA JIT) and build the
                      TensorRT engine now with edge-export --build-engine, as the service user
  --jetson            add the Jetson drop-in (nvmap/nvhost device nodes, Argus camera socket)
  --enable            enable and start the service (systemctl enable --now)

Remove:
  --uninstall         stop and disable the service, remove the unit, drop-ins and $DEFAULT_PREFIX;
                      keeps $ETC_DIR, $STATE_DIR (bundle, engines) and the user
  --purge             with --uninstall: also remove config, state, cache and the $SERVICE_USER user

Safety:
  --dry-run           print every action, change nothing
  --root DIR          install under a scratch root (every path is prefixed with DIR); commands that act on
                      the running system (useradd, chown, systemctl, engine build) are printed, not run
  -h, --help          this text
EOF
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

need_value() {
    [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --bundle) need_value "$@"; BUNDLE_SRC=$2; shift 2 ;;
            --config) need_value "$@"; CONFIG_SRC=$2; shift 2 ;;
            --force-config) FORCE_CONFIG=1; shift ;;
            --prefix) need_value "$@"; PREFIX=${2%/}; shift 2 ;;
            --wheel | --source) need_value "$@"; PACKAGE=$2; shift 2 ;;
            --extras) need_value "$@"; EXTRAS=$2; shift 2 ;;
            --pip-args) need_value "$@"; PIP_ARGS=$2; shift 2 ;;
            --python) need_value "$@"; PYTHON=$2; shift 2 ;;
            --system-python) SYSTEM_PYTHON=1; shift ;;
            --skip-venv) SKIP_VENV=1; shift ;;
            --tensorrt) TENSORRT=1; shift ;;
            --jetson) JETSON=1; shift ;;
            --enable) ENABLE=1; shift ;;
            --uninstall) UNINSTALL=1; shift ;;
            --purge) PURGE=1; shift ;;
            --dry-run) DRY_RUN=1; shift ;;
            --root) need_value "$@"; ROOT=${2%/}; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option '$1' (see --help)" ;;
        esac
    done
    if [[ -n $ROOT ]]; then
        [[ -d $ROOT ]] || die "--root $ROOT is not a directory; create it first"
        ROOT=$(cd "$ROOT" && pwd)
    fi
    if [[ -z $PYTHON ]]; then
        if ((SYSTEM_PYTHON)); then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
    fi
    ((PURGE == 0 || UNINSTALL == 1)) || die "--purge only goes with --uninstall"
    if ((DRY_RUN == 0)) && [[ -z $ROOT ]] && [[ $(id -u) -ne 0 ]]; then
        die "installing into the system needs root: run with sudo, or try --dry-run / --root DIR first"
    fi
}

# ---- primitives: every change goes through these, so --dry-run and --root cover all of them ----------

# The on-disk path for a system path (scratch root prefixed).
p() { printf '%s%s' "$ROOT" "$1"; }

# A command that acts on the running system: run it, or only print it under --dry-run / --root.
sys_run() {
    local quoted
    quoted=$(printf '%q ' "$@")
    if ((DRY_RUN)); then
        echo "would run: ${quoted% }"
    elif [[ -n $ROOT ]]; then
        echo "skipped under --root: ${quoted% }"
    else
        echo "run: ${quoted% }"
        "$@"
    fi
}

# Like sys_run, for clean-up steps whose failure must not stop the rest (a unit that is already gone).
sys_run_or_warn() {
    if ! sys_run "$@"; then
        echo "warning: '$*' failed (see above); continuing"
    fi
}

# A command that only writes files under the (possibly scratch) root: run unless --dry-run.
file_run() {
    local quoted
    quoted=$(printf '%q ' "$@")
    if ((DRY_RUN)); then
        echo "would run: ${quoted% }"
    else
        echo "run: ${quoted% }"
        "$@"
    fi
}

mode_of() { stat -c %a "$1"; }

# Octal mode without leading zeros, as stat prints it.
norm_mode() { printf '%o' "$((8#$1))"; }

# Ownership needs the real users, so under --root it is only stated in the header (see main).
set_owner() {
    local owner=$1 dest=$2 path
    path=$(p "$dest")
    [[ -z $ROOT ]] || return 0
    # A path a dry run would create has its owner in the "would create/install" line already.
    [[ -e $path ]] || ((DRY_RUN == 0)) || return 0
    if [[ -e $path && $(stat -c %U:%G "$path") == "$owner" ]]; then
        return 0
    fi
    sys_run chown "$owner" "$path"
    CHANGED=$((CHANGED + 1))
}

put_dir() {
    local dest=$1 mode=$2 owner=$3 path
    path=$(p "$dest")
    if [[ -d $path ]]; then
        if [[ $(mode_of "$path") == "$(norm_mode "$mode")" ]]; then
            echo "unchanged $dest/"
        elif ((DRY_RUN)); then
            echo "would chmod $mode $dest/"
            CHANGED=$((CHANGED + 1))
        else
            chmod "$mode" "$path"
            echo "chmod $mode $dest/"
            CHANGED=$((CHANGED + 1))
        fi
    elif ((DRY_RUN)); then
        echo "would create $dest/ (mode $mode, owner $owner)"
        CHANGED=$((CHANGED + 1))
    else
        install -d -m "$mode" "$path"
        echo "created $dest/ (mode $mode, owner $owner)"
        CHANGED=$((CHANGED + 1))
    fi
    set_owner "$owner" "$dest"
}

# Install one file when its content or mode differs from what is there.
put_file() {
    local src=$1 dest=$2 mode=$3 owner=$4 path
    path=$(p "$dest")
    if [[ -f $path ]] && cmp -s "$src" "$path" && [[ $(mode_of "$path") == "$(norm_mode "$mode")" ]]; then
        echo "unchanged $dest"
    elif ((DRY_RUN)); then
        echo "would install $dest (mode $mode, owner $owner)"
        CHANGED=$((CHANGED + 1))
    else
        install -m "$mode" "$src" "$path"
        echo "installed $dest (mode $mode, owner $owner)"
        CHANGED=$((CHANGED + 1))
    fi
    set_owner "$owner" "$dest"
}

remove_path() {
    local dest=$1 path
    path=$(p "$dest")
    [[ -e $path || -L $path ]] || return 0
    if ((DRY_RUN)); then
        echo "would remove $dest"
    else
        rm -rf -- "$path"
        echo "removed $dest"
    fi
}

# A file generated by this script (unit, drop-ins): written to a temp file, then put_file'd.
put_text() {
    local dest=$1 mode=$2 owner=$3 text=$4 tmp
    tmp=$(mktemp "$TMP_DIR/gen.XXXXXX")
    printf '%s' "$text" >"$tmp"
    put_file "$tmp" "$dest" "$mode" "$owner"
}

# ---- install steps ------------------------------------------------------------------------------------

ensure_user() {
    local group
    for group in video render; do
        if [[ -z $ROOT ]] && getent group "$group" >/dev/null; then continue; fi
        # SupplementaryGroups= fails the start when a group is missing; render is absent on minimal images.
        sys_run groupadd --system "$group"
    done
    if [[ -z $ROOT ]] && getent passwd "$SERVICE_USER" >/dev/null; then
        echo "unchanged user $SERVICE_USER"
        return 0
    fi
    sys_run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "edge-anomaly daemon" "$SERVICE_USER"
}

check_bundle_source() {
    [[ -d $BUNDLE_SRC ]] || die "--bundle $BUNDLE_SRC is not a directory; pass the folder edge-export wrote"
    [[ -f $BUNDLE_SRC/manifest.json ]] ||
        die "--bundle $BUNDLE_SRC has no manifest.json; pass the folder edge-export wrote (it holds manifest.json and model.*.onnx)"
    compgen -G "$BUNDLE_SRC/model.*.onnx" >/dev/null ||
        die "--bundle $BUNDLE_SRC has no model.*.onnx next to manifest.json; the export did not finish"
}

# Copy the bundle file by file (engines/ excluded: engines are built on the device) and remove files the
# new bundle no longer has. The service reads it (root:edge-anomaly 0640) and may write only engines/.
install_bundle() {
    local rel dest_root=$BUNDLE_DIR
    put_dir "$dest_root" 0750 "root:$SERVICE_USER"
    while IFS= read -r -d '' rel; do
        rel=${rel#./}
        put_dir "$dest_root/$rel" 0750 "root:$SERVICE_USER"
    done < <(cd "$BUNDLE_SRC" && find . -mindepth 1 -type d -not -path './engines' -not -path './engines/*' -print0 | sort -z)
    while IFS= read -r -d '' rel; do
        rel=${rel#./}
        put_file "$BUNDLE_SRC/$rel" "$dest_root/$rel" 0640 "root:$SERVICE_USER"
    done < <(cd "$BUNDLE_SRC" && find . -type f -not -path './engines/*' -print0 | sort -z)
    if [[ -d $BUNDLE_SRC/engines ]]; then
        echo "skipped $BUNDLE_SRC/engines: engines are specific to one GPU and TensorRT version; they are built on this device"
    fi
    remove_stale_bundle_files
    put_dir "$dest_root/engines" 0750 "$SERVICE_USER:$SERVICE_USER"
}

remove_stale_bundle_files() {
    local installed rel
    installed=$(p "$BUNDLE_DIR")
    [[ -d $installed ]] || return 0
    while IFS= read -r -d '' rel; do
        rel=${rel#./}
        if [[ ! -e $BUNDLE_SRC/$rel ]]; then
            remove_path "$BUNDLE_DIR/$rel"
            CHANGED=$((CHANGED + 1))
        fi
    done < <(cd "$installed" && find . -mindepth 1 -not -path './engines' -not -path './engines/*' -print0 | sort -rz)
}

install_config() {
    local src=$CONFIG_SRC path
    path=$(p "$CONFIG_PATH")
    if [[ -z $src ]]; then
        if [[ -f $path ]]; then
            echo "unchanged $CONFIG_PATH (kept; pass --config FILE --force-config to replace it)"
            set_owner "root:$SERVICE_USER" "$CONFIG_PATH"
            return 0
        fi
        src=$SCRIPT_DIR/config.example.toml
        echo "note: no --config given; installing the example config. Edit $CONFIG_PATH before starting the service."
    fi
    [[ -f $src ]] || die "config $src does not exist"
    if [[ -f $path ]] && ! cmp -s "$src" "$path" && ((FORCE_CONFIG == 0)); then
        echo "kept $CONFIG_PATH: it differs from $src (local edits?); pass --force-config to replace it"
        set_owner "root:$SERVICE_USER" "$CONFIG_PATH"
        return 0
    fi
    put_file "$src" "$CONFIG_PATH" 0640 "root:$SERVICE_USER"
}

# The unit names /opt/edge-anomaly; rewrite it for another --prefix.
install_unit() {
    local text
    text=$(sed "s#$DEFAULT_PREFIX#$PREFIX#g" "$SCRIPT_DIR/$SERVICE.service")
    put_dir "$UNIT_DIR" 0755 root:root
    put_text "$UNIT_PATH" 0644 root:root "$text"$'\n'
}

tensorrt_dropin_text() {
    cat <<'EOF'
# Written by install.sh --tensorrt. CUDA (TensorRT, onnxruntime's CUDA/TensorRT providers) JIT-compiles PTX
# into memory that is written and then executed, which MemoryDenyWriteExecute=yes forbids.
[Service]
MemoryDenyWriteExecute=no
EOF
}

jetson_dropin_text() {
    cat <<'EOF'
# Written by install.sh --jetson. Jetson's integrated GPU, VIC (nvvidconv) and NVMM buffers are reached through
# these nodes; a node missing on this module is skipped with a log line. See JETSON.md to add one.
[Service]
DeviceAllow=/dev/nvmap rw
DeviceAllow=/dev/nvhost-ctrl rw
DeviceAllow=/dev/nvhost-ctrl-gpu rw
DeviceAllow=/dev/nvhost-gpu rw
DeviceAllow=/dev/nvhost-as-gpu rw
DeviceAllow=/dev/nvhost-tsg-gpu rw
DeviceAllow=/dev/nvhost-prof-gpu rw
DeviceAllow=/dev/nvhost-ctxsw-gpu rw
DeviceAllow=/dev/nvhost-sched-gpu rw
DeviceAllow=/dev/nvhost-nvsched-gpu rw
DeviceAllow=/dev/nvhost-power-gpu rw
DeviceAllow=/dev/nvhost-vic rw
DeviceAllow=/dev/nvhost-nvdec rw
DeviceAllow=/dev/nvhost-nvenc rw
DeviceAllow=/dev/nvhost-nvjpg rw
DeviceAllow=char-nvhost* rw
DeviceAllow=char-nvgpu* rw
# CSI cameras: nvarguscamerasrc talks to nvargus-daemon over /tmp/argus_socket, hidden by PrivateTmp=yes.
BindPaths=-/tmp/argus_socket
EOF
}

install_dropins() {
    if ((TENSORRT == 0 && JETSON == 0)); then
        if [[ -d $(p "$DROPIN_DIR") ]]; then echo "kept drop-ins in $DROPIN_DIR (remove a file there to undo it)"; fi
        return 0
    fi
    put_dir "$DROPIN_DIR" 0755 root:root
    if ((TENSORRT)); then put_text "$TENSORRT_DROPIN" 0644 root:root "$(tensorrt_dropin_text)"$'\n'; fi
    if ((JETSON)); then put_text "$JETSON_DROPIN" 0644 root:root "$(jetson_dropin_text)"$'\n'; fi
}

install_docs() {
    local doc
    put_dir "$PREFIX" 0755 root:root
    put_dir "$PREFIX/share" 0755 root:root
    for doc in README.md JETSON.md config.example.toml; do
        if [[ -f $SCRIPT_DIR/$doc ]]; then put_file "$SCRIPT_DIR/$doc" "$PREFIX/share/$doc" 0644 root:root; fi
    done
}

# What pip should install: a wheel, a source tree, or the checkout this script lives in, plus extras.
package_spec() {
    local pkg=$PACKAGE
    if [[ -z $pkg ]]; then
        pkg=$(cd "$SCRIPT_DIR/.." && pwd)
        [[ -f $pkg/pyproject.toml ]] ||
            die "no --wheel or --source given and $pkg is not a source checkout; pass --wheel edge_anomaly-*.whl"
    fi
    [[ -e $pkg ]] || die "package $pkg does not exist"
    if [[ -n $EXTRAS ]]; then pkg="${pkg}[${EXTRAS}]"; fi
    printf '%s' "$pkg"
}

# True when the interpreter the venv is built from already has OpenCV (JetPack's, built with GStreamer).
system_has_cv2() {
    ((SYSTEM_PYTHON)) && "$PYTHON" -c 'import cv2' >/dev/null 2>&1
}

setup_venv() {
    local venv_dir venv spec before after
    if ((SKIP_VENV)); then
        echo "skipped venv and pip install (--skip-venv)"
        return 0
    fi
    venv_dir=$PREFIX/venv
    venv=$(p "$venv_dir")
    spec=$(package_spec)
    if [[ ! -x $venv/bin/python ]]; then
        local args=(-m venv)
        ((SYSTEM_PYTHON)) && args+=(--system-site-packages)
        file_run "$PYTHON" "${args[@]}" "$venv"
        CHANGED=$((CHANGED + 1))
    else
        echo "unchanged $venv_dir (exists)"
    fi
    if system_has_cv2; then
        echo "note: using the system OpenCV (JetPack's, built with GStreamer); opencv-python from PyPI is left out"
    fi
    ((DRY_RUN)) && { echo "would run: $venv/bin/python -m pip install $spec $PIP_ARGS"; return 0; }
    before=$("$venv/bin/python" -m pip freeze --all 2>/dev/null | sha256sum)
    if system_has_cv2; then
        pip_install_without_opencv "$venv/bin/python" "$spec"
    else
        # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
        file_run "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec" $PIP_ARGS
    fi
    after=$("$venv/bin/python" -m pip freeze --all 2>/dev/null | sha256sum)
    if [[ $before != "$after" ]]; then CHANGED=$((CHANGED + 1)); fi
}

# The package's requirements for the chosen extras, minus opencv-python*, one per line (read from the
# installed metadata, so no index is needed to know them).
requirements_without_opencv() {
    "$1" - "$EXTRAS" <<'PY'
import sys
from importlib.metadata import requires

from pip._vendor.packaging.requirements import Requirement

extras = [""] + [e for e in sys.argv[1].split(",") if e]
for line in requires("edge-anomaly") or []:
    req = Requirement(line)
    name = req.name.lower().replace("_", "-")
    if name.startswith("opencv-python") or name == "edge-anomaly":
        continue
    if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
        print(req.name + ("[" + ",".join(sorted(req.extras)) + "]" if req.extras else "") + str(req.specifier))
PY
}

# With JetPack's cv2 visible (--system-site-packages), installing opencv-python-headless would hide it, and
# pip cannot leave one dependency out: install the package alone, then its other requirements.
pip_install_without_opencv() {
    local py=$1 spec=$2 location
    local -a reqs
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
    file_run "$py" -m pip install --quiet --disable-pip-version-check --no-deps "$spec" $PIP_ARGS
    reqs=$(requirements_without_opencv "$py")
    mapfile -t reqs <<<"$reqs"
    [[ -n ${reqs[0]} ]] || reqs=()
    if ((${#reqs[@]})); then
        # shellcheck disable=SC2086
        file_run "$py" -m pip install --quiet --disable-pip-version-check "${reqs[@]}" $PIP_ARGS
    fi
    # A PyPI OpenCV left in the venv by an earlier install; one outside the venv is the system's: leave it.
    location=$("$py" -m pip show opencv-python-headless 2>/dev/null | sed -n 's/^Location: //p')
    if [[ -n $location && $location == "${py%/bin/python}"/* ]]; then
        file_run "$py" -m pip uninstall --quiet --yes opencv-python-headless
    fi
}

# Run a command as the service user, so files it writes (engines) belong to it.
as_service_user() {
    sys_run runuser -u "$SERVICE_USER" -- env HOME="$STATE_DIR" CUDA_CACHE_PATH="$CACHE_DIR/cuda" "$@"
}

build_engine() {
    ((TENSORRT)) || return 0
    if [[ -z $BUNDLE_SRC && ! -f $(p "$BUNDLE_DIR/manifest.json") ]]; then
        echo "note: no bundle installed yet; the engine is built on the first start (or re-run with --bundle)"
        return 0
    fi
    put_dir "$CACHE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
    as_service_user "$PREFIX/venv/bin/edge-export" --build-engine "$BUNDLE_DIR"
}

check_config() {
    if [[ -z $ROOT && $DRY_RUN -eq 0 && ! -x $PREFIX/venv/bin/edge-run ]]; then
        echo "note: $PREFIX/venv/bin/edge-run not found; skipping the config check"
        return 0
    fi
    if ! as_service_user "$PREFIX/venv/bin/edge-run" --config "$CONFIG_PATH" --check-config; then
        die "the config check failed (message above). Fix $CONFIG_PATH and run install.sh again; the service was not (re)started."
    fi
}

activate_service() {
    sys_run systemctl daemon-reload
    if ((ENABLE)); then
        sys_run systemctl enable --now "$SERVICE.service"
    fi
    if ((CHANGED > 0)); then
        # Only restarts a service that is running, so a first install does not start it by surprise.
        sys_run systemctl try-restart "$SERVICE.service"
    fi
}

do_install() {
    [[ -n $BUNDLE_SRC ]] && check_bundle_source
    ensure_user
    install_docs
    setup_venv
    put_dir "$ETC_DIR" 0750 "root:$SERVICE_USER"
    install_config
    put_dir "$STATE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
    [[ -n $BUNDLE_SRC ]] && install_bundle
    install_unit
    install_dropins
    build_engine
    check_config
    activate_service
    if ((DRY_RUN)); then
        echo "dry run done: $CHANGED change(s) planned, none made."
    else
        echo "done: $CHANGED change(s)."
    fi
    if ((ENABLE == 0)); then
        echo "next: edit $CONFIG_PATH if needed, then: systemctl enable --now $SERVICE && journalctl -u $SERVICE -f"
    fi
}

# ---- uninstall ----------------------------------------------------------------------------------------

remove_dropins() {
    local dir
    remove_path "$TENSORRT_DROPIN"
    remove_path "$JETSON_DROPIN"
    dir=$(p "$DROPIN_DIR")
    [[ -d $dir ]] || return 0
    if ((DRY_RUN)); then
        echo "would remove $DROPIN_DIR/ if nothing else is in it"
    elif rmdir "$dir" 2>/dev/null; then
        echo "removed $DROPIN_DIR/"
    else
        echo "kept $DROPIN_DIR/: it holds local overrides (systemctl edit); remove it by hand if unwanted"
    fi
}

do_uninstall() {
    sys_run_or_warn systemctl disable --now "$SERVICE.service"
    remove_path "$UNIT_PATH"
    remove_dropins
    sys_run systemctl daemon-reload
    remove_path "$PREFIX"
    if ((PURGE)); then
        remove_path "$ETC_DIR"
        remove_path "$STATE_DIR"
        remove_path "$CACHE_DIR"
        if [[ -n $ROOT ]] || getent passwd "$SERVICE_USER" >/dev/null; then
            sys_run_or_warn userdel "$SERVICE_USER"
        fi
    else
        echo "kept $ETC_DIR and $STATE_DIR (config, bundle, engines); --uninstall --purge removes them"
    fi
    if ((DRY_RUN)); then echo "dry run done: nothing removed."; else echo "done: $SERVICE uninstalled."; fi
}

main() {
    parse_args "$@"
    ((DRY_RUN)) && echo "dry run: nothing is changed"
    [[ -n $ROOT ]] && echo "scratch root: $ROOT (system commands are printed, not run; owners are not set)"
    TMP_DIR=$(mktemp -d)
    trap 'rm -rf "$TMP_DIR"' EXIT
    if ((UNINSTALL)); then do_uninstall; else do_install; fi
}

main "$@"
