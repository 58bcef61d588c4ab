"""One safe loader for every document phh reads from people and programs (JSON and YAML).

Python's parsers accept things phh must not: `NaN`, `Infinity` and numbers like `1e400`
(a float overflowing to infinity, which then serialises as `null`: a step silently loses its
timeout), integers of thousands of digits (a ValueError that is not a JSONDecodeError, or in
YAML a hex/sexagesimal value that later cannot be printed), strings holding lone surrogate
escapes like `"\\ud800"` (not Unicode text: writing them as UTF-8 raises), YAML mapping keys
that are not strings (`? [a, b]`: an unhashable key), and nesting so deep that the parser
itself raises RecursionError (a traceback, not an error message). Every loader here turns
each of those into a `DocumentError` that names the JSON path of the first offending value,
so a door can refuse the document (exit 2, HTTP 4xx) before anything is written.

    loads_json(text)          # -> parsed value, or DocumentError(path, message)
    loads_yaml(text, loader)  # the same for YAML (a SafeLoader subclass)
    check_tree(value)         # the same rules on an already parsed value (API bodies, dicts)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import yaml

#: Deepest nesting of objects/arrays accepted (a Launch Table needs ~7; JSON Schemas ~20).
MAX_DEPTH = 64
#: Most digits in one integer (Python's own int parsing limit is 4300).
MAX_INT_DIGITS = 1000
#: Most values a YAML document may expand to through aliases ("billion laughs").
MAX_EXPANDED_VALUES = 1_000_000

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]')
_SURROGATE = re.compile("[\ud800-\udfff]")
#: The smallest integer with more than MAX_INT_DIGITS digits.
_INT_LIMIT = 10 ** MAX_INT_DIGITS


class DocumentError(ValueError):
    """A document phh refuses: `path` is a JSON path (`$` is the whole document, else like
    `jobs[0].steps[1].timeout_seconds`), `message` says what is wrong there."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path or "$"
        self.message = message
        super().__init__(f"{self.path}: {message}")


def join(base: str, key: str | int) -> str:
    """`jobs[3].steps[0]`-style paths (harness_config.join_path's format; odd keys quoted)."""
    if isinstance(key, int):
        return f"{base}[{key}]"
    if _IDENT.match(key):
        return f"{base}.{key}" if base else key
    return f"{base}[{json.dumps(key)}]"


def prefixed(prefix: str, path: str) -> str:
    """`path` (as DocumentError gives it) below `prefix` (a field holding the document)."""
    if path == "$":
        return prefix or "$"
    if not prefix:
        return path
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


