"""Conformance harness: third-party PyCOMPSs, dislib and COMPSs-storage suites run through the launcher.

The suites are not part of this repository: they are found in the folder named by
``SA_CONFORMANCE_DIR`` (default: ``../shared/conformance`` beside the checkout) and run unchanged.
``python -m tests.conformance --help`` runs them by hand; ``tests/test_conformance.py`` is the
part CI runs, against the expected results committed beside this module.
"""
