"""Parameter directions and keys: plain names, which the pass-through decorators ignore."""

from __future__ import annotations

Type = "type"
Depth = "depth"
Weight = "weight"
Keep_rename = "keep_rename"
Cache = "cache"
Prefix = "prefix"
StdIOStream = "stdiostream"


def __getattr__(name: str) -> str:
    # Any other upper-case name (IN, COLLECTION_INOUT, FILE_COMMUTATIVE, ...) is a direction.
    if name.isupper():
        return name
    raise AttributeError(name)
