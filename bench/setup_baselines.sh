#!/usr/bin/env bash
# Create the virtual environments for the baseline harnesses in bench/baselines/:
#   bench/.venvs/dataclay  dataClay 4.3.1 + numpy
#   bench/.venvs/pyro5     Pyro5 + numpy
# Idempotent: an existing venv is reused and pip only installs what is missing.
# The dataClay harness also needs redis-server on PATH (apt-get install redis-server).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venvs="$here/.venvs"
python="${PYTHON:-python3}"

die() { echo "setup_baselines: error: $*" >&2; exit 1; }

command -v "$python" >/dev/null || die "$python not found (set PYTHON=/path/to/python3)"
"$python" -c 'import venv' 2>/dev/null || die "$python has no venv module (apt-get install python3-venv)"

make_venv() {  # make_venv NAME PACKAGE...
    local name="$1"; shift
    local dir="$venvs/$name"
    if [[ -x "$dir/bin/python" ]]; then
        echo "setup_baselines: reusing $dir"
    else
        echo "setup_baselines: creating $dir with $("$python" --version 2>&1)"
        "$python" -m venv "$dir" || die "could not create $dir"
    fi
    echo "setup_baselines: pip install $* into $dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
        || die "pip install $* failed in $dir"
    if "$dir/bin/python" -c 'import torch' 2>/dev/null; then
        die "torch ended up in $dir; it must not be installed there"
    fi
}

mkdir -p "$venvs"
make_venv dataclay "dataclay==4.3.1" numpy
make_venv pyro5 Pyro5 numpy

"$venvs/dataclay/bin/python" -c 'import dataclay, numpy' || die "dataclay venv cannot import dataclay/numpy"
"$venvs/pyro5/bin/python" -c 'import Pyro5, numpy' || die "pyro5 venv cannot import Pyro5/numpy"
command -v redis-server >/dev/null || echo "setup_baselines: warning: redis-server not on PATH; dataclay_calls.py needs it" >&2

echo "setup_baselines: done"
echo "  dataClay: $("$venvs/dataclay/bin/python" -c 'from importlib.metadata import version; print(version("dataclay"))')"
echo "  Pyro5:    $("$venvs/pyro5/bin/python" -c 'import Pyro5; print(Pyro5.__version__)')"
