"""The apps' models and data: what the backends run and the apps build on.

``blocks`` (persistent numpy blocks for dislib ds-arrays, filled on the backends), ``trainer``
(the LSTM trainer as an active class), ``lstm`` (the paper's forecaster; imports torch) and
``datasets`` (the utilisation series generator and CSV checks; standard library at import).
"""
