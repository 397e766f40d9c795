"""Quick start: ``python -m examples.quickstart`` from the repository root.

Uses the deployment that ``storage-api up`` started, or starts an embedded one (Redis and two
backends on 127.0.0.1) for the duration of the script.
"""

from __future__ import annotations

import contextlib
import os

import storage_api
from storage_api.errors import CommunicationError, ConfigError

from .counter import Counter


def deployment() -> contextlib.AbstractContextManager:
    try:
        storage_api.connect()
        print("using the configured deployment")
        return contextlib.nullcontext()
    except (ConfigError, CommunicationError):
        print("no deployment configured: starting an embedded one (redis-server + 2 backends)")
        return storage_api.local_cluster(backends=2)


def main() -> None:
    with deployment():
        for b in storage_api.backends():
            print(f"  backend {b.name} at {b.host}:{b.port} (pid {b.pid}, alive={b.alive})")
        counter = Counter(10)
        alias = f"quickstart-{os.getpid()}"
        counter.make_persistent(alias=alias, backend=storage_api.backends()[0])
        print(f"made persistent as {counter.getID()}")
        print(f"inc() -> {counter.inc()}, inc(5) -> {counter.inc(5)}; value read remotely: {counter.value}")
        print(f"the method ran in process {counter.where()}; this client is process {os.getpid()}")
        futures = [counter.inc.submit(1) for _ in range(10)]
        print(f"10 concurrent calls -> {sorted(f.result() for f in futures)[-1]}")
        stub = storage_api.stub("examples.counter.Counter")  # what a thin client without the module uses
        print(f"through a stub of {stub.__doc__!r}: inc() -> {stub.get_by_alias(alias).inc()}")
        counter.delete_persistent()
        print("deleted; done")


if __name__ == "__main__":
    main()