class _Hostile:
    """Stands in for a value the JSON parser must not produce; found (with its path) by the
    walk that follows the parse."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _nonfinite(literal: str) -> _Hostile:
    return _Hostile(f"{literal} is not a finite number (NaN and infinities are refused)")


def _parse_float(text: str) -> float | _Hostile:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Hostile(f"{text} is not a finite number (it overflows a 64-bit float)")


def _parse_int(text: str) -> int | _Hostile:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return _Hostile(f"an integer of {digits} digits (at most {MAX_INT_DIGITS} digits)")
    return int(text)


def _surrogate_problem(text: str, what: str) -> str | None:
    """Why `text` (a string or key) is not Unicode text, or None."""
    m = _SURROGATE.search(text)
    if m is None:
        return None
    return (f"{what} holds the lone surrogate U+{ord(m.group()):04X} at character {m.start()} "
            "(not Unicode text: an unpaired \\ud800-\\udfff escape, or bytes that are not "
            "UTF-8)")


def check_tree(value: Any, *, max_depth: int = MAX_DEPTH, root: str = "",
               allow_surrogates: bool = False) -> None:
    """Refuse non-finite floats, integers of more than MAX_INT_DIGITS digits, strings or keys
    holding lone surrogates (unless `allow_surrogates`), over-deep nesting and alias
    explosions in a parsed value.

    Iterative (no recursion limit); a container reached twice (a YAML alias) is walked once.
    Raises DocumentError naming the first offending path (below `root`)."""
    # (value, parent entry, key, depth): the path is rebuilt only for an error
    Entry = tuple[Any, Any, Any, int]
    stack: list[Entry] = [(value, None, None, 0)]
    seen: set[int] = set()
    shared = False
    walked: tuple[type, ...] = (float, int, _Hostile, dict, list, *(() if allow_surrogates
                                                                     else (str,)))

    def path_of(entry: Entry) -> str:
        keys: list[Any] = []
        node: Any = entry
        while node is not None and node[1] is not None:
            keys.append(node[2])
            node = node[1]
        out = root
        for key in reversed(keys):
            out = join(out, key if isinstance(key, int) else str(key))
        return out or "$"

    while stack:
        entry = stack.pop()
        node, _, _, depth = entry
        if isinstance(node, str):
            why = _surrogate_problem(node, "the string")
            if why is not None:
                raise DocumentError(path_of(entry), why)
        elif isinstance(node, bool):
            pass
        elif isinstance(node, int):
            # bit_length first: the exact comparison is only paid for near-limit values
            if node.bit_length() > 3 * MAX_INT_DIGITS and abs(node) >= _INT_LIMIT:
                raise DocumentError(path_of(entry), f"an integer of more than "
                                                    f"{MAX_INT_DIGITS} digits")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise DocumentError(path_of(entry), f"{node} is not a finite number (NaN and "
                                                    "infinities are refused)")
        elif isinstance(node, _Hostile):
            raise DocumentError(path_of(entry), node.why)
        elif isinstance(node, dict | list):
            if depth >= max_depth:
                raise DocumentError(path_of(entry), f"nested deeper than {max_depth} levels "
                                                    "of objects and arrays")
            if id(node) in seen:
                shared = True
                continue
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if not allow_surrogates and isinstance(key, str) and isinstance(node, dict):
                    why = _surrogate_problem(key, "the key")
                    if why is not None:
                        raise DocumentError(path_of((child, entry, key, depth + 1)), why)
                if isinstance(child, walked):
                    stack.append((child, entry, key, depth + 1))
    if shared and _expanded(value, {}) > MAX_EXPANDED_VALUES:
        raise DocumentError(root or "$", f"the document expands to more than "
                                         f"{MAX_EXPANDED_VALUES} values through YAML aliases")


def _expanded(node: Any, memo: dict[int, int]) -> int:
    """How many values `node` holds once every shared container is copied out (recursive:
    only called once the nesting is known to be at most MAX_DEPTH)."""
    if not isinstance(node, dict | list):
        return 1
    found = memo.get(id(node))
    if found is None:
        children = node.values() if isinstance(node, dict) else node
        found = memo[id(node)] = 1 + sum(_expanded(c, memo) for c in children)
    return found


def _deep_json_path(text: str, max_depth: int) -> str:
    """Where JSON text first nests deeper than `max_depth` (a scan of its brackets and
    strings, for a document too deep for Python's parser); "$" when not found."""
    frames: list[list[Any]] = []  # [is_object, key or index, waiting for a key]
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if tok in "{[":
            if len(frames) >= max_depth:
                path = ""
                for is_obj, key, _ in frames:
                    path = join(path, key if is_obj else int(key)) if key is not None else path
                return path or "$"
            frames.append([tok == "{", None if tok == "{" else 0, tok == "{"])
        elif tok in "}]":
            if frames:
                frames.pop()
        elif not frames:
            continue
        elif tok == ",":
            top = frames[-1]
            if top[0]:
                top[2] = True
            else:
                top[1] += 1
        elif tok == ":":
            frames[-1][2] = False
        elif frames[-1][0] and frames[-1][2]:  # a string in key position
            try:
                frames[-1][1] = json.loads(tok)
            except ValueError:
                frames[-1][1] = tok[1:-1]
    return "$"


def loads_json(text: str | bytes, *, max_depth: int = MAX_DEPTH,
               object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
               allow_surrogates: bool = False) -> Any:
    """Parse JSON text. Raises `json.JSONDecodeError` for a syntax error (with line and
    column) and `DocumentError` for a non-finite number, an over-long integer, a lone
    surrogate escape in a string or key (unless `allow_surrogates`: files Codex writes) or
    nesting deeper than `max_depth`."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")
    try:
        value = json.loads(text, parse_constant=_nonfinite, parse_float=_parse_float,
                           parse_int=_parse_int, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise DocumentError(_deep_json_path(text, max_depth),
                            f"nested deeper than {max_depth} levels of objects and "
                            "arrays") from None
    check_tree(value, max_depth=max_depth, allow_surrogates=allow_surrogates)
    return value


_YAML = "tag:yaml.org,2002:"
#: Scalar tags whose SafeConstructor raises ValueError/KeyError (not a YAMLError) on a bad
#: value written with an explicit tag, e.g. `!!int abc`.
_CHECKED_SCALARS = {f"{_YAML}{t}": t for t in ("int", "float", "bool")}
#: The YAML types that are JSON data; `!!timestamp`, `!!binary`, `!!set`, `!!omap` and
#: `!!pairs` would reach phh as dates, bytes and sets no JSON document can hold.
_JSON_TAGS = frozenset(f"{_YAML}{t}" for t in ("str", "int", "float", "bool", "null", "map",
                                               "seq"))


def _int_problem(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str | None:
    """Why an `!!int` scalar is refused (too many digits, not an integer), or None. The
    digits are counted before converting: `int()` of 4,300+ decimal digits raises, and a
    hex or sexagesimal value converts fine but cannot be printed later."""
    text = node.value.replace("_", "").lstrip("+-")
    if text.isascii() and text.isdigit() and not (text.startswith("0") and len(text) > 1):
        if len(text) > MAX_INT_DIGITS:
            return f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS} digits)"
        return None
    if len(text) > 4 * MAX_INT_DIGITS:  # refused unread: bounds what converting may cost
        return (f"an integer written with {len(text)} characters (at most "
                f"{MAX_INT_DIGITS} digits)")
    try:
        value = loader.construct_yaml_int(node)
    except (ValueError, TypeError, IndexError):
        return f"{node.value[:40]!r} is not an integer"
    if abs(value) >= _INT_LIMIT:
        return f"an integer of more than {MAX_INT_DIGITS} digits"
    return None


def _check_yaml_nodes(loader: yaml.SafeLoader, root: yaml.Node) -> None:
    """Refuse, before anything is constructed: mapping keys that are not strings (a sequence
    or mapping key is unhashable; `1:`, `yes:`, `~:` are not JSON keys), values that are not
    JSON data (dates, bytes, sets), integers of more than MAX_INT_DIGITS digits and
    explicitly tagged scalars their constructor cannot read.
    Iterative; a node reached twice (an alias) is walked once. Raises DocumentError."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag not in _JSON_TAGS:
            raise DocumentError(path or "$", f"a YAML {node.tag.replace(_YAML, '!!')} value "
                                f"(line {node.start_mark.line + 1}) is not JSON data (quote "
                                "it if it is meant as a string)")
        if isinstance(node, yaml.ScalarNode):
            kind = _CHECKED_SCALARS.get(node.tag)
            if kind == "int":
                why = _int_problem(loader, node)
            elif kind is not None:
                try:
                    loader.yaml_constructors[node.tag](loader, node)
                    why = None
                except yaml.YAMLError:
                    why = None  # construction reports it with line and column
                except (ValueError, KeyError, IndexError, TypeError, OverflowError):
                    why = f"{node.value[:40]!r} is not a valid {kind}"
            else:
                why = None
            if why is not None:
                raise DocumentError(path or "$", why)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, join(path, i)) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            for key, child in node.value:
                if key.tag == f"{_YAML}merge":  # `<<: *base`: its keys land in this mapping
                    stack.append((child, path))
                    continue
                if not (isinstance(key, yaml.ScalarNode) and key.tag == f"{_YAML}str"):
                    shape = ("a sequence" if isinstance(key, yaml.SequenceNode) else
                             "a mapping" if isinstance(key, yaml.MappingNode) else
                             f"{key.value[:40]!r} (read as {key.tag.rsplit(':', 1)[-1]})")
                    raise DocumentError(path or "$", f"a mapping key must be a string, not "
                                        f"{shape} (line {key.start_mark.line + 1}; quote a "
                                        "scalar key to make it a string)")
                stack.append((child, join(path, key.value)))


