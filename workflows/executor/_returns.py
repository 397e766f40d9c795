"""How many values a task call yields, by PyCOMPSs' rules for ``@task(returns=...)``.

``returns`` may be an int, a string holding an int, ``"{{param}}"`` (one value, which replaces
that argument), the name of an argument of the call (an extension: its value is the count) or of
a global of the function's module (its value is the count), a type,
or a tuple/list of types. Without ``returns`` PyCOMPSs infers the count once per function: from a
return type hint (a tuple of types counts its elements, anything else is one), else from the
source: no ``return`` is none, ``return a, b`` (any tuple/list display) counts its elements (the
largest such statement wins), any other ``return`` is one. Methods are read line by line, as
PyCOMPSs does (their class does not exist yet when it parses them).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from typing import Any, Callable

PARAM_OPEN, PARAM_CLOSE = "{{", "}}"


def param_name(returns: Any) -> str | None:
    """The argument that ``returns="{{name}}"`` names, else ``None``."""
    if isinstance(returns, str) and returns.startswith(PARAM_OPEN) and returns.endswith(PARAM_CLOSE):
        return returns[len(PARAM_OPEN):-len(PARAM_CLOSE)].strip()
    return None


def from_string(returns: str, func: Callable, arguments: dict[str, Any]) -> int:
    """The count a string ``returns`` stands for."""
    try:
        return int(returns)
    except ValueError:
        pass
    if param_name(returns) is not None:
        return 1
    if returns in arguments:  # beyond PyCOMPSs: an argument of the call, by its name
        return int(arguments[returns])
    scope = getattr(func, "__globals__", {})
    if returns in scope:
        return int(scope[returns])
    raise TypeError(f"@task(returns={returns!r}) of {func.__qualname__}: not an int, a {{{{parameter}}}}, "
                    "or a global of its module")


def inferred(func: Callable, is_method: bool) -> int:
    """The count of a task declared without ``returns``."""
    hint = _return_hint(func)
    if hint is not _MISSING:
        return len(hint) if isinstance(hint, (tuple, list)) else 1
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return 1  # no source to read (a lambda made at run time...): one value, possibly None
    if is_method:
        returns = [_parse_line(line) for line in source.splitlines() if "return " in line]
    else:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return 1
        returns = [node.value for node in ast.walk(tree) if isinstance(node, ast.Return)]
    if not returns:
        return 0
    multi = [len(v.elts) for v in returns if isinstance(v, (ast.Tuple, ast.List, ast.Set))]
    return max(multi) if multi else 1


_MISSING = object()


def _return_hint(func: Callable) -> Any:
    annotations = getattr(func, "__annotations__", {})
    if "return" not in annotations:
        return _MISSING
    try:
        return typing.get_type_hints(func)["return"]
    except Exception:  # noqa: BLE001 - typing refuses some hints PyCOMPSs reads, e.g. "(int, int)"
        hint = annotations["return"]
        if isinstance(hint, str):  # postponed (from __future__ import annotations)
            try:
                return eval(hint, getattr(func, "__globals__", {}))  # noqa: S307 - the app's own annotation
            except Exception:  # noqa: BLE001 - a name defined later: still one hint
                return hint
        return hint


def _parse_line(line: str) -> ast.expr | None:
    """The value of the ``return`` statement on one line of a method's source (None if not one)."""
    try:
        body = ast.parse(line.strip()).body
    except SyntaxError:
        return None
    if body and isinstance(body[0], ast.Return):
        return body[0].value
    return None
