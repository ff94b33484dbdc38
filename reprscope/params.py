"""Declarative parameters (after scikit-learn's ``_param_validation``).

Datasets, methods, model parts and analyzers declare their parameters as :class:`Param` lists. Values given
on the command line arrive as strings; :func:`resolve_params` coerces, validates and fills defaults, and every
violation raises one message of the form::

    The 'k' parameter of knn must be an int >= 1. Got '0' instead.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from .errors import ReprscopeError


@dataclass(frozen=True)
class Param:
    """One parameter.

    Attributes:
        name: the key (``--param analyzer.NAME=...`` / ``--set section.NAME=...``).
        default: value used when not given (``None`` allowed where the owner handles it).
        kind: ``int``, ``float``, ``bool``, ``str``, ``choice``, ``floats`` (a float or a list of floats),
            ``ints`` (a comma list of ints, given back as such a string), ``int_or_all`` (an int or the string
            ``all``), ``json`` (any JSON value).
        doc: one line for ``reprscope list``.
        low, high: inclusive bounds for numbers (``low_open`` / ``high_open`` make them strict).
        choices: allowed strings for ``choice`` and ``choices`` (a comma list of them, or ``all``; given back
            as such a string, in the order of ``choices``).
        nullable: ``None``/"none" accepted.
    """

    name: str
    default: Any
    kind: str = "float"
    doc: str = ""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Sequence[str] = field(default_factory=tuple)
    nullable: bool = False

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "choices":
            return "'all' or a comma list of " + ", ".join(repr(c) for c in self.choices)
        num = lambda x: str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"  # noqa: E731
        lo = "" if self.low is None else (f" > {num(self.low)}" if self.low_open else f" >= {num(self.low)}")
        hi = "" if self.high is None else (f" < {num(self.high)}" if self.high_open else f" <= {num(self.high)}")
        bounds = lo + ("," if lo and hi else "") + hi
        names = {"int": "an int", "float": "a float", "bool": "a bool (true/false)", "str": "a string",
                 "floats": "a float or a list of floats", "ints": "a comma list of ints",
                 "int_or_all": "an int or 'all'", "json": "a JSON value"}
        return names.get(self.kind, self.kind) + bounds + (" or none" if self.nullable else "")

    def coerce(self, owner: str, value: Any) -> Any:
        """Convert ``value`` (possibly a command-line string) and check it; raise ReprscopeError if invalid."""

        def bad() -> ReprscopeError:
            return ReprscopeError(
                f"The '{self.name}' parameter of {owner} must be {self.describe()}. Got {value!r} instead."
            )

        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if self.nullable or self.default is None:
                return None
            raise bad()
        v: Any = value
        try:
            if self.kind == "int":
                if isinstance(v, bool):
                    raise ValueError
                if isinstance(v, str):
                    v = float(v) if any(c in v for c in ".eE") else int(v)
                if isinstance(v, float):
                    if not v.is_integer():
                        raise ValueError
                    v = int(v)
                v = int(v)
            elif self.kind == "float":
                if isinstance(v, bool):
                    raise ValueError
                v = float(v)
                if math.isnan(v):
                    raise ValueError
            elif self.kind == "bool":
                if isinstance(v, str):
                    low = v.strip().lower()
                    if low in ("1", "true", "yes", "on"):
                        v = True
                    elif low in ("0", "false", "no", "off"):
                        v = False
                    else:
                        raise ValueError
                elif isinstance(v, np.bool_):  # numpy's bool, e.g. from a table column read by pandas
                    v = bool(v)
                elif not isinstance(v, bool):
                    raise ValueError
            elif self.kind == "str":
                v = str(v)
            elif self.kind == "choice":
                v = str(v)
                if v not in self.choices:
                    raise ValueError
            elif self.kind == "choices":
                items = v if isinstance(v, (list, tuple)) else str(v).split(",")
                got = [str(x).strip() for x in items if str(x).strip()]
                if got == ["all"]:
                    return "all"
                if not got or any(x not in self.choices for x in got):
                    raise ValueError
                return ",".join(c for c in self.choices if c in got)
            elif self.kind == "floats":
                if isinstance(v, str):
                    s = v.strip()
                    v = json.loads(s) if s.startswith("[") else [float(x) for x in s.split(",")] if "," in s else float(s)
                if isinstance(v, (list, tuple)):
                    v = [float(x) for x in v]
                    if not v:
                        raise ValueError
                    for x in v:
                        self._check_bounds(x, bad)
                    return v
                v = float(v)
            elif self.kind == "ints":
                items = v if isinstance(v, (list, tuple)) else str(v).strip("[]() ").split(",")
                ints = []
                for x in items:
                    f = float(str(x).strip())
                    if not f.is_integer():
                        raise ValueError
                    ints.append(int(f))
                if not ints:
                    raise ValueError
                for x in ints:
                    self._check_bounds(x, bad)
                return ",".join(str(x) for x in ints)
            elif self.kind == "int_or_all":
                if isinstance(v, str) and v.strip().lower() == "all":
                    return "all"
                v = int(v)
            elif self.kind == "json":
                if isinstance(v, str):
                    try:
                        v = json.loads(v)
                    except json.JSONDecodeError:
                        pass
                return v
            else:  # pragma: no cover - programming error
                raise AssertionError(f"unknown param kind {self.kind}")
        except (ValueError, TypeError, json.JSONDecodeError):
            raise bad() from None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            self._check_bounds(v, bad)
        return v

    def _check_bounds(self, x: float, bad) -> None:
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            raise bad()
        if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            raise bad()


def resolve_params(owner: str, params: Sequence[Param], given: Mapping[str, Any]) -> Dict[str, Any]:
    """Defaults overridden by ``given``, each value validated; unknown keys are an error naming the valid ones."""
    by_name = {p.name: p for p in params}
    unknown = [k for k in given if k not in by_name]
    if unknown:
        valid = ", ".join(by_name) or "(it takes none)"
        raise ReprscopeError(f"{owner} has no parameter '{unknown[0]}'; valid parameters: {valid}")
    out: Dict[str, Any] = {}
    for p in params:
        out[p.name] = p.coerce(owner, given[p.name]) if p.name in given else p.default
    return out


def parse_assignments(items: Iterable[str], what: str = "--set") -> List[tuple]:
    """Parse ``a.b.c=value`` strings into ``(["a", "b", "c"], "value")`` pairs."""
    out = []
    for item in items or ():
        if "=" not in item:
            raise ReprscopeError(f"{what} expects KEY=VALUE (e.g. {what} data.content_dims=5); got '{item}'")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ReprscopeError(f"{what} expects KEY=VALUE with a dotted key; got '{item}'")
        out.append((key.split("."), value))
    return out


def format_params(params: Sequence[Param]) -> str:
    """``name=default`` list for ``reprscope list``."""
    return ", ".join(f"{p.name}={p.default!r}" if isinstance(p.default, str) else f"{p.name}={p.default}" for p in params)