def _deep_yaml_path(text: str, loader: type[yaml.SafeLoader], max_depth: int) -> str:
    """Where YAML text first nests deeper than `max_depth` (its event stream: the parser is
    iterative, only the composer recurses); "$" when not found."""
    frames: list[list[Any]] = []  # [is_mapping, key or index, waiting for a key]
    try:
        for ev in yaml.parse(text, Loader=loader):
            if isinstance(ev, yaml.CollectionStartEvent):
                if len(frames) >= max_depth:
                    path = ""
                    for is_map, key, _ in frames:
                        if key is not None:
                            path = join(path, str(key) if is_map else int(key))
                    return path or "$"
                frames.append([isinstance(ev, yaml.MappingStartEvent), None if isinstance(
                    ev, yaml.MappingStartEvent) else 0, True])
                continue
            if isinstance(ev, yaml.CollectionEndEvent):
                if frames:
                    frames.pop()
            elif not isinstance(ev, yaml.ScalarEvent | yaml.AliasEvent):
                continue
            elif frames and frames[-1][0] and frames[-1][2]:
                frames[-1][1] = ev.value if isinstance(ev, yaml.ScalarEvent) else "*"
                frames[-1][2] = False
                continue
            # a value ended: the enclosing collection moves on
            if frames:
                top = frames[-1]
                if top[0]:
                    top[2] = True
                else:
                    top[1] += 1
    except yaml.YAMLError:
        pass
    return "$"


def loads_yaml(text: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader, *,
               max_depth: int = MAX_DEPTH) -> Any:
    """Parse YAML text with `loader` (a SafeLoader subclass). Raises `yaml.YAMLError` for a
    syntax error and `DocumentError` as `loads_json` does (`.inf` and `.nan` included), and
    for a mapping key that is not a string or a tagged scalar that is not what its tag says.
    The nodes are checked before anything is constructed (a constructor may hash keys)."""
    reader = loader(text)
    try:
        node = reader.get_single_node()
        if node is not None:
            _check_yaml_nodes(reader, node)
        value = reader.construct_document(node) if node is not None else None
    except RecursionError:
        raise DocumentError(_deep_yaml_path(text, loader, max_depth),
                            f"nested deeper than {max_depth} levels of mappings and "
                            "sequences") from None
    finally:
        reader.dispose()
    check_tree(value, max_depth=max_depth)
    return value
