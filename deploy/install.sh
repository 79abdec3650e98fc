#!/usr/bin/env bash
# Install (or remove) the edge-anomaly daemon as a hardened systemd service.
#
# Idempotent: every file is compared with what is already installed and only written when its content or
# mode differs ("unchanged ..." otherwise), so running it twice changes nothing and restarts nothing.
# Run `deploy/install.sh --help` for the options; deploy/README.md walks through a whole installation.
#
# Fail closed (deploy/README.md, "Threat model"):
# - the bundle and every directory above it are root-owned and not writable by the service user, so the
#   service cannot swap its own model in; TensorRT engines go to a separate service-owned directory;
# - no path this script manages may be a symbolic link: it refuses instead of following one as root;
# - every path it creates is recorded in $RECORD; uninstall and purge remove only recorded paths, and a
#   --prefix that is a system directory is refused;
# - operator files it did not create (TLS keys, password files) survive --purge unless named with
#   --purge-also; a config replaced by --force-config is backed up first;
# - Python dependencies come from a pinned, hashed lock file (deploy/requirements*.lock, pip --require-hashes).
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
ENGINE_DIR=$STATE_DIR/engines
CACHE_DIR=/var/cache/edge-anomaly
RECORD=$STATE_DIR/installed-paths
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
ALLOW_UNPINNED=0
PURGE_ALSO=()
MANAGED_ROOTS=()

