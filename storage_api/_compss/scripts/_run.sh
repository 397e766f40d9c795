# shellcheck shell=bash
# Sourced by storage_init.sh and storage_stop.sh: run `python -m storage_api._compss <command>` with
# the interpreter that built the bundle (scripts/bundle.env, or SA_BUNDLE_PYTHON) and the bundle's
# own python/ directory first on PYTHONPATH.
run_storage_api_compss() {
    local here bundle python
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    bundle="$(dirname "$here")"
    python="${SA_BUNDLE_PYTHON:-}"
    if [ -z "$python" ] && [ -f "$here/bundle.env" ]; then
        python="$(sed -n 's/^SA_BUNDLE_PYTHON=//p' "$here/bundle.env")"
    fi
    python="${python:-python3}"
    if [ -d "$bundle/python/storage_api" ]; then
        export PYTHONPATH="$bundle/python${PYTHONPATH:+:$PYTHONPATH}"
    fi
    exec "$python" -m storage_api._compss "$@"
}
