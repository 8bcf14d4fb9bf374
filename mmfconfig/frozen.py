"""The resolved config, read-only: validation judged these values, so nothing may change them afterwards (a value
a component needs to derive at run time lives in that component's own state).

`FrozenDict`/`FrozenList` are dict/list subclasses so every `cfg["a"]["b"]` reader, `isinstance(x, dict)` check
and JSON dump keeps working; each mutating method raises TypeError (a bug, not a user error). They pickle and deep-copy
(DataLoader workers, checkpoints' summaries) as themselves, and `thaw` gives plain containers for YAML dumps."""
from __future__ import annotations

from typing import Any



def _refuse(self, *args, **kwargs):
    key = f" (key {args[0]!r})" if args and isinstance(args[0], str) else ""
    raise TypeError(f"the resolved config is read-only{key}: set the value in the config file or as a "
                      "key=value override; a value derived at run time belongs in the run's own state")


class FrozenDict(dict):
    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return FrozenDict, (dict(self),)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class FrozenList(list):
    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __reduce__(self):
        return FrozenList, (list(self),)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def freeze(value: Any) -> Any:
    """`value` with every dict and list (nested) made read-only."""
    if isinstance(value, dict):
        return FrozenDict((k, freeze(v)) for k, v in value.items())
    if isinstance(value, list):
        return FrozenList(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain, mutable copies of the containers (for YAML, and for a caller that builds a new config from one)."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value
