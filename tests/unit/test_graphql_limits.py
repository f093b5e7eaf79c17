from __future__ import annotations

import pytest

from interfaces.errors import error_code, public_message
from interfaces.graphql.limits import (
    MAX_DOCUMENT_NESTING,
    MAX_INTROSPECTION_DEPTH,
    MAX_QUERY_COMPLEXITY,
    MAX_QUERY_DEPTH,
    IntrospectionDisabledError,
    MalformedQueryError,
    QueryLimitError,
    bracket_nesting,
    check_query,
    measure_query,
)
from projections.queries import MAX_PAGE_SIZE

# graphql-js 16 `getIntrospectionQuery()`, the document GraphiQL sends to learn the schema.
GRAPHIQL_SCHEMA_QUERY = """
query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name } } } } } } }
}
"""


def nested_fields(levels: int) -> str:
    """`{ f { f { ... { leaf } } } }` with `levels` fields on the deepest path."""
    return "{ " + "f { " * (levels - 1) + "leaf" + " }" * levels


class TestQueryDepth:
    def test_depth_counts_the_fields_on_the_deepest_path(self) -> None:
        assert measure_query("{ viewer { id } }").depth == 2
        assert measure_query("{ a b { c { d } } e { f } }").depth == 3

    def test_fragments_are_expanded_where_they_are_spread(self) -> None:
        query = "{ a { ...Inner } } fragment Inner on A { b { ...Leaf } } fragment Leaf on B { c { d } }"
        assert measure_query(query).depth == 4

    def test_inline_fragments_and_spreads_add_no_level_of_their_own(self) -> None:
        assert measure_query("{ a { ... on A { ... on A { b } } } }").depth == 2

    def test_a_query_at_the_limit_is_accepted(self) -> None:
        assert check_query(nested_fields(MAX_QUERY_DEPTH), None, allow_introspection=False).depth == MAX_QUERY_DEPTH

    def test_a_query_one_level_deeper_is_refused_with_its_depth_and_the_limit(self) -> None:
        with pytest.raises(QueryLimitError) as refused:
            check_query(nested_fields(MAX_QUERY_DEPTH + 1), None, allow_introspection=False)
        assert str(refused.value) == f"query depth {MAX_QUERY_DEPTH + 1} exceeds the limit of {MAX_QUERY_DEPTH}"
        assert error_code(refused.value) == "BAD_USER_INPUT"

    def test_depth_hidden_in_fragments_is_refused_too(self) -> None:
        fragments = " ".join(f"fragment F{i} on T {{ f {{ ...F{i + 1} }} }}" for i in range(MAX_QUERY_DEPTH))
        query = "{ ...F0 } " + fragments + f" fragment F{MAX_QUERY_DEPTH} on T {{ leaf }}"
        with pytest.raises(QueryLimitError, match="query depth 11 exceeds"):
            check_query(query, None, allow_introspection=False)


