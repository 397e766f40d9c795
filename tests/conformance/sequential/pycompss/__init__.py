"""A sequential stand-in for PyCOMPSs, the control of the conformance runs.

Its decorators return the function unchanged and ``compss_wait_on`` returns its argument, as
PyCOMPSs itself behaves outside a COMPSs run (its ``api/dummy`` modules), so an app run with it
on its path gives the results the app's own code gives without any task runtime.
"""
