"""Load untrusted YAML (manifests) safely and fast.

Built straight from libyaml's event stream (the C parser when present; the composer and constructor of PyYAML
are the slow part, and its C composer recurses on the C stack, so `[[[[...` crashes it): safe types only, in time
linear in the text, with one-line errors for what PyYAML would accept or choke on: duplicate keys (OmegaConf
refuses them, so MMF does), recursive anchors, alias bombs (a few hundred bytes of `&a [*b, *b, ...]` that
expand to billions of nodes) and absurd nesting.

Floats keep their text (`YamlFloat.text`): MMF's version `1.0_2020_06_30` is the float 1.02020063 to YAML 1.1, and
MMF writes that float into `.built.json`, but people should see the string they wrote.
"""
from __future__ import annotations

import yaml

_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
C_LOADER = _BASE is not yaml.SafeLoader
MAX_DEPTH = 64
ALIAS_BUDGET = 1_000_000  # nodes that aliases may add to a document by re-using anchored data
_STR = "tag:yaml.org,2002:str"
MERGE = type("Merge", (), {"__repr__": lambda self: "'<<'"})()  # the `<<` merge key (a quoted "<<" is a string)


class YamlError(ValueError):
    """One line: what is wrong and where (line numbers are 1-based)."""


class YamlFloat(float):
    text: str = ""


class _Scalars(yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """PyYAML's own YAML 1.1 rules for plain scalars (int, float, bool, null, timestamps...)."""

    _FIRST = frozenset(yaml.resolver.Resolver.yaml_implicit_resolvers)  # first characters of non-strings

    def scalar(self, event):
        value = event.value
        tag = event.tag
        if tag is None or tag == "!":
            if not event.implicit[0]:
                return value  # quoted: a string
            if value and value[0] not in self._FIRST:
                return value  # fast path: no implicit type starts with this character
            tag = self.resolve(yaml.ScalarNode, value, event.implicit)
        if tag == _STR:
            return value
        if tag == "tag:yaml.org,2002:merge":
            return MERGE
        if tag not in self.yaml_constructors:
            raise YamlError(f"line {event.start_mark.line + 1}: unsupported tag {tag!r}")
        node = yaml.ScalarNode(tag, value, event.start_mark, event.end_mark)
        if tag == "tag:yaml.org,2002:float":
            out = YamlFloat(self.construct_yaml_float(node))
            out.text = value
            return out
        if tag == "tag:yaml.org,2002:timestamp":
            return value  # keep dates as written (manifests have no use for datetime objects)
        return self.yaml_constructors[tag](self, node)


class _Open:
    __slots__ = ("data", "anchor", "key", "has_key", "line", "size", "merges", "keys")

    def __init__(self, data, anchor, line):
        self.data, self.anchor, self.line = data, anchor, line
        self.key, self.has_key, self.size, self.merges, self.keys = None, False, 1, [], {}


def load(text: str):
    """Parse one YAML document; raises YamlError with a one-line message."""
    try:
        return _build(_events(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise YamlError(f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc})") from None


def _events(text: str):
    loader = _BASE(text)
    try:
        get = loader.get_event
        while (event := get()) is not None:
            yield event
            if type(event) is yaml.StreamEndEvent:
                return
    finally:
        loader.dispose()


def _build(events):
    scalars = _Scalars()
    anchors: dict[str, tuple[object, int]] = {}  # name -> (data, expanded node count)
    open_: list[_Open] = []
    documents = 0
    result = None
    aliased = 0

    def add(value, size: int, line: int) -> None:
        nonlocal result
        if not open_:
            result = value
            return
        top = open_[-1]
        top.size += size
        if isinstance(top.data, list):
            top.data.append(value)
        elif not top.has_key:
            try:
                hash(value)
            except TypeError:
                raise YamlError(f"line {line}: a mapping key must be a plain value, not a list or mapping") from None
            top.key, top.has_key = value, True
        else:
            key, top.has_key = top.key, False
            if key is MERGE:
                top.merges.append((value, line))
                return
            if key in top.keys:
                raise YamlError(f"line {line}: duplicate key {key!r} (first defined on line {top.keys[key]}); "
                                "keep one of them")
            top.keys[key] = line
            top.data[key] = value

    scalar_t, alias_t = yaml.ScalarEvent, yaml.AliasEvent
    starts = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    for ev in events:
        t = type(ev)
        line = ev.start_mark.line + 1 if ev.start_mark else 0
        if t is scalar_t:
            value = scalars.scalar(ev)
            if ev.anchor:
                anchors[ev.anchor] = (value, 1)
            add(value, 1, line)
        elif t in starts:
            if len(open_) >= MAX_DEPTH:
                raise YamlError(f"line {line}: nested more than {MAX_DEPTH} levels deep")
            data = {} if t is yaml.MappingStartEvent else []
            if ev.anchor:
                anchors[ev.anchor] = (data, -1)  # -1: still open, an alias to it now is a cycle
            open_.append(_Open(data, ev.anchor, line))
        elif t in ends:
            done = open_.pop()
            for merged, mline in done.merges:
                for part in merged if isinstance(merged, list) else [merged]:
                    if not isinstance(part, dict):
                        raise YamlError(f"line {mline}: a merge key '<<' needs a mapping or a list of mappings")
                    for k, v in part.items():
                        done.data.setdefault(k, v)
            if done.anchor:
                anchors[done.anchor] = (done.data, done.size)
            add(done.data, done.size, done.line)
        elif t is alias_t:
            if ev.anchor not in anchors:
                raise YamlError(f"line {line}: alias *{ev.anchor} refers to no anchor defined before it")
            value, size = anchors[ev.anchor]
            if size < 0:
                raise YamlError(f"line {line}: anchor &{ev.anchor} refers to itself (recursive alias); "
                                "YAML data must be a tree")
            aliased += size
            if aliased > ALIAS_BUDGET:
                raise YamlError(f"line {line}: aliases expand to more than {ALIAS_BUDGET:,} nodes (an alias "
                                "bomb?); write the data out instead of nesting aliases")
            add(value, size, line)
        elif t is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise YamlError(f"line {line}: more than one YAML document; a manifest is one document")
    return result
