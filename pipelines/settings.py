"""Field metadata for the configuration dataclasses: which settings define the data (hashed into its identity)
and which only say how a run goes (workers, retries, credentials), declared once beside each field."""
from __future__ import annotations

import dataclasses
from typing import Any

IDENTITY = "identity"
ALWAYS, IF_SET, NEVER = "always", "if_set", "never"


def setting(default: Any = dataclasses.MISSING, *, identity: str = ALWAYS, **kwargs) -> Any:
    """A dataclass field whose part in the data's identity is ``identity``: ``always``, ``if_set`` (only when
    given: an option added later leaves the hashes of earlier data unchanged) or ``never`` (a run setting)."""
    return dataclasses.field(default=default, metadata={IDENTITY: identity}, **kwargs)


def run_setting(default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A field that never changes the data (threads, retries, credentials, where files are)."""
    return setting(default, identity=NEVER, **kwargs)


def _walk(obj, keep) -> dict[str, Any]:
    """The fields of dataclass ``obj`` for which ``keep(field, value)`` holds, in declaration order; a nested
    dataclass field contributes its own, prefixed as its flat option names are (``gee`` -> ``gee_url``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            prefix = f.metadata.get("prefix", "")
            out.update({prefix + k: v for k, v in _walk(value, keep).items()})
        elif keep(f, value):
            out[f.name] = value
    return out


def identity_fields(obj) -> dict[str, Any]:
    """The fields of ``obj`` that define the data (``always``, and ``if_set`` ones that are set); the rules
    other than these are their owner's (e.g. build's fields of given places)."""
    def defines(f: dataclasses.Field, value: Any) -> bool:
        rule = f.metadata.get(IDENTITY, ALWAYS)
        return rule == ALWAYS or (rule == IF_SET and bool(value))

    return _walk(obj, defines)


def run_fields(obj) -> dict[str, Any]:
    """The run settings of ``obj``, flat."""
    return _walk(obj, lambda f, value: f.metadata.get(IDENTITY, ALWAYS) == NEVER)


def flat(obj) -> dict[str, Any]:
    """Every field of ``obj``, nested dataclasses flattened with their prefixes: the names the CLI options have."""
    return _walk(obj, lambda f, value: True)


def _nested(f: dataclasses.Field):
    """The dataclass a field nests (declared with it as its ``default_factory``), or None."""
    factory = f.default_factory
    return factory if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory) else None


def flat_names(cls) -> set[str]:
    """The flat option names of dataclass ``cls`` (see :func:`flat`)."""
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        inner = _nested(f)
        if inner is None:
            names.add(f.name)
        else:
            prefix = f.metadata.get("prefix", "")
            names |= {prefix + n for n in flat_names(inner)}
    return names


def unflat(cls, values: dict[str, Any]):
    """``cls`` from flat option values (the inverse of :func:`flat`): a nested dataclass takes the values of its
    own flat names. An unknown name is a TypeError, as for any constructor."""
    unknown = set(values) - flat_names(cls)
    if unknown:
        raise TypeError(f"{cls.__name__}: unexpected option(s) {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        inner = _nested(f)
        if inner is None:
            if f.name in values:
                kwargs[f.name] = values[f.name]
            continue
        prefix = f.metadata.get("prefix", "")
        mine = {prefix + n for n in flat_names(inner)}
        sub = {k[len(prefix):]: v for k, v in values.items() if k in mine}
        if sub:
            kwargs[f.name] = unflat(inner, sub)
    return cls(**kwargs)