class TestQueryComplexity:
    def test_every_field_costs_one(self) -> None:
        assert measure_query("{ viewer { id } other }").complexity == 3

    def test_aliases_and_repeated_fields_count_each_time(self) -> None:
        assert measure_query("{ a: viewer { id } b: viewer { id } viewer { id } }").complexity == 6

    def test_first_multiplies_the_cost_of_the_selections_below_it(self) -> None:
        query = "{ conversations(first: 20) { edges { node { id } } } }"
        assert measure_query(query).complexity == 1 + 20 * (1 + (1 + 1))

    def test_nested_pages_multiply(self) -> None:
        query = "{ a(first: 10) { b(first: 5) { c } } }"
        assert measure_query(query).complexity == 1 + 10 * (1 + 5 * 1)

    def test_first_from_a_variable_uses_the_given_value(self) -> None:
        query = "query Page($n: Int) { a(first: $n) { b } }"
        assert measure_query(query, {"n": 7}).complexity == 1 + 7

    def test_first_from_a_variable_left_out_uses_its_declared_default(self) -> None:
        query = "query Page($n: Int = 3) { a(first: $n) { b } }"
        assert measure_query(query, {}).complexity == 1 + 3

    @pytest.mark.parametrize("first", ["$missing", "0", "-5", "100000", "null"])
    def test_a_page_size_the_resolver_would_not_serve_is_charged_the_largest_page(self, first: str) -> None:
        assert measure_query(f"{{ a(first: {first}) {{ b }} }}").complexity == 1 + MAX_PAGE_SIZE

    def test_fields_without_first_do_not_multiply(self) -> None:
        assert measure_query("{ a(last: 50, after: \"x\") { b } }").complexity == 2

    def test_a_fragment_costs_its_fields_every_time_it_is_spread(self) -> None:
        query = "{ a(first: 10) { ...Item } b { ...Item } } fragment Item on T { x y { z } }"
        # Item costs 1 + (1 + 1) = 3: under `a` ten times, under `b` once.
        assert measure_query(query).complexity == (1 + 10 * 3) + (1 + 3)

    def test_fragments_inside_fragments_multiply_with_their_page(self) -> None:
        query = (
            "{ list(first: 4) { ...Row } } "
            "fragment Row on T { cells(first: 3) { ...Cell } } fragment Cell on C { value }"
        )
        assert measure_query(query).complexity == 1 + 4 * (1 + 3 * 1)

    def test_only_the_costliest_operation_counts_because_only_one_runs(self) -> None:
        query = "query Small { a } query Large { a(first: 5) { b c } }"
        assert measure_query(query).complexity == 1 + 5 * 2

    def test_a_query_over_the_limit_is_refused_with_its_score_the_limit_and_the_rule(self) -> None:
        query = "{ a(first: 100) { b(first: 100) { c } } }"  # 1 + 100 × (1 + 100) = 10,101
        with pytest.raises(QueryLimitError) as refused:
            check_query(query, None, allow_introspection=False)
        message = str(refused.value)
        assert message.startswith(f"query complexity 10101 exceeds the limit of {MAX_QUERY_COMPLEXITY}")
        assert "`first: N` multiplies" in message
        assert error_code(refused.value) == "BAD_USER_INPUT"

    def test_the_same_query_with_smaller_pages_is_accepted(self) -> None:
        query = "query($n: Int) { a(first: 10) { b(first: $n) { c } } }"
        assert check_query(query, {"n": 10}, allow_introspection=False).complexity == 1 + 10 * (1 + 10)

    def test_fragments_spread_twice_at_every_level_are_measured_without_expanding_them(self) -> None:
        # 40 levels of "spread the next fragment twice": 2^40 fields if expanded naively.
        fragments = " ".join(f"fragment F{i} on T {{ ...F{i + 1} ...F{i + 1} }}" for i in range(40))
        query = "{ ...F0 } " + fragments + " fragment F40 on T { leaf }"
        assert measure_query(query).complexity == 2**40


class TestIntrospectionDetection:
    @pytest.mark.parametrize(
        "query",
        [
            "{ __schema { queryType { name } } }",
            '{ __type(name: "Viewer") { name } }',
            "{ alias: __schema { types { name } } }",
            "{ ...Schema } fragment Schema on Query { __schema { types { name } } }",
            "{ ... on Query { __type(name: \"Viewer\") { name } } }",
        ],
    )
    def test_schema_and_type_fields_are_introspection_wherever_they_appear(self, query: str) -> None:
        assert measure_query(query).uses_introspection

    def test_typename_is_not_introspection(self) -> None:
        assert not measure_query("{ __typename viewer { __typename id } }").uses_introspection

    def test_introspection_is_refused_when_disabled_with_a_forbidden_code(self) -> None:
        with pytest.raises(IntrospectionDisabledError) as refused:
            check_query("{ __schema { queryType { name } } }", None, allow_introspection=False)
        assert error_code(refused.value) == "FORBIDDEN"
        assert public_message(refused.value) == "introspection is disabled"

    def test_introspection_is_refused_before_any_limit_is_reported(self) -> None:
        deep = "{ __schema { types { " + "fields { type { " * 10 + "name" + " } }" * 10 + " } } }"
        with pytest.raises(IntrospectionDisabledError):
            check_query(deep, None, allow_introspection=False)

    def test_graphiqls_schema_query_fits_the_limits_when_introspection_is_allowed(self) -> None:
        shape = check_query(GRAPHIQL_SCHEMA_QUERY, None, allow_introspection=True)
        assert MAX_QUERY_DEPTH < shape.depth <= MAX_INTROSPECTION_DEPTH

    def test_introspection_deeper_than_its_own_limit_is_refused(self) -> None:
        wrappers = MAX_INTROSPECTION_DEPTH
        query = "{ __schema { types { " + "ofType { " * wrappers + "name" + " }" * wrappers + " } } }"
        with pytest.raises(QueryLimitError, match=f"exceeds the limit of {MAX_INTROSPECTION_DEPTH}"):
            check_query(query, None, allow_introspection=True)


