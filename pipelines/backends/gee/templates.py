"""Earth Engine expressions built once per shape and filled per tile.

Building an expression with the ``ee`` client costs Python time per tile (argument promotion, signature checks,
then hashing every node to serialize it), and a tile's expressions differ from those of the tile before only
in a few constants: scene ids, the region, dates. So each shape is built once with ``ee``, with named placeholders
where those constants go, serialized by ``ee`` and cut into JSON text at its references and placeholders; a tile's
expression (:class:`Prebuilt`) is put together from that text with its values in the placeholders
(:func:`expression_json`) and posted as it is (session.Rest).

A shape is a :class:`Part`: a builder (a function of its arguments and of the placeholder function, reading nothing
else) and the arguments. Its key is the pair, so two tiles share a template exactly when the builder would build
the same expression for both, up to the placeholders.
"""
from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ee
from ee import serializer

TOKEN = "@@mmearth:{}@@"
_SLOT = re.compile(r'\{"argumentReference": "@@mmearth:([^"@]+)@@"\}')
_ANY = re.compile(r'"@@mmearth:([^"@]+)@@"')
_PREFIX, _SUFFIX = TOKEN.split("{}")
TEMPLATES = 512    # shapes kept: scene levels x band sets x Sentinel-1 orbits x years, far fewer in practice


def placeholder(name: str, type_name: str = "Object"):
    """A named slot for a per-tile constant of an Earth Engine type (``String``, ``Number``, ``Geometry``,
    ``List``), passed where the value goes: a typed free variable, as ``ee`` makes for a mapped function's argument,
    which ``ee`` neither casts nor folds into a constant and serializes as a reference of its own."""
    var = ee.CustomFunction.variable(type_name, TOKEN.format(name))
    constant = _CONSTANT_FIELD.get(type_name)
    if constant:   # the wrappers of Python constants check their constant first when serialized: there is none
        setattr(var, constant, None)
    return var


_CONSTANT_FIELD = {"String": "_string", "Number": "_number", "List": "_list", "Dictionary": "_dictionary"}


@dataclass(frozen=True)
class Part:
    """One expression of a tile: ``builder(*args, slot)``, where the builder calls ``slot(name, type_name)`` for
    each per-tile constant, with ``values`` in the slots (JSON constants: ids, dates, coordinates)."""

    builder: Callable[..., Any]
    args: tuple
    values: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple:
        return (self.builder.__module__, self.builder.__qualname__, self.args)

    def build(self, slot: Callable[[str], Any]):
        return self.builder(*self.args, slot)


class Template:
    """An expression serialized once with its placeholders; :meth:`fill` puts a tile's values in."""

    def __init__(self, obj):
        self.expression = serializer.encode(obj, for_cloud_api=True)
        text = json.dumps(self.expression)
        slots, anywhere = _SLOT.findall(text), _ANY.findall(text)
        if sorted(slots) != sorted(anywhere):   # folded into a constant list or dict: it could not be replaced
            raise ValueError(f"placeholders {sorted(set(anywhere) - set(slots))} are not whole expression nodes")
        self.names = frozenset(slots)
        if _MARK.search(text):
            raise ValueError("the expression holds a text that reads as a reference mark: it cannot be a template")
        self.program = _program(self.expression)

    def fill(self, values: Mapping[str, Any]) -> "Prebuilt":
        """The expression with ``values`` in its slots: constants (JSON values), or other prebuilt expressions
        (referenced, so ``ee`` encodes each once and shares what they have in common)."""
        missing = self.names - set(values)
        if missing:
            raise KeyError(f"no value for placeholders {sorted(missing)}")
        return Prebuilt(self.program, {name: values[name] for name in self.names})


def _segments(node: dict) -> list[str]:
    """A value node as JSON text cut at its references and slots: ``[text, kind, name, text, kind, name, ...,
    text]`` with kind ``ref`` (another value of the template) or ``slot``."""
    marked = _relink(node, _REF.format, lambda token: _SLOT_MARK.format(token[len(_PREFIX):-len(_SUFFIX)]))
    return _MARK.split(json.dumps(marked, separators=(",", ":")))


def _program(expression: dict) -> list:
    """The template's values reachable from its result, in the order a depth-first walk meets them (children
    first, in the order they appear): each a list of JSON text pieces, ints (the position of a value written before
    it) and 1-tuples (a slot's name); a bare string before a value is a slot met on the way, where an inserted
    expression's own values go. Filling is then one pass over it, with no walk and no lookups by key."""
    segments = {key: _segments(node) for key, node in expression["values"].items()}
    program: list = []
    position: dict[str, int] = {}

    def visit(key: str) -> int:
        if key not in position:
            cut = segments[key]
            pieces: list = [cut[0]]
            for i in range(1, len(cut), 3):
                kind, name = cut[i], cut[i + 1]
                if kind == "ref":
                    pieces.append(visit(name))
                else:
                    program.append(name)
                    pieces.append((name,))
                pieces.append(cut[i + 2])
            program.append([p for p in pieces if p != ""])
            position[key] = len(position)
        return position[key]

    visit(expression["result"])
    return program


_REF, _SLOT_MARK = "@@ref:{}@@", "@@slot:{}@@"
_MARK = re.compile(r'"@@(ref|slot):([^"@]*)@@"')


