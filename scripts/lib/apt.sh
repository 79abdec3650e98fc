# apt_get ARGS...: apt-get that waits for the dpkg/apt locks instead of failing at once, and says so.
# unattended-upgrades holds them for minutes after a boot; a fresh machine is exactly when setup runs.
# APT_LOCK_WAIT_S (600): give up after this long; APT_LOCK_RETRY_S (10): pause between tries.
# Sourced by scripts/setup.sh (and tests/deploy/test_setup.py, with a fake apt-get).

SUDO=${SUDO-}
if [ -z "$SUDO" ] && [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_get() {
    local waited=0 err limit=${APT_LOCK_WAIT_S:-600} pause=${APT_LOCK_RETRY_S:-10}
    err=$(mktemp)
    while true; do
        if DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout="$pause" "$@" 2>"$err"; then
            rm -f "$err"
            return 0
        fi
        if ! grep -qiE "could not get lock|unable to acquire|is another process using it" "$err"; then
            cat "$err" >&2
            rm -f "$err"
            return 1
        fi
        if [ "$waited" -ge "$limit" ]; then
            echo "setup: the dpkg lock is still held after ${waited} s: another apt or dpkg is running" \
                "(see: ps aux | grep -E 'apt|dpkg'). Run this again when it has finished." >&2
            rm -f "$err"
            return 1
        fi
        echo "setup: another apt/dpkg holds the package lock (unattended-upgrades after a boot?);" \
            "waiting for it (${waited}/${limit} s)..." >&2
        sleep "$pause"
        waited=$((waited + 2 * pause))
    done
}
