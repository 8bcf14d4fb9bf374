"""Load untrusted YAML safely and fast: every YAML file a user can hand in (manifests, mirror lists, training
configs and their includes) goes through `load`, and pack indexes through `load_json`.

Built straight from libyaml's event stream (the C parser when present; the composer and constructor of PyYAML
are the slow part, and its C composer recurses on the C stack, so `[[[[...` crashes it): safe types only, in time
linear in the text, with one-line errors for what PyYAML would accept or choke on: duplicate keys (OmegaConf
refuses them, so MMF does), recursive anchors, alias bombs (a few hundred bytes of `&a [*b, *b, ...]` that
expand to billions of nodes) and absurd nesting.

Numbers: a plain scalar YAML would type as a number but longer than MAX_NUMBER_CHARS stays its text (YAML 1.1
already keeps `1e400` as text; Python refuses ints of 4300+ digits, and a 60-base `1:2:3:...` grows without
bound), so the field that wanted a number reports it instead of the whole file failing. Keys that differ but read
the same as text (`1:` and `"1":`, `true:` and `"True":`) are duplicates, since every key here becomes a name (a
folder, a dotted config key), unless the caller asks to judge them itself (`keep_twins`).

Two dialects. Manifests (the default): YAML 1.1 as PyYAML reads MMF's files; floats keep their text
(`YamlFloat.text`): MMF's version `1.0_2020_06_30` is the float 1.02020063 to YAML 1.1, and MMF writes that float
into `.built.json`, but people should see the string they wrote. Configs (`config=True`): OmegaConf's rules, which
MMF's configs are written for: `1e-4` is a float too (YAML 1.1 would make it a string), floats are plain floats.
"""
from __future__ import annotations

import json
import math
import re

import yaml

_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
C_LOADER = _BASE is not yaml.SafeLoader
MAX_DEPTH = 64
ALIAS_BUDGET = 1_000_000  # nodes that aliases may add to a document by re-using anchored data
MAX_NUMBER_CHARS = 100  # longer "numbers" stay text: no field here holds one (sizes are < 2**63, 19 digits)
SECOND_OPINION_CHARS = 1 << 22  # text re-read by the pure-Python parser to name why libyaml stopped
_STR = "tag:yaml.org,2002:str"
MERGE = type("Merge", (), {"__repr__": lambda self: "'<<'"})()  # the `<<` merge key (a quoted "<<" is a string)


class YamlError(ValueError):
    """One line: what is wrong and where (line numbers are 1-based)."""


class YamlFloat(float):
    text: str = ""