class Templates:
    """Templates by shape, built on first use (thread-safe; bounded: the oldest built goes first)."""

    def __init__(self, size: int = TEMPLATES):
        self.size = size
        self._cache: OrderedDict[tuple, Template] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, build: Callable[[], Any]) -> Template:
        found = self._cache.get(key)   # no lock to read (one C call): every thread reads this several times per tile
        if found is not None:
            return found
        template = Template(build())   # outside the lock: building calls into ee (a first use may fetch its API)
        with self._lock:
            self._cache[key] = template
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return template

    def one(self, part: Part) -> "Prebuilt":
        return self.get(part.key, lambda: part.build(placeholder)).fill(part.values)

    def joined(self, parts: Sequence[Part], join: Callable[[list], Any], type_name: str = "Image") -> "Prebuilt":
        """Several parts combined by ``join`` (a pure function, e.g. ``ee.Image.cat``): each part is filled from
        its own template and the join has one of its own, so templates stay as few as the parts' shapes (not their
        combinations)."""
        key = (join.__module__, join.__qualname__, len(parts), type_name)
        template = self.get(key, lambda: join([placeholder(str(i), type_name) for i in range(len(parts))]))
        return template.fill({str(i): self.one(p) for i, p in enumerate(parts)})


SHARED = Templates()   # templates depend on nothing but their shape: one cache per process


class Prebuilt:
    """A template's fill program (shared by every tile of its shape, never changed) and this tile's values of its
    slots: constants, or other prebuilt expressions."""

    __slots__ = ("program", "slots")

    def __init__(self, program: list, slots: Mapping[str, Any]):
        self.program, self.slots = program, slots


class PrebuiltDict:
    """Several prebuilt expressions as one dictionary (one ``value:compute`` for a batch)."""

    def __init__(self, entries: Mapping[str, Prebuilt]):
        self.entries = dict(entries)


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode   # json.dumps makes a new encoder per call for these


def expression_json(top: "Prebuilt | PrebuiltDict") -> str:
    """The Cloud API ``Expression`` (``{"result", "values"}``) of a prebuilt expression as JSON text, for a request
    posted without ``ee`` (session.Rest): each template's values once per prebuilt expression it is filled into, put
    together from their text with the slots filled and the references renamed. It computes what ``ee`` builds and
    serializes for the same tile (tests/test_gee_full.py compares the two as trees), without ``ee``'s per-request
    cost: building, re-encoding and re-optimizing the whole graph, then dumping it."""
    values: list[str] = []
    done: dict[int, str] = {}

    def place(pre: Prebuilt) -> str:
        """The name of ``pre``'s result among ``values`` (quoted), its own values (and those it inserts) added
        first."""
        name = done.get(id(pre))
        if name is not None:
            return name
        names: list[str] = []
        filled: dict[str, str] = {}
        slots = pre.slots
        for step in pre.program:
            if step.__class__ is str:   # a slot met on the way: an inserted expression goes in here
                value = slots[step]
                if step not in filled:
                    filled[step] = ('{"valueReference":' + place(value) + "}" if value.__class__ is Prebuilt
                                    else '{"constantValue":' + _ENCODE(value) + "}")
                continue
            name = f'"{len(values)}"'
            values.append(name + ":" + "".join([p if p.__class__ is str else names[p] if p.__class__ is int
                                                else filled[p[0]] for p in step]))
            names.append(name)
        done[id(pre)] = names[-1]
        return names[-1]

    if isinstance(top, PrebuiltDict):
        refs = ",".join(_ENCODE(k) + ':{"valueReference":' + place(v) + "}" for k, v in sorted(top.entries.items()))
        values.append(f'"{len(values)}":' + '{"dictionaryValue":{"values":{' + refs + "}}}")
        result = f'"{len(values) - 1}"'
    else:
        result = place(top)
    return '{"result":' + result + ',"values":{' + ",".join(values) + "}}"


def _relink(value: dict, ref: Callable[[str], str], fill: Callable[[str], dict]) -> dict:
    """``value`` with every reference to another value of its expression renamed by ``ref`` and every slot filled
    by ``fill`` (a new tree: the template's stays as it is)."""
    if "valueReference" in value:
        return {"valueReference": ref(value["valueReference"])}
    if "functionInvocationValue" in value:
        call = value["functionInvocationValue"]
        out = {k: v for k, v in call.items() if k not in ("arguments", "functionReference")}
        if "functionReference" in call:
            out["functionReference"] = ref(call["functionReference"])
        out["arguments"] = {k: _relink(v, ref, fill) for k, v in call.get("arguments", {}).items()}
        return {"functionInvocationValue": out}
    if "functionDefinitionValue" in value:
        fn = value["functionDefinitionValue"]
        return {"functionDefinitionValue": {"argumentNames": fn["argumentNames"], "body": ref(fn["body"])}}
    if "arrayValue" in value:
        return {"arrayValue": {"values": [_relink(v, ref, fill) for v in value["arrayValue"]["values"]]}}
    if "dictionaryValue" in value:
        return {"dictionaryValue": {"values": {k: _relink(v, ref, fill)
                                               for k, v in value["dictionaryValue"]["values"].items()}}}
    token = value.get("argumentReference")
    if token is not None and token.startswith(_PREFIX):
        return fill(token)
    return value   # constantValue, integerValue, bytesValue, a mapped function's argumentReference
