"""The shape a GraphQL document may have before it runs: depth, complexity, no introspection.

Measured on the syntax tree alone, before tartiflette validates or executes anything:

* depth: the deepest chain of nested fields, fragments expanded (`{ viewer { id } }` is 2).
  Fragment spreads and inline fragments add no level of their own.
* complexity: every field costs 1; a field with a `first: N` argument multiplies the cost of its
  selections by N, so `conversations(first: 20) { edges { node { id } } }` costs
  1 + 20 × (1 + (1 + 1)) = 61. N is the literal or the variable's value (else the variable's
  declared default) when it is an integer in 1..MAX_PAGE_SIZE; anything else is charged
  MAX_PAGE_SIZE, the largest page a resolver serves (resolvers refuse other values themselves).
  Aliases and repeated fields count each time; `@skip`/`@include` are ignored (worst case).
* introspection: a `__schema` or `__type` field anywhere; `__typename` stays allowed.

A document may hold several operations and only one runs, so depth and complexity are the
largest over its operations; fragments no operation spreads are not counted (tartiflette
refuses such documents anyway).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The syntax-only half of tartiflette's public `parse_to_document`: the public function also
# needs a cooked schema and runs validation, which is exactly what must not run before the
# document is known to be small enough.
from tartiflette.language.parsers.libgraphqlparser.parser import _parse_to_json_ast
from tartiflette.types.exceptions.tartiflette import GraphQLSyntaxError

from domain.errors import AccessDeniedError
from interfaces.errors import BadRequestError
from projections.queries import MAX_PAGE_SIZE

# The deepest query a screen needs (conversations → edges → node → lastMessage → field) is 5
# levels; 10 leaves room for fragments and wrappers while refusing queries that drill through
# object links just to multiply the work.
MAX_QUERY_DEPTH = 10
# GraphiQL's schema query (graphql-js `getIntrospectionQuery`) is 13 deep: __schema → types →
# fields → args → type, then 7 nested `ofType`s; 16 leaves room for clients that unwrap more.
# Only documents that use introspection get this limit, and production refuses those first.
MAX_INTROSPECTION_DEPTH = 16
# A full page (first: 100) of conversations with their last message and participants scores
# about 2,000; 5,000 allows that plus a second list, and refuses nested fan-outs such as 100
# conversations × 100 messages (about 40,000), each level of which is a database round trip.
MAX_QUERY_COMPLEXITY = 5000
# Nesting of `{}`/`[]` in the raw text, checked before the parser sees it: libgraphqlparser
# recurses in C and crashes the whole process (segfault) near 20,000 levels, lists nested
# 5,000 deep take seconds to parse, and Python's JSON decoder gives up near 1,000. Real
# documents stay far below 64 (selection depth ≤ 16 plus a few levels of input objects).
MAX_DOCUMENT_NESTING = 64

# Message text belongs in variables, so real documents are a few KB (GraphiQL's introspection
# query is ~2 KB); a 240 KB document of 120,000 fields took ~3 s to parse, blocking the loop.
MAX_QUERY_CHARS = 20_000

INTROSPECTION_FIELDS = frozenset({"__schema", "__type"})


class QueryRefusedError(Exception):
    """The document was refused before execution; subclasses say why (and so which code)."""


class MalformedQueryError(QueryRefusedError, BadRequestError):
    """The document cannot be parsed, or its fragments spread each other in a cycle."""


class QueryLimitError(QueryRefusedError, BadRequestError):
    """The document is too deep, too nested or too costly to run."""


class IntrospectionDisabledError(QueryRefusedError, AccessDeniedError):
    """Introspection is a development tool; elsewhere the schema is not published."""


@dataclass(frozen=True)
class QueryShape:
    depth: int
    complexity: int
    uses_introspection: bool

    def beside(self, other: QueryShape) -> QueryShape:
        """The shape of two selections in one selection set."""
        return QueryShape(
            max(self.depth, other.depth),
            self.complexity + other.complexity,
            self.uses_introspection or other.uses_introspection,
        )


EMPTY_SHAPE = QueryShape(depth=0, complexity=0, uses_introspection=False)


def check_query(query: str, variables: Mapping[str, Any] | None, *, allow_introspection: bool) -> QueryShape:
    """The document's shape, or a `QueryRefusedError` naming the first limit it breaks."""
    if len(query) > MAX_QUERY_CHARS:
        raise QueryLimitError(f"the query is longer than {MAX_QUERY_CHARS} characters; pass values as variables")
    shape = measure_query(query, variables)
    if shape.uses_introspection and not allow_introspection:
        raise IntrospectionDisabledError("introspection is disabled")
    depth_limit = MAX_INTROSPECTION_DEPTH if shape.uses_introspection else MAX_QUERY_DEPTH
    if shape.depth > depth_limit:
        raise QueryLimitError(f"query depth {shape.depth} exceeds the limit of {depth_limit}")
    if shape.complexity > MAX_QUERY_COMPLEXITY:
        raise QueryLimitError(
            f"query complexity {shape.complexity} exceeds the limit of {MAX_QUERY_COMPLEXITY} "
            "(each field costs 1; a field with `first: N` multiplies the cost of its selections by N)"
        )
    return shape


