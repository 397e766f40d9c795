#!/usr/bin/env bash
# storage_api's storage_init.sh for COMPSs (enqueue_compss --storage_home=<bundle>).
# Starts Redis on the storage master node and the backends on the worker nodes of a job, writes
# $HOME/.COMPSs/<jobId>/storage/cfgfiles/storage.properties and returns once every backend is registered.
#
# Arguments (COMPSs 3.3; the last three are optional):
#   jobId masterNode storageMasterNode "workerNodes" network storageProps
#   [variablesToBeSourced [storageContainerImage [storageCPUAffinity]]]
# The work is done by `python -m storage_api._compss init` (storage_api/_compss/_jobs.py).
set -euo pipefail

usage='jobId masterNode storageMasterNode "workerNodes" network storageProps [variablesToBeSourced [storageContainerImage [storageCPUAffinity]]]'
if [ "$#" -lt 6 ] || [ "$#" -gt 9 ]; then
    echo "storage_init.sh: error: expected 6 to 9 arguments ($usage), got $#" >&2
    exit 2
fi

source "$(dirname "${BASH_SOURCE[0]}")/_run.sh"
run_storage_api_compss init "$@"
