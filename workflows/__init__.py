"""The task-workflow layer: the apps' models and data generators, and the PyCOMPSs executor.

``workflows.models`` holds the classes and data the apps run on the store (persistent blocks for
dislib, the LSTM trainer and model, the dataset generator); ``workflows.executor`` runs PyCOMPSs
apps without COMPSs. Both use only the store's public API and its documented internal interfaces
(``storage_api._messages`` and ``Client.send``); the store never imports this package.

``workflows.blocks``, ``workflows.datasets``, ``workflows.lstm`` and ``workflows.trainer`` are the
models' former module paths. Deployments keep class paths (``workflows.trainer.LSTMTrainer``) in
their logs and in Redis, and pickles name classes by module, so each old path stays importable and
names the same module object as the new one.
"""
