"""Does an output schema fit OpenAI strict structured output (what Codex sends)?

Codex passes a step's `--output-schema` to the model API as
`{"type": "json_schema", "strict": true, "schema": ...}` (docs/codex.md). In strict mode the
API accepts only a subset of JSON Schema and answers anything else with HTTP 400
`invalid_json_schema` on EVERY attempt, so such a schema is refused at submit instead, with
the JSON pointer of each construct the API would refuse:

- the root is an object schema (`"type": "object"`), not `anyOf`;
- every object sets `additionalProperties: false` and lists every property in `required`
  (an optional field is a required one whose type allows null: `["string", "null"]`);
- only these keywords: type, properties, required, additionalProperties, items, enum,
  const, anyOf, $ref (local), $defs/definitions, description, title, and the string
  (pattern, format), number (minimum, maximum, exclusiveMinimum, exclusiveMaximum,
  multipleOf) and array (minItems, maxItems) constraints; no allOf/oneOf/not, if/then/else,
  patternProperties, minLength/maxLength, uniqueItems, default, ...;
- `format` is one of date-time, time, date, duration, email, hostname, ipv4, ipv6, uuid;
- limits: at most 10 levels of object nesting, 5000 properties in all, 1000 enum values in
  all, 120,000 characters of property names, enum values and consts together.
"""

from __future__ import annotations

from typing import Any

TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"})
KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "enum", "const",
    "anyOf", "$ref", "$defs", "definitions", "description", "title",
    "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minItems", "maxItems",
})
ROOT_ONLY = frozenset({"$schema", "$id"})
MAX_NESTING = 10
MAX_PROPERTIES = 5000
MAX_ENUM_VALUES = 1000
MAX_STRING_CHARS = 120_000
#: Problems reported at most (one broken template can repeat the same mistake thousands
#: of times).
MAX_REPORTED = 20


def pointer(base: str, *keys: str | int) -> str:
    """RFC 6901 JSON pointer `base` + keys ('~' and '/' escaped)."""
    for key in keys:
        base += "/" + str(key).replace("~", "~0").replace("/", "~1")
    return base


def _resolve(root: Any, ref: str) -> bool:
    """Does the local `$ref` point at a schema inside `root`?"""
    if ref == "#":
        return True
    if not ref.startswith("#/"):
        return False
    node = root
    for raw in ref[2:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return isinstance(node, dict)


class _Check:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.problems: list[tuple[str, str]] = []
        self.properties = 0
        self.enum_values = 0
        self.chars = 0

    def add(self, where: str, message: str) -> None:
        self.problems.append((where, message))

    def node(self, schema: Any, where: str, depth: int) -> None:
        if not isinstance(schema, dict):
            self.add(where, f"a schema must be an object here, not {schema!r} (boolean "
                            "schemas are not supported in strict mode)")
            return
        allowed = KEYWORDS | ROOT_ONLY if where == "" else KEYWORDS
        for key in schema:
            if key not in allowed:
                self.add(pointer(where, key), f"keyword {key!r} is not supported in strict "
                                              "mode")
        ref = schema.get("$ref")
        if ref is not None and (not isinstance(ref, str) or not _resolve(self.root, ref)):
            self.add(pointer(where, "$ref"), f"$ref {ref!r} must point inside this schema "
                                             "(#/$defs/NAME)")
        types = schema.get("type")
        names = types if isinstance(types, list) else [types] if types is not None else []
        for t in names:
            if t not in TYPES:
                self.add(pointer(where, "type"), f"type {t!r} is not one of "
                                                 f"{', '.join(sorted(TYPES))}")
        fmt = schema.get("format")
        if fmt is not None and fmt not in FORMATS:
            self.add(pointer(where, "format"), f"format {fmt!r} is not supported (one of "
                                               f"{', '.join(sorted(FORMATS))})")
        for key in ("enum", "const"):
            if key in schema:
                values = schema[key] if key == "enum" and isinstance(schema[key], list) \
                    else [schema[key]]
                if key == "enum":
                    self.enum_values += len(values)
                self.chars += sum(len(v) for v in values if isinstance(v, str))
        if "object" in names or "properties" in schema or "additionalProperties" in schema:
            self.object(schema, where, depth + 1)
        items = schema.get("items")
        if items is not None:
            self.node(items, pointer(where, "items"), depth)
        any_of = schema.get("anyOf")
        if any_of is not None:
            if where == "":
                self.add(pointer(where, "anyOf"), "the root schema cannot be anyOf")
            if not isinstance(any_of, list) or not any_of:
                self.add(pointer(where, "anyOf"), "anyOf must be a non-empty array of schemas")
            else:
                for i, sub in enumerate(any_of):
                    self.node(sub, pointer(where, "anyOf", i), depth)
        for defs in ("$defs", "definitions"):
            table = schema.get(defs)
            if isinstance(table, dict):
                for name, sub in table.items():
                    self.node(sub, pointer(where, defs, name), 0)

    def object(self, schema: dict[str, Any], where: str, depth: int) -> None:
        if depth > MAX_NESTING:
            self.add(where, f"objects are nested more than {MAX_NESTING} levels deep")
        if schema.get("additionalProperties") is not False:
            self.add(pointer(where, "additionalProperties") if "additionalProperties" in schema
                     else where, "every object needs \"additionalProperties\": false")
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            self.add(pointer(where, "properties"), "properties must be an object")
            return
        self.properties += len(props)
        self.chars += sum(len(k) for k in props)
        required = schema.get("required", [])
        if not isinstance(required, list):
            self.add(pointer(where, "required"), "required must be an array of names")
            required = []
        missing = [k for k in props if k not in required]
        if missing:
            self.add(pointer(where, "required") if "required" in schema else where,
                     "every property must be listed in required (an optional field is a "
                     "required one that may be null, e.g. \"type\": [\"string\", \"null\"]); "
                     f"missing: {', '.join(missing)}")
        unknown = [k for k in required if k not in props]
        if unknown:
            self.add(pointer(where, "required"),
                     f"required names properties that do not exist: {', '.join(map(str, unknown))}")
        for key, sub in props.items():
            self.node(sub, pointer(where, "properties", key), depth)


def strict_problems(schema: Any) -> list[tuple[str, str]]:
    """Every strict-mode violation in `schema` as (JSON pointer, message); [] when the model
    API will accept it. The root's pointer is "" (show it as "#")."""
    check = _Check(schema)
    if not isinstance(schema, dict) or schema.get("type") != "object":
        check.add("", "the root must be an object schema (\"type\": \"object\")")
    check.node(schema, "", 0)
    if check.properties > MAX_PROPERTIES:
        check.add("", f"{check.properties} properties in all (strict mode allows "
                      f"{MAX_PROPERTIES})")
    if check.enum_values > MAX_ENUM_VALUES:
        check.add("", f"{check.enum_values} enum values in all (strict mode allows "
                      f"{MAX_ENUM_VALUES})")
    if check.chars > MAX_STRING_CHARS:
        check.add("", f"{check.chars} characters of property names, enum values and consts "
                      f"(strict mode allows {MAX_STRING_CHARS})")
    return check.problems


def describe(problems: list[tuple[str, str]]) -> list[str]:
    """`#/pointer: message` lines, at most MAX_REPORTED (+ how many more)."""
    lines = [f"#{where}: {message}" for where, message in problems[:MAX_REPORTED]]
    if len(problems) > MAX_REPORTED:
        lines.append(f"... and {len(problems) - MAX_REPORTED} more")
    return lines