def measure_query(query: str, variables: Mapping[str, Any] | None = None) -> QueryShape:
    if bracket_nesting(query, MAX_DOCUMENT_NESTING) > MAX_DOCUMENT_NESTING:
        raise QueryLimitError(f"query nests brackets more than {MAX_DOCUMENT_NESTING} levels deep")
    return _Measurer(parse_query(query), variables or {}).document()


def parse_query(query: str) -> dict[str, Any]:
    """The document's syntax tree as libgraphqlparser's JSON (`kind`, `selectionSet`...)."""
    try:
        return json.loads(_parse_to_json_ast(query))
    except GraphQLSyntaxError as error:
        raise MalformedQueryError(f"syntax error: {error}") from None
    except ValueError:
        # libgraphqlparser writes a `\u` escape beyond ASCII as a raw Latin-1 byte, which is
        # not valid UTF-8; tartiflette itself would fail on it with an internal error.
        raise MalformedQueryError(
            "the query could not be read: write non-ASCII text as plain characters or pass it in variables"
        ) from None


_CODE_STOPS = re.compile(r'[{}\[\]"#]')
_STRING_STOPS = re.compile(r'["\\\n\r]')
_LINE_END = re.compile(r"[\n\r]")


def bracket_nesting(query: str, ceiling: int) -> int:
    """The deepest nesting of `{}`/`[]` outside strings and comments; stops past `ceiling`.

    Strings are skipped the way the GraphQL lexer reads them, so brackets inside string
    literals never count and a string can never hide real brackets. Where the lexer would stop
    (an unterminated string) the scan stops too: the parser reads nothing past that point.
    """
    deepest = nesting = 0
    position = 0
    while position >= 0 and (stop := _CODE_STOPS.search(query, position)) is not None:
        char, position = stop.group(), stop.end()
        if char in "{[":
            nesting += 1
            deepest = max(deepest, nesting)
            if deepest > ceiling:
                break
        elif char in "}]":
            nesting = max(nesting - 1, 0)  # a stray closer is a syntax error the parser stops at
        elif char == "#":
            line_end = _LINE_END.search(query, position)
            position = line_end.end() if line_end else len(query)
        elif query.startswith('""', position):
            position = _block_string_end(query, position + 2)
        else:
            position = _string_end(query, position)
    return deepest


def _block_string_end(query: str, position: int) -> int:
    """Just past the `\"\"\"` closing a block string, or -1; `\\\"\"\"` is its only escape."""
    while (end := query.find('"""', position)) >= 0:
        if query[end - 1] != "\\":
            return end + 3
        position = end + 3
    return -1


def _string_end(query: str, position: int) -> int:
    """Just past the quote closing a string, or -1 (a line break ends the lexer's reading)."""
    while (stop := _STRING_STOPS.search(query, position)) is not None:
        if stop.group() == '"':
            return stop.end()
        if stop.group() == "\\":
            position = stop.end() + 1
            continue
        return -1
    return -1


