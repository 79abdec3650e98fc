# shellcheck shell=bash
# path_hint PY VENV: the line set-up ends with, the one command that puts edge-train, edge-run & co. on PATH.
#
# With the project's .venv (VENV non-empty): `source <abs>/.venv/bin/activate`, as users of Python CLIs
# expect. With PYTHON=... (VENV empty): that interpreter's scripts folder, where pip put the commands.
path_hint() {
    local py=$1 venv=$2 bin
    if [ -n "$venv" ]; then
        echo "source $(cd "$venv" && pwd)/bin/activate"
    else
        bin=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
        echo "export PATH=\"$bin:\$PATH\""
    fi
}