class TestMalformedDocuments:
    @pytest.mark.parametrize("query", ["", "{", "{ viewer { id }", "query { }", "{ a(: 1) }", "}{"])
    def test_a_syntax_error_is_refused_as_bad_user_input(self, query: str) -> None:
        with pytest.raises(MalformedQueryError, match="^syntax error: ") as refused:
            measure_query(query)
        assert error_code(refused.value) == "BAD_USER_INPUT"

    def test_a_fragment_cycle_is_refused_instead_of_looping(self) -> None:
        query = "{ ...A } fragment A on T { x ...B } fragment B on T { ...A }"
        with pytest.raises(MalformedQueryError, match="fragment A spreads itself"):
            measure_query(query)

    def test_a_fragment_spreading_itself_is_refused(self) -> None:
        with pytest.raises(MalformedQueryError, match="fragment A spreads itself"):
            measure_query("{ ...A } fragment A on T { x { ...A } }")

    def test_an_unknown_fragment_is_left_to_tartiflettes_validation(self) -> None:
        assert measure_query("{ a { ...Missing } }").depth == 1

    def test_a_non_ascii_unicode_escape_is_refused_instead_of_failing_inside_the_parser(self) -> None:
        with pytest.raises(MalformedQueryError, match="could not be read"):
            measure_query('{ a(x: "caf\\u00e9") }')

    def test_brackets_nested_past_the_limit_are_refused_before_the_parser_runs(self) -> None:
        # libgraphqlparser crashes the process near 20,000 levels: this must never reach it.
        query = "{ " + "a { " * 100_000 + "b" + " }" * 100_001
        with pytest.raises(QueryLimitError, match=f"more than {MAX_DOCUMENT_NESTING} levels"):
            measure_query(query)

    def test_deeply_nested_list_values_are_refused_before_the_parser_runs(self) -> None:
        query = "{ a(x: " + "[" * 50_000 + "1" + "]" * 50_000 + ") }"
        with pytest.raises(QueryLimitError, match="nests brackets"):
            measure_query(query)

    def test_a_long_chain_of_fragments_is_refused_without_exhausting_the_stack(self) -> None:
        fragments = " ".join(f"fragment F{i} on T {{ ...F{i + 1} }}" for i in range(5000))
        query = "{ ...F0 } " + fragments + " fragment F5000 on T { leaf }"
        with pytest.raises(QueryLimitError, match="nests selections"):
            measure_query(query)


class TestBracketNesting:
    def test_selection_sets_and_lists_nest(self) -> None:
        assert bracket_nesting("{ a(x: [[1]]) { b } }", 64) == 3

    @pytest.mark.parametrize(
        "query",
        [
            '{ a(x: "{{{{[[[[") }',
            '{ a(x: "\\"{{{{") }',
            '{ a(x: """{{{{\n[[[[ \\""" {{{{""") }',
            "{ a # {{{{[[[[\n }",
            "{ a # {{{{\r }",
        ],
    )
    def test_brackets_in_strings_and_comments_do_not_count(self, query: str) -> None:
        assert bracket_nesting(query, 64) == 1

    def test_a_string_cannot_hide_brackets_that_follow_it(self) -> None:
        # An escaped backslash ends the escape: the quote after it closes the string.
        assert bracket_nesting('{ a(x: "\\\\") { b { c } } }', 64) == 3

    def test_the_scan_resumes_right_after_a_string_ends(self) -> None:
        assert bracket_nesting('{ a(x: ["""x"""], y: ["z"]) { b } }', 64) == 2

    def test_closing_brackets_inside_strings_do_not_lower_the_count(self) -> None:
        assert bracket_nesting('{ a(x: "}}}}") { b(y: "]]]]") { c } } }', 64) == 3

    def test_the_scan_stops_where_the_lexer_would_stop_at_an_unterminated_string(self) -> None:
        assert bracket_nesting('{ a(x: "open\n{{{{ }', 64) == 1

    def test_the_scan_stops_once_past_the_ceiling(self) -> None:
        assert bracket_nesting("{" * 1000, 10) == 11


class TestQueryLength:
    def test_a_query_longer_than_the_cap_is_refused_before_parsing(self) -> None:
        from interfaces.graphql.limits import MAX_QUERY_CHARS, QueryLimitError, check_query

        query = "{ viewer { id } }" + " " * MAX_QUERY_CHARS
        with pytest.raises(QueryLimitError, match="variables"):
            check_query(query, None, allow_introspection=False)
