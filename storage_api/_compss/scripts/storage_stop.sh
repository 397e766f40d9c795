#!/usr/bin/env bash
# storage_api's storage_stop.sh for COMPSs: stops what storage_init.sh started for a job. Every
# backend flushes its log and deregisters (as on SIGTERM), then Redis shuts down.
#
# Arguments (COMPSs 3.3): jobId masterNode storageMasterNode "workerNodes" network storageProps
# The work is done by `python -m storage_api._compss stop` (storage_api/_compss/_jobs.py).
set -euo pipefail

if [ "$#" -ne 6 ]; then
    echo "storage_stop.sh: error: expected 6 arguments (jobId masterNode storageMasterNode \"workerNodes\" network storageProps), got $#" >&2
    exit 2
fi

source "$(dirname "${BASH_SOURCE[0]}")/_run.sh"
run_storage_api_compss stop "$@"
