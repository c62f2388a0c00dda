"""approvals.sql_display: the statement a reviewer reads is the statement as sent,
laid out by sqlglot but never rewritten by it, escaped, with the values at their
placeholders; the values and the estimate as the sidecar sent them."""

from __future__ import annotations

import re
from typing import Any

import pytest

from approvals import sql_display as d
from sidecar.engine import scanning


def _text(text: str, **kwargs: bool) -> str:
    return "".join(p.text for p in d.layout(text, **kwargs))


def _tokens(text: str) -> list[str]:
    return [text[t.start : t.end + 1] for t in scanning.scan(text)]


def _plain(html: str) -> str:
    """The HTML's text, as a browser shows it (the module escapes with html.escape)."""
    import html as htmllib

    return htmllib.unescape(re.sub(r"<[^>]+>", "", html))


# --- layout -----------------------------------------------------------------------------


def test_placeholders_survive_and_clauses_get_their_own_lines() -> None:
    text = "UPDATE orders SET status = $1 WHERE id = $2 AND region = $3"
    shown = _text(text)
    assert shown.splitlines() == [
        "UPDATE orders SET status = $1",
        "WHERE",
        "  id = $2 AND region = $3",
    ]
    assert [p.n for p in d.layout(text) if p.n] == [1, 2, 3]


def test_placeholders_next_to_commas_survive() -> None:
    # sqlglot's own tokenizer reads "$1,$" as a dollar quote; PostgreSQL's does not.
    text = "insert into t (a,b) values ($1,$2),($3,$4)"
    shown = _text(text)
    assert "\n" in shown
    assert _tokens(shown) == _tokens(text)
    assert [p.n for p in d.layout(text) if p.n] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "text",
    [
        # sqlglot rewrites all of these when it prints them.
        "select now(), x::int, a b from t where y != $1",
        "SELECT $$it's$$, E'a\\'b', \"Mixed Case\" FROM t WHERE d > current_date - $1",
        "delete from public.customers where id in (select id from gone where at < $1)",
        "select 1 -- trailing comment\nfrom t /* block */ where a = $1",
        "UPDATE t SET a = $1; DELETE FROM u WHERE b = $1",
        "SELECT naïve, café FROM t WHERE ü = $1",
    ],
)
def test_the_laid_out_statement_has_exactly_the_tokens_sent(text: str) -> None:
    shown = _text(text)
    assert _tokens(shown) == _tokens(text)
    # and the comments stay on their lines: nothing after "--" but the comment
    for line in shown.splitlines():
        if "--" in line:
            assert line.rstrip().endswith("trailing comment")


def test_the_layout_picks_up_again_after_what_sqlglot_rewrites() -> None:
    # sqlglot prints "CAST(x AS DATE)" and "CURRENT_TIMESTAMP": the tokens differ there,
    # and agree again after.
    shown = _text("select a from t where now()::date > $1 and b = $2 order by a limit 5")
    assert shown.splitlines() == [
        "select",
        "  a",
        "from t",
        "where now()::date > $1 and b = $2",  # the text's own case and tokens
        "order by",
        "  a",
        "limit 5",
    ]


def test_a_long_text_keeps_its_own_layout() -> None:
    text = "SELECT " + ", ".join(f"c{i}" for i in range(2_000)) + " FROM t WHERE a = $1"
    assert len(text) > d.MAX_FORMAT_CHARS
    assert _text(text) == text


def test_an_unreadable_text_is_shown_as_sent() -> None:
    for text in ("select 'unterminated", "<unparseable statement: 12 bytes>"):
        assert _text(text) == text
        assert _plain(d.highlight(text)) == text


def test_without_pretty_the_text_keeps_its_spacing() -> None:
    text = "UPDATE orders SET status = $1 WHERE id = $2"
    assert _text(text, pretty=False) == text


def test_multi_statement_placeholders_are_numbered_per_statement() -> None:
    text = "UPDATE t SET a = $1 WHERE b = $2; DELETE FROM u WHERE c = $1;"
    assert [(p.statement, p.n) for p in d.layout(text) if p.n] == [(0, 1), (0, 2), (1, 1)]
    assert d.statement_count(d.layout(text)) == 2
    assert d.statement_count(d.layout("SELECT 1")) == 1
    assert d.has_placeholders(d.layout(text))
    assert not d.has_placeholders(d.layout("DELETE FROM t"))


# --- highlighting and escaping ----------------------------------------------------------


def test_tokens_are_classed() -> None:
    html = d.highlight("SELECT 'a', 42, $1 FROM t -- why\nWHERE x >= 1")
    assert '<span class="sql-k">SELECT</span>' in html
    assert '<span class="sql-s">&#x27;a&#x27;</span>' in html
    assert '<span class="sql-m">42</span>' in html
    assert '<span class="sql-ph">$1</span>' in html
    assert '<span class="sql-c">-- why</span>' in html
    assert '<span class="sql-o">&gt;=</span>' in html


