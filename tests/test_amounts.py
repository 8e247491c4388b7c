"""The one share/count rule (`curate.amounts`): k = ceil(total * pct / 100), at least 1; a count above the total is an error."""
from __future__ import annotations

import pytest

from curate.amounts import check_amount, parse_amount
from curate.errors import CurateError


def test_the_rounding_rule() -> None:
    assert parse_amount("10%", 64) == 7  # 6.4 rounds up
    assert parse_amount("2%", 54_400) == 1_088  # exact: no float error pushes it to 1,089
    assert parse_amount("0.1", 64) == 7  # a fraction is the same share
    assert parse_amount("0.01%", 100) == 1  # at least one row
    assert parse_amount("100%", 64) == 64
    assert parse_amount("64", 64) == 64


@pytest.mark.parametrize("text, message", [
    ("0%", "'0%': expected a percentage"),
    ("101%", "'101%': expected a percentage"),
    ("-3", "'-3': expected a percentage"),
    ("abc", "'abc': expected a percentage"),
    ("0", "'0': must be at least 1 row"),
])
def test_bad_text_is_refused_before_the_total_is_known(text: str, message: str) -> None:
    with pytest.raises(CurateError, match=message.replace("(", r"\(")):
        check_amount(text)
    with pytest.raises(CurateError, match=message.replace("(", r"\(")):
        parse_amount(text, 1000)


def test_a_count_above_the_total_is_an_error_and_messages_name_no_flag() -> None:
    with pytest.raises(CurateError) as e:
        parse_amount("65", 64)
    assert str(e.value) == "'65': more rows than the 64 there are"
    check_amount("65")  # syntax only
    with pytest.raises(CurateError, match="^--top '65': more rows"):
        parse_amount("65", 64, "--top")  # the caller may name its option
