#!/usr/bin/env bash
# storage_api's storage_stop.sh for COMPSs: stops what storage_init.sh started for a job. Every
# backend flushes its log and deregisters (as on SIGTERM), then Redis shuts down.
#
# Arguments (COMPSs 3.3): jobId masterNode storageMasterNode "workerNodes" network storageProps
# The work is done by `python -m storage_api._compss stop` (storage_api/_compss/_deploy.py).
set -euo pipefail

if [ "$#" -ne 6 ]; then
    echo "storage_stop.sh: error: expected 6 arguments (jobId masterNode storageMasterNode \"workerNodes\" network storageProps), got $#" >&2
    exit 2
fi

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
exec "$python" -m storage_api._compss stop "$@"