class _Scalars(yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """PyYAML's own YAML 1.1 rules for plain scalars (int, float, bool, null, timestamps...)."""

    _FIRST = frozenset(yaml.resolver.Resolver.yaml_implicit_resolvers)  # first characters of non-strings
    keep_text = True  # floats as YamlFloat with the text as written

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
        if tag in _NUMBERS and len(value) > MAX_NUMBER_CHARS:
            return value
        node = yaml.ScalarNode(tag, value, event.start_mark, event.end_mark)
        if tag == "tag:yaml.org,2002:float":
            if not self.keep_text:
                return self.construct_yaml_float(node)
            out = YamlFloat(self.construct_yaml_float(node))
            out.text = value
            return out
        if tag == "tag:yaml.org,2002:timestamp":
            return value  # keep dates as written (manifests have no use for datetime objects)
        return self.yaml_constructors[tag](self, node)


_NUMBERS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


class _ConfigScalars(_Scalars):
    """OmegaConf's rules (what MMF's configs are written for): a float needs no dot (`1e-4`), no YamlFloat."""

    keep_text = False


_ConfigScalars.add_implicit_resolver(  # OmegaConf's float pattern, tried after YAML 1.1's own
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


class _Open:
    __slots__ = ("data", "anchor", "key", "has_key", "line", "size", "merges", "keys", "names")

    def __init__(self, data, anchor, line):
        self.data, self.anchor, self.line = data, anchor, line
        self.key, self.has_key, self.size, self.merges, self.keys = None, False, 1, [], {}
        self.names: dict = {}  # str(key) -> (key, line) for keys that are not text

    def put(self, key, value, line: int, keep_twins: bool) -> None:
        """Add `key: value` to this mapping: a duplicate key, or a key of another type that reads the same (unless
        `keep_twins`), is an error; `<<` merges are applied when the mapping ends."""
        if key is MERGE:
            self.merges.append((value, line))
            return
        if key in self.keys:
            raise YamlError(f"line {line}: duplicate key {key!r} (first defined on line {self.keys[key]}); "
                            "keep one of them")
        name = key if type(key) is str or keep_twins else str(key)
        twin = self.names.get(name) if self.names else None  # a key of another type that reads the same
        if twin is None and name is not key:
            twin = (name, self.keys[name]) if name in self.keys else None
        if twin is not None:
            raise YamlError(f"line {line}: keys {twin[0]!r} (line {twin[1]}) and {key!r} both name {name!r}; "
                            "keep one of them")
        if name is not key:
            self.names[name] = (key, line)
        self.keys[key] = line
        self.data[key] = value

    def apply_merges(self) -> None:
        for merged, line in self.merges:
            for part in merged if isinstance(merged, list) else [merged]:
                if not isinstance(part, dict):
                    raise YamlError(f"line {line}: a merge key '<<' needs a mapping or a list of mappings")
                for k, v in part.items():
                    self.data.setdefault(k, v)


def load(text: str, *, config: bool = False, keep_twins: bool = False):
    """Parse one YAML document; raises YamlError with a one-line message.

    config: OmegaConf's number rules. keep_twins: keys of different types that read the same (`1:`, `"1":`) are
    kept for the caller to judge (a manifest refuses that entry alone) instead of failing the document.
    """
    scalars = _ConfigScalars() if config else _Scalars()
    try:
        return _build(_events(text, _BASE), scalars, keep_twins)
    except yaml.YAMLError as exc:
        if C_LOADER:
            _second_opinion(text, exc, scalars, keep_twins)
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise YamlError(f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc})") from None


def _second_opinion(text: str, exc: yaml.YAMLError, scalars, keep_twins: bool) -> None:
    """libyaml scans far ahead and stops at limits of its own (its nesting depth, since 0.2.5) before the builder
    sees an event; re-read the text up to where it stopped with the pure-Python parser, so that a limit of ours
    that comes first (MAX_DEPTH) is what the user reads. Raises YamlError then; returns otherwise."""
    mark = getattr(exc, "problem_mark", None)
    head = text[: mark.index + 1] if mark is not None and mark.index is not None else text
    if len(head) > SECOND_OPINION_CHARS:
        return
    try:
        _build(_events(head, yaml.SafeLoader), scalars, keep_twins)
    except yaml.YAMLError:
        return


def _events(text: str, loader_class):
    loader = loader_class(text)
    try:
        get = loader.get_event
        while (event := get()) is not None:
            yield event
            if type(event) is yaml.StreamEndEvent:
                return
    finally:
        loader.dispose()


def _build(events, scalars, keep_twins: bool):
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
            top.put(key, value, line, keep_twins)

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
            done.apply_merges()
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
                raise YamlError(f"line {line}: more than one YAML document (a `---` line); keep one")
    return result


def show(value) -> str:
    """A value from a file or option a user handed in, for a one-line error: a long text or number (a 5000-digit
    "size" or override) is cut to its start."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        try:
            return f"an integer of {len(str(abs(value)))} digits"
        except ValueError:  # past Python's 4300-digit limit for str()
            return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    if isinstance(value, str) and len(value) > 70:
        return f"{value[:60]!r}… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}… ({len(text)} characters)"


def load_json(text: str | bytes):
    """Parse untrusted JSON (a pack's index) with the same guarantees as `load`: duplicate keys, absurd numbers,
    NaN/Infinity and deep nesting are one-line YamlErrors, never a traceback or a silently dropped value."""
    def pairs(items: list) -> dict:
        out: dict = {}
        for key, value in items:
            if key in out:
                raise YamlError(f"duplicate key {key!r}; keep one of them")
            out[key] = value
        return out

    def number(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise YamlError(f"a number of {len(text)} characters; no value here needs more than {MAX_NUMBER_CHARS}")
        return float(text) if any(c in text for c in ".eE") else int(text)

    def constant(name: str):
        raise YamlError(f"{name} is not a JSON number; write a finite number")

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_int=number, parse_float=number,
                          parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise YamlError(f"line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise YamlError("not valid JSON (not UTF-8 text)") from None
    except RecursionError:
        raise YamlError(f"nested more than {MAX_DEPTH} levels deep") from None
    _check_tree(data, 0)
    return data


def _check_tree(node, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise YamlError(f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, float) and not math.isfinite(node):
        raise YamlError(f"number {node} is out of range; write a finite number")
    for item in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
        _check_tree(item, depth + 1)