class _Measurer:
    """One walk over a document; each fragment is measured once (its shape has no context)."""

    def __init__(self, document: dict[str, Any], variables: Mapping[str, Any]) -> None:
        definitions = document.get("definitions") or []
        self.operations = [node for node in definitions if node.get("kind") == "OperationDefinition"]
        self.fragments = {
            node["name"]["value"]: node for node in definitions if node.get("kind") == "FragmentDefinition"
        }
        self.page_sizes = _variable_page_sizes(self.operations, variables)
        self.measured: dict[str, QueryShape] = {}
        self.expanding: set[str] = set()

    def document(self) -> QueryShape:
        shapes = [self.selection_set(operation, nesting=1) for operation in self.operations]
        return QueryShape(
            max((shape.depth for shape in shapes), default=0),
            max((shape.complexity for shape in shapes), default=0),
            any(shape.uses_introspection for shape in shapes),
        )

    def selection_set(self, parent: dict[str, Any], nesting: int) -> QueryShape:
        # The text was checked for bracket nesting; this bounds chains of fragments spreading
        # fragments, which nest selection sets without nesting brackets.
        if nesting > MAX_DOCUMENT_NESTING:
            raise QueryLimitError(f"query nests selections more than {MAX_DOCUMENT_NESTING} levels deep")
        shape = EMPTY_SHAPE
        for selection in (parent.get("selectionSet") or {}).get("selections") or []:
            kind = selection.get("kind")
            if kind == "Field":
                shape = shape.beside(self.field(selection, nesting))
            elif kind == "InlineFragment":
                shape = shape.beside(self.selection_set(selection, nesting + 1))
            elif kind == "FragmentSpread":
                shape = shape.beside(self.fragment(selection["name"]["value"], nesting))
        return shape

    def field(self, field: dict[str, Any], nesting: int) -> QueryShape:
        inner = self.selection_set(field, nesting + 1)
        return QueryShape(
            depth=1 + inner.depth,
            complexity=1 + self.page_size(field) * inner.complexity,
            uses_introspection=field["name"]["value"] in INTROSPECTION_FIELDS or inner.uses_introspection,
        )

    def fragment(self, name: str, nesting: int) -> QueryShape:
        if name in self.measured:
            return self.measured[name]
        if name in self.expanding:
            raise MalformedQueryError(f"fragment {name} spreads itself (directly or through other fragments)")
        definition = self.fragments.get(name)
        if definition is None:
            return EMPTY_SHAPE  # an unknown fragment: tartiflette's validation names it
        self.expanding.add(name)
        shape = self.selection_set(definition, nesting + 1)
        self.expanding.discard(name)
        self.measured[name] = shape
        return shape

    def page_size(self, field: dict[str, Any]) -> int:
        for argument in field.get("arguments") or []:
            if argument["name"]["value"] != "first":
                continue
            value = argument["value"]
            if value.get("kind") == "IntValue":
                return _charged_page_size(int(value["value"]))
            if value.get("kind") == "Variable":
                return self.page_sizes.get(value["name"]["value"], MAX_PAGE_SIZE)
            return MAX_PAGE_SIZE
        return 1


def _variable_page_sizes(operations: list[dict[str, Any]], variables: Mapping[str, Any]) -> dict[str, int]:
    """What `first: $name` is charged: the given value, else the largest declared default.

    One table for the whole document keeps fragments measured once; taking the largest
    default when operations disagree can only overcharge.
    """
    sizes: dict[str, int] = {}
    for operation in operations:
        for definition in operation.get("variableDefinitions") or []:
            name = definition["variable"]["name"]["value"]
            default = definition.get("defaultValue") or {}
            charged = _charged_page_size(int(default["value"]) if default.get("kind") == "IntValue" else None)
            sizes[name] = max(sizes.get(name, 0), charged)
    for name, value in variables.items():
        sizes[name] = _charged_page_size(value)
    return sizes


def _charged_page_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PAGE_SIZE:
        return value
    return MAX_PAGE_SIZE
