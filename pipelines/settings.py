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


def identity_fields(obj) -> dict[str, Any]:
    """The fields of dataclass ``obj`` that define the data, in declaration order; a nested dataclass field
    contributes its own identity fields, prefixed as its flat option names are (``gee`` -> ``gee_url``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        rule = f.metadata.get(IDENTITY, ALWAYS)
        value = getattr(obj, f.name)
        if rule not in (ALWAYS, IF_SET) or (rule == IF_SET and not value):
            continue   # a run setting, or one whose owner decides (e.g. build's fields of given places)
        if dataclasses.is_dataclass(value):
            prefix = f.metadata.get("prefix", "")
            out.update({prefix + k: v for k, v in identity_fields(value).items()})
        else:
            out[f.name] = value
    return out


def run_fields(obj) -> dict[str, Any]:
    """The run settings of ``obj`` (and of its nested dataclasses, prefixed as above), flat."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            prefix = f.metadata.get("prefix", "")
            out.update({prefix + k: v for k, v in run_fields(value).items()})
        elif f.metadata.get(IDENTITY, ALWAYS) == NEVER:
            out[f.name] = value
    return out


def flat(obj) -> dict[str, Any]:
    """Every field of ``obj``, nested dataclasses flattened with their prefixes: the names the CLI options have."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            prefix = f.metadata.get("prefix", "")
            out.update({prefix + k: v for k, v in flat(value).items()})
        else:
            out[f.name] = value
    return out


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