def test_markup_and_quotes_in_the_statement_are_escaped() -> None:
    text = 'SELECT \'<script>alert(1)</script>\', "a""<b>" FROM t WHERE x = $1'
    html = d.highlight(text)
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;a&quot;&quot;&lt;b&gt;&quot;" in html
    assert "'" not in html  # every quote escaped, in text and attributes alike
    assert _tokens(_plain(html)) == _tokens(text)


def test_values_at_their_placeholders_are_escaped_too() -> None:
    values = d.shown_values(
        [
            {"statement": 0, "n": 1, "value": "'<script>alert(\"x\")</script>'"},
            {"statement": 0, "n": 2, "classification": "pii.email"},
        ]
    )
    html = d.highlight("UPDATE t SET a = $1 WHERE email = $2", values)
    assert "<script>" not in html and '"x"' not in html
    assert 'title="$1 = &#x27;&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#x27;"' in html
    assert '<span class="sql-bound is-redacted"><span class="sql-ph">$2</span>' in html
    assert "redacted (pii.email)" in html


def test_values_go_to_the_placeholders_of_their_statement() -> None:
    values = d.shown_values(
        [{"statement": 0, "n": 1, "value": "'first'"}, {"statement": 1, "n": 1, "value": "7"}]
    )
    plain = _plain(d.highlight("UPDATE t SET a = $1; DELETE FROM u WHERE c = $1", values))
    assert "$1'first'" in plain and "$17" in plain
    assert plain.index("'first'") < plain.index("DELETE") < plain.index("$17")


def test_a_long_value_is_cut_inline_but_kept_whole_in_its_title() -> None:
    long = "'" + "x" * 100 + "'"
    (value,) = d.shown_values([{"n": 1, "value": long}])
    assert len(value.inline) == d.INLINE_VALUE_CHARS and value.inline.endswith("…")
    html = d.highlight("SELECT $1", [value])
    escaped = long.replace("'", "&#x27;")
    assert f'title="$1 = {escaped}"' in html


# --- values -----------------------------------------------------------------------------


def test_values_in_order_and_grouped_by_statement() -> None:
    values = d.shown_values(
        [
            {"statement": 1, "n": 1, "value": "7"},
            {"statement": 0, "n": 2, "classification": "pii.email"},
            {"statement": 0, "n": 1, "value": "'refunded'"},
        ]
    )
    assert [(v.statement, v.placeholder, v.value, v.classification) for v in values] == [
        (0, "$1", "'refunded'", ""),
        (0, "$2", None, "pii.email"),
        (1, "$1", "7", ""),
    ]
    groups = d.value_groups(values)
    assert [(g.number, len(g.values)) for g in groups] == [(1, 2), (2, 1)]


def test_items_outside_the_contract_are_left_out() -> None:
    raw = [
        "'x'",
        {"n": "1", "value": "'x'"},
        {"n": 0, "value": "'x'"},
        {"n": True, "value": "'x'"},
        {"statement": -1, "n": 1, "value": "'x'"},
        {"n": 3},
        {"n": 4, "value": 5},
        {"n": 5, "value": "'kept'"},  # no statement: the first
        {"n": 6, "value": "'a@b.example'", "classification": "pii.email"},  # stays redacted
    ]
    assert d.shown_values(raw) == (
        d.ShownValue(0, 5, "'kept'"),
        d.ShownValue(0, 6, None, "pii.email"),
    )
    assert d.shown_values(None) == () and d.shown_values({"n": 1}) == ()


# --- estimate ---------------------------------------------------------------------------


def test_estimate_with_thousands_separators() -> None:
    view = d.estimate({"rows": {"orders": 993, "big": 1234567}, "top": "ModifyTable", "error": ""})
    assert view is not None
    assert [(t.table, t.rows_text) for t in view.tables] == [
        ("big", "1,234,567"),
        ("orders", "993"),
    ]
    assert view.top == "ModifyTable" and view.error == ""


def test_estimate_error_and_none() -> None:
    failed = d.estimate({"rows": {}, "top": "", "error": "EXPLAIN failed: permission denied"})
    assert failed is not None and failed.error == "EXPLAIN failed: permission denied"
    assert failed.tables == ()
    nothings: list[Any] = [{}, None, [], {"rows": {}, "top": "", "error": ""}]
    for nothing in nothings:
        assert d.estimate(nothing) is None
    odd = d.estimate({"rows": {"a": "many", "b": -1, "c": True, "d": 2.6}})
    assert odd is not None and [(t.table, t.rows) for t in odd.tables] == [("d", 3)]


def test_a_text_sqlglot_half_understands_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    text = "SET ON AND $1 VALUES"  # sqlglot parses it as an opaque command, and says so
    with caplog.at_level("DEBUG"):
        assert _text(text) == text
    assert not [r for r in caplog.records if r.name.startswith("sqlglot")]