usage() {
    cat <<EOF
Usage: install.sh [options]            install or update the service
       install.sh --uninstall [--purge] remove it

Install:
  --bundle DIR        model bundle (manifest.json + model.*.onnx) to copy to $BUNDLE_DIR
  --config FILE       config to install as $CONFIG_PATH (root:$SERVICE_USER 0640); an existing config is
                      kept unless --force-config. Without --config the first install copies
                      config.example.toml, which you must edit before starting.
  --force-config      replace an existing $CONFIG_PATH (the old one is kept as config.toml.bak-<time>)
  --prefix DIR        where the venv and docs go (default $DEFAULT_PREFIX; a directory of its own, never a
                      system directory such as /usr)
  --wheel PATH        wheel to pip install into the venv
  --source PATH       source tree to pip install into the venv (default: the checkout holding this script)
  --extras LIST       extras to install with it, e.g. tensorrt,metrics
  --pip-args ARGS     extra pip arguments, e.g. "--no-index --find-links /media/usb/wheels"
  --allow-unpinned    install dependencies without the hashed lock file when none fits this Python
                      (deploy/requirements-py3X.lock or deploy/requirements.lock); not recommended
  --python PATH       interpreter for the venv (default python3; /usr/bin/python3 with --system-python)
  --system-python     make the venv with --system-site-packages so JetPack's tensorrt and cv2 are visible
  --skip-venv         do not create the venv or pip install (the venv is managed elsewhere; used by tests)
  --tensorrt          add the GPU drop-in (MemoryDenyWriteExecute=no for the CUDA JIT) and build the
                      TensorRT engine now with edge-export --build-engine, as the service user
  --jetson            add the Jetson drop-in (nvmap/nvhost device nodes, Argus camera socket)
  --enable            enable and start the service (systemctl enable --now)

Remove:
  --uninstall         stop and disable the service, remove the unit, drop-ins and what install.sh put in
                      the --prefix (venv, docs); keeps $ETC_DIR, $STATE_DIR (bundle, engines) and the user.
                      Only paths recorded in $RECORD as created by install.sh are removed.
  --purge             with --uninstall: also remove the config, bundle, engines and cache install.sh
                      created, and the $SERVICE_USER user. Files it did not create (TLS keys, password
                      files) are kept unless named with --purge-also
  --purge-also PATH   with --purge: also remove this operator file or directory under $ETC_DIR (repeatable)

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
            --allow-unpinned) ALLOW_UNPINNED=1; shift ;;
            --purge-also) need_value "$@"; PURGE_ALSO+=("$2"); shift 2 ;;
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
    ((${#PURGE_ALSO[@]} == 0 || PURGE == 1)) || die "--purge-also only goes with --uninstall --purge"
    check_prefix
    MANAGED_ROOTS=("$ETC_DIR" "$STATE_DIR" "$CACHE_DIR" "$PREFIX" "$DROPIN_DIR" "$UNIT_PATH")
    if ((DRY_RUN == 0)) && [[ -z $ROOT ]] && [[ $(id -u) -ne 0 ]]; then
        die "installing into the system needs root: run with sudo, or try --dry-run / --root DIR first"
    fi
}

# A --prefix of its own: absolute, normalised, at least two levels deep and not a system directory, so an
# uninstall can never be aimed at /usr or /opt themselves.
check_prefix() {
    [[ $PREFIX == /* ]] || die "--prefix $PREFIX must be an absolute path"
    [[ $PREFIX != *//* && /$PREFIX/ != */../* && /$PREFIX/ != */./* ]] ||
        die "--prefix $PREFIX must be a plain path (no '..', '.' or '//')"
    case $PREFIX in
        / | /bin | /boot | /dev | /etc | /home | /lib | /lib32 | /lib64 | /media | /mnt | /opt | /proc | /root | /run | \
            /sbin | /snap | /srv | /sys | /tmp | /usr | /usr/* | /var | /var/lib | /var/cache | /var/log | /etc/*)
            if [[ $PREFIX != /usr/local/* ]]; then
                die "--prefix $PREFIX is a system directory; give a directory of its own, e.g. $DEFAULT_PREFIX"
            fi
            ;;
    esac
    [[ $PREFIX == /*/* ]] || die "--prefix $PREFIX must be at least two levels deep, e.g. $DEFAULT_PREFIX"
}

# Refuse (never follow) a symbolic link anywhere in a path this script manages: as root, following a link
# a less trusted user planted would chmod/chown/overwrite whatever it points at.
refuse_links() {
    local dest=$1 a r
    a=$dest
    while [[ -n $a && $a != / ]]; do
        for r in "${MANAGED_ROOTS[@]}"; do
            if [[ $a == "$r" || $a == "$r"/* ]]; then
                if [[ -L $(p "$a") ]]; then
                    die "$a is a symbolic link; install.sh never follows links in the paths it manages. Check who made it, remove it, and run again."
                fi
                break
            fi
        done
        a=$(dirname "$a")
    done
}

# Remember a path this script created ("F" file, "D" directory: removed only when empty, "T" a tree whose
# contents the service or pip made: removed whole), so uninstall removes exactly those and nothing else.
record() {
    local line="$1 $2" file
    ((DRY_RUN == 0)) || return 0
    file=$(p "$RECORD")
    [[ -d $(dirname "$file") ]] || return 0
    refuse_links "$RECORD"
    if [[ -f $file ]] && grep -qxF -- "$line" "$file"; then return 0; fi
    printf '%s\n' "$line" >>"$file"
    chmod 0644 "$file"
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
    refuse_links "$dest"
    [[ -z $ROOT ]] || return 0
    # A path a dry run would create has its owner in the "would create/install" line already.
    [[ -e $path ]] || ((DRY_RUN == 0)) || return 0
    if [[ -e $path && $(stat -c %U:%G "$path") == "$owner" ]]; then
        return 0
    fi
    sys_run chown -h "$owner" "$path"
    CHANGED=$((CHANGED + 1))
}

put_dir() {
    local dest=$1 mode=$2 owner=$3 kind=${4:-D} path
    path=$(p "$dest")
    refuse_links "$dest"
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
        record "$kind" "$dest"
    fi
    set_owner "$owner" "$dest"
}

# Install one file when its content or mode differs from what is there.
put_file() {
    local src=$1 dest=$2 mode=$3 owner=$4 path existed=0
    path=$(p "$dest")
    refuse_links "$dest"
    [[ -e $path ]] && existed=1
    if [[ -f $path ]] && cmp -s "$src" "$path" && [[ $(mode_of "$path") == "$(norm_mode "$mode")" ]]; then
        echo "unchanged $dest"
    elif ((DRY_RUN)); then
        echo "would install $dest (mode $mode, owner $owner)"
        CHANGED=$((CHANGED + 1))
    else
        install -m "$mode" "$src" "$path"
        echo "installed $dest (mode $mode, owner $owner)"
        CHANGED=$((CHANGED + 1))
        ((existed)) || record F "$dest"
    fi
    set_owner "$owner" "$dest"
}

remove_path() {
    local dest=$1 path
    path=$(p "$dest")
    [[ -e $path || -L $path ]] || return 0
    refuse_links "$(dirname "$dest")"
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
    if [[ -n $(cd "$BUNDLE_SRC" && find . -type l -print -quit) ]]; then
        die "--bundle $BUNDLE_SRC holds symbolic links; the daemon refuses them. Copy the bundle with cp -rL first"
    fi
    [[ -f $BUNDLE_SRC/manifest.json ]] ||
        die "--bundle $BUNDLE_SRC has no manifest.json; pass the folder edge-export wrote (it holds manifest.json and model.*.onnx)"
    compgen -G "$BUNDLE_SRC/model.*.onnx" >/dev/null ||
        die "--bundle $BUNDLE_SRC has no model.*.onnx next to manifest.json; the export did not finish"
}

# Copy the bundle file by file (engines/ excluded: engines are built on the device, into $ENGINE_DIR) and
# remove files the new bundle no longer has. The service only reads it: root:edge-anomaly, 0750/0640, in a
# root-owned $STATE_DIR, so it can neither change nor rename it.
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
}

remove_stale_bundle_files() {
    local installed rel
    installed=$(p "$BUNDLE_DIR")
    [[ -d $installed ]] || return 0
    while IFS= read -r -d '' rel; do
        rel=${rel#./}
        # engines/ inside the bundle is the old, service-writable layout: engines now live in $ENGINE_DIR
        if [[ ! -e $BUNDLE_SRC/$rel || $rel == engines || $rel == engines/* ]]; then
            [[ -e $installed/$rel || -L $installed/$rel ]] || continue # inside a directory removed already
            remove_path "$BUNDLE_DIR/$rel"
            CHANGED=$((CHANGED + 1))
        fi
    done < <(cd "$installed" && find . -mindepth 1 -print0 | sort -rz)
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
    if [[ -f $path ]] && ! cmp -s "$src" "$path"; then
        backup_config
    fi
    put_file "$src" "$CONFIG_PATH" 0640 "root:$SERVICE_USER"
}

# --force-config never loses an operator's edits: the old file is kept beside the new one (same owner and
# mode, so a password in it stays as private as it was). Backups are the operator's: never purged.
backup_config() {
    local backup
    backup="$CONFIG_PATH.bak-$(date -u +%Y%m%dT%H%M%SZ)"
    refuse_links "$backup"
    if ((DRY_RUN)); then
        echo "would back up $CONFIG_PATH to $backup"
        return 0
    fi
    cp -p -- "$(p "$CONFIG_PATH")" "$(p "$backup")"
    echo "backed up $CONFIG_PATH to $backup"
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
[Unit]
# CSI cameras: nvarguscamerasrc needs nvargus-daemon up first (ordering only: harmless where it is absent).
After=nvargus-daemon.service

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
# JetPack 6 (r36) moved the integrated GPU's nodes under /dev/nvgpu/igpu0/; CUDA opens these.
DeviceAllow=/dev/nvgpu/igpu0/ctrl rw
DeviceAllow=/dev/nvgpu/igpu0/as rw
DeviceAllow=/dev/nvgpu/igpu0/channel rw
DeviceAllow=/dev/nvgpu/igpu0/tsg rw
DeviceAllow=/dev/nvgpu/igpu0/ctxsw rw
DeviceAllow=/dev/nvgpu/igpu0/dbg rw
DeviceAllow=/dev/nvgpu/igpu0/nvsched rw
DeviceAllow=/dev/nvgpu/igpu0/power rw
DeviceAllow=/dev/nvgpu/igpu0/prof rw
DeviceAllow=/dev/nvgpu/igpu0/prof-ctx rw
DeviceAllow=/dev/nvgpu/igpu0/prof-dev rw
DeviceAllow=/dev/nvgpu/igpu0/sched rw
# JetPack 6's GPU driver also exposes a DRM render node (/dev/dri/renderD*), which CUDA may open.
DeviceAllow=char-drm rw
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

# The hashed lock for the venv's Python (requirements-py3X.lock), else the generic one; empty only with
# --allow-unpinned. Regenerate them with deploy/lock-requirements.sh.
lock_file() {
    local version candidate
    version=$("$PYTHON" -c 'import sys; print("%d%d" % sys.version_info[:2])' 2>/dev/null || echo "")
    for candidate in "$SCRIPT_DIR/requirements-py$version.lock" "$SCRIPT_DIR/requirements.lock"; do
        if [[ -f $candidate ]] && lock_fits "$candidate" "$version"; then
            printf '%s' "$candidate"
            return 0
        fi
    done
    ((ALLOW_UNPINNED)) ||
        die "no hashed lock file in $SCRIPT_DIR fits Python ${version:-?} with extras '${EXTRAS}'; run deploy/lock-requirements.sh with that Python, or pass --allow-unpinned"
    echo "warning: installing dependencies WITHOUT a hashed lock file (--allow-unpinned)" >&2
}

# A lock records the Python it was made for ("# python: 311") and the extras it holds ("# extras: metrics");
# it fits when the version matches and it holds every extra asked for with --extras.
lock_fits() {
    local made_for held extra
    local -a wanted
    made_for=$(sed -n 's/^# python: \([0-9]*\)$/\1/p' "$1" | head -n 1)
    [[ -z $made_for || $made_for == "$2" ]] || return 1
    held=,$(sed -n 's/^# extras: \(.*\)$/\1/p' "$1" | head -n 1),
    IFS=, read -r -a wanted <<<"$EXTRAS"
    for extra in "${wanted[@]}"; do
        if [[ -n $extra && $held != *",$extra,"* ]]; then
            echo "note: $1 does not hold the '$extra' extra (deploy/lock-requirements.sh PYTHON $EXTRAS makes one that does)" >&2
            return 1
        fi
    done
}

# Dependencies strictly from the lock (pip checks every hash), then the package itself without resolving
# anything else. With JetPack's OpenCV visible, the lock's opencv-python-headless is left out.
pip_install_locked() {
    local py=$1 spec=$2 lock=$3 reqs
    reqs=$lock
    if system_has_cv2; then
        reqs="$TMP_DIR/requirements-without-opencv.lock"
        awk '/^[A-Za-z0-9]/ { skip = ($0 ~ /^opencv-python/) } !skip' "$lock" >"$reqs"
    fi
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
    file_run "$py" -m pip install --quiet --disable-pip-version-check --require-hashes -r "$reqs" $PIP_ARGS
    # shellcheck disable=SC2086
    file_run "$py" -m pip install --quiet --disable-pip-version-check --no-deps "$spec" $PIP_ARGS
}

setup_venv() {
    local venv_dir venv spec before after lock
    if ((SKIP_VENV)); then
        echo "skipped venv and pip install (--skip-venv)"
        return 0
    fi
    venv_dir=$PREFIX/venv
    venv=$(p "$venv_dir")
    spec=$(package_spec)
    refuse_links "$venv_dir"
    if [[ ! -x $venv/bin/python ]]; then
        local args=(-m venv)
        ((SYSTEM_PYTHON)) && args+=(--system-site-packages)
        file_run "$PYTHON" "${args[@]}" "$venv"
        CHANGED=$((CHANGED + 1))
        record T "$venv_dir"
    else
        echo "unchanged $venv_dir (exists)"
    fi
    if system_has_cv2; then
        echo "note: using the system OpenCV (JetPack's, built with GStreamer); opencv-python from PyPI is left out"
    fi
    lock=$(lock_file)
    if ((DRY_RUN)); then
        if [[ -n $lock ]]; then echo "would run: $venv/bin/python -m pip install --require-hashes -r $lock $PIP_ARGS"; fi
        echo "would run: $venv/bin/python -m pip install ${lock:+--no-deps }$spec $PIP_ARGS"
        return 0
    fi
    before=$("$venv/bin/python" -m pip freeze --all 2>/dev/null | sha256sum)
    if [[ -n $lock ]]; then
        pip_install_locked "$venv/bin/python" "$spec" "$lock"
    elif system_has_cv2; then
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
    sys_run runuser -u "$SERVICE_USER" -- env HOME="$CACHE_DIR" CUDA_CACHE_PATH="$CACHE_DIR/cuda" "$@"
}

build_engine() {
    ((TENSORRT)) || return 0
    if [[ -z $BUNDLE_SRC && ! -f $(p "$BUNDLE_DIR/manifest.json") ]]; then
        echo "note: no bundle installed yet; the engine is built on the first start (or re-run with --bundle)"
        return 0
    fi
    as_service_user "$PREFIX/venv/bin/edge-export" --build-engine "$BUNDLE_DIR" --engine-cache-dir "$ENGINE_DIR"
}

# The new bundle is verified before anything is replaced (hashes, numbers, the signature with the trusted keys
# of the config it will run under, exactly as a start verifies it): a bundle that fails leaves the installed
# one in place, under --root too. The verifier is the installed venv's edge-run, else --python with this
# checkout on its path; with neither, the install stops before it changes the bundle.
verify_bundle_source() {
    local cfg venv
    local -a verifier
    cfg=$CONFIG_SRC
    [[ -n $cfg ]] || cfg=$(p "$CONFIG_PATH")
    [[ -f $cfg ]] || cfg=$SCRIPT_DIR/config.example.toml
    venv=$(p "$PREFIX/venv")
    if [[ -x $venv/bin/edge-run ]]; then
        verifier=("$venv/bin/edge-run")
    elif PYTHONPATH="$SCRIPT_DIR/.." "$PYTHON" -c 'import edge.service.cli' 2>/dev/null; then
        verifier=(env PYTHONPATH="$SCRIPT_DIR/.." "$PYTHON" -m edge.service.cli)
    elif ((DRY_RUN)); then
        echo "would verify $BUNDLE_SRC (edge-run install-bundle --verify-only) before installing it"
        return 0
    else
        die "cannot verify --bundle $BUNDLE_SRC before installing it: no $PREFIX/venv/bin/edge-run and $PYTHON cannot import edge (drop --skip-venv, or pass --python with edge-anomaly installed); nothing was replaced"
    fi
    if ! "${verifier[@]}" install-bundle --verify-only "$BUNDLE_SRC" --config "$cfg"; then
        die "--bundle $BUNDLE_SRC failed verification (message above); the installed bundle was left in place"
    fi
}

check_config() {
    local installed
    installed=$(p "$CONFIG_PATH")
    if [[ -f $installed ]] && ! grep -q '^[[:space:]]*engine_cache_dir[[:space:]]*=' "$installed"; then
        echo "warning: $CONFIG_PATH sets no [model] engine_cache_dir: TensorRT engines would go into the read-only bundle and be rebuilt at every start; add engine_cache_dir = \"$ENGINE_DIR\""
    fi
    if [[ -z $ROOT && $DRY_RUN -eq 0 && ! -x $PREFIX/venv/bin/edge-run ]]; then
        echo "note: $PREFIX/venv/bin/edge-run not found; skipping the config check"
        return 0
    fi
    # --no-camera-open: the running service holds its cameras until the restart below (a V4L2 device opens once)
    if ! as_service_user "$PREFIX/venv/bin/edge-run" --config "$CONFIG_PATH" --check-config --no-camera-open; then
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
    # Root-owned and not writable by the service: it holds the bundle and the record of what was installed.
    put_dir "$STATE_DIR" 0755 root:root
    record D "$STATE_DIR"
    install_docs
    setup_venv
    [[ -n $BUNDLE_SRC ]] && verify_bundle_source
    put_dir "$ETC_DIR" 0750 "root:$SERVICE_USER"
    install_config
    [[ -n $BUNDLE_SRC ]] && install_bundle
    # The service's only writable places (the unit's StateDirectory= and CacheDirectory=): engines, CUDA cache.
    put_dir "$ENGINE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER" T
    put_dir "$CACHE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER" T
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

# Undo what the record says this script created under one of the given directories, newest first:
# files and trees are removed, directories only when empty. Anything else there is someone else's: kept.
undo_recorded() {
    local file kind dest path kept=() remaining
    file=$(p "$RECORD")
    [[ -f $file ]] || return 0
    remaining=$(mktemp "$TMP_DIR/record.XXXXXX")
    while read -r kind dest; do
        [[ -n $dest ]] || continue
        if ! under_any "$dest" "$@"; then
            printf '%s %s\n' "$kind" "$dest" >>"$remaining"
            continue
        fi
        path=$(p "$dest")
        if [[ ! -e $path && ! -L $path ]]; then continue; fi
        case $kind in
            F | T) remove_path "$dest" ;;
            D)
                refuse_links "$dest"
                if ((DRY_RUN)); then
                    echo "would remove $dest/ if nothing else is in it"
                elif rmdir "$path" 2>/dev/null; then
                    echo "removed $dest/"
                else
                    kept+=("$dest")
                    printf '%s %s\n' "$kind" "$dest" >>"$remaining"
                fi
                ;;
        esac
    done < <(tac "$file")
    if ((DRY_RUN == 0)); then
        tac "$remaining" >"$file"
    fi
    if ((${#kept[@]})); then
        echo "kept ${kept[*]}: they hold files install.sh did not create (remove them by hand if unwanted)"
    fi
}

under_any() {
    local dest=$1 r
    shift
    for r in "$@"; do
        if [[ $dest == "$r" || $dest == "$r"/* ]]; then return 0; fi
    done
    return 1
}

# --purge-also: operator files (TLS keys, password files) are only removed when named, and only in $ETC_DIR.
purge_named() {
    local dest
    for dest in "${PURGE_ALSO[@]}"; do
        [[ $dest == "$ETC_DIR"/* && /$dest/ != */../* ]] ||
            die "--purge-also $dest: only operator files under $ETC_DIR can be named"
        remove_path "$dest"
    done
}

do_uninstall() {
    local record_path
    record_path=$(p "$RECORD")
    if [[ ! -f $record_path ]]; then
        echo "note: no record of installed paths ($RECORD); only the unit and drop-ins are removed"
    elif ! grep -q " $PREFIX\(/\|$\)" "$record_path"; then
        echo "note: nothing under --prefix $PREFIX was installed by install.sh; nothing there is removed"
    fi
    sys_run_or_warn systemctl disable --now "$SERVICE.service"
    remove_path "$UNIT_PATH"
    remove_dropins
    sys_run systemctl daemon-reload
    undo_recorded "$PREFIX" "$UNIT_DIR"
    if ((PURGE)); then
        purge_named
        undo_recorded "$ETC_DIR" "$CACHE_DIR" "$ENGINE_DIR" "$BUNDLE_DIR"
        # last: the record itself, then the state directory when nothing else is left in it
        if [[ -f $record_path ]] && ! grep -vqxF "D $STATE_DIR" "$record_path"; then
            remove_path "$RECORD"
            if ((DRY_RUN == 0)); then
                if rmdir "$(p "$STATE_DIR")" 2>/dev/null; then
                    echo "removed $STATE_DIR/"
                elif [[ -d $(p "$STATE_DIR") ]]; then
                    echo "kept $STATE_DIR/: it holds files install.sh did not create"
                fi
            fi
        fi
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
