"""KeyLimit, the EVENT_KEY_LIMITS text form, the token bucket and which keys a limit holds."""

from __future__ import annotations

import pytest

from eventqueue.core.errors import ConfigError
from eventqueue.core.limits import KeyLimit, KeyLimits, debit, holds, parse
from eventqueue.core.records import NewEvent


def test_the_compact_form_round_trips() -> None:
    limits = parse(
        " mail-handler=concurrency:2,rate:50,burst:10 ; *=concurrency:8,exempt_critical:true"
    )

    assert limits.for_key("mail-handler") == KeyLimit(2, 50.0, 10.0)
    assert limits.for_key("anything") == KeyLimit(concurrency=8, exempt_critical=True)
    assert parse(limits.text()) == limits
    assert parse("") == KeyLimits() and not parse("")


def test_a_key_may_hold_an_equals_sign() -> None:
    assert parse("a=b-handler=rate_per_s:1.5").for_key("a=b-handler") == KeyLimit(rate_per_s=1.5)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("mail-handler", "expected key=field"),
        ("mail-handler=speed:3", "speed:3"),
        ("mail-handler=concurrency:two", "concurrency"),
        ("mail-handler=concurrency:0", "concurrency"),
        ("mail-handler=rate:-1", "rate_per_s"),
        ("mail-handler=burst:5", "needs rate_per_s"),
        ("mail-handler=exempt_critical:maybe", "exempt_critical"),
        ("mail-handler=", "no limit given"),
    ],
)
def test_bad_text_names_what_is_wrong(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse(text)


def test_a_dict_must_hold_key_limits() -> None:
    with pytest.raises(ConfigError, match="not a KeyLimit"):
        KeyLimits.of({"mail-handler": 3})  # type: ignore[dict-item]


def test_the_bucket_refills_by_time_up_to_its_size() -> None:
    limit = KeyLimit(rate_per_s=10.0, burst=5)
    assert limit.refill(None, None, 100.0) == 5.0  # never drawn from: full
    assert limit.refill(-2.0, 100.0, 100.5) == pytest.approx(3.0)
    assert limit.refill(0.0, 100.0, 200.0) == 5.0
    assert limit.refill(0.5, 100.0, 50.0) == 0.5  # the clock stepped back: no change
    level, due = debit(limit, None, None, 100.0, 10)
    assert level == -5.0 and due == pytest.approx(100.6)
    assert KeyLimit(rate_per_s=50.0).capacity == 50.0


def test_holds_name_the_keys_at_their_limit() -> None:
    limits = parse("a=concurrency:1;b=rate:1;c=concurrency:1,exempt_critical:true")

    found = holds(limits, {"a": 1, "c": 1, "free": 9}, ["b"])

    assert found.blocked == ("a", "b") and found.critical_only == ("c",)


def test_a_spill_record_keeps_the_ordering_key() -> None:
    row = NewEvent("{}", 2, "k-handler", "h", 1.5, ordering_key="order-7")
    assert NewEvent.from_bytes(row.to_bytes()) == row
    both = NewEvent("{}", 2, "k-handler", "h", 1.5, "00-tp", coalesce_key="o1", ordering_key="g")
    assert NewEvent.from_bytes(both.to_bytes()) == both
    # A record written before ordering (7 fields: ..., trace context, coalesce key) still reads.
    old = NewEvent.from_bytes(b'["{}", 2, "k-handler", "h", 1.5, null, "o1"]')
    assert old.coalesce_key == "o1" and old.ordering_key is None
    plain = NewEvent("{}", 2, "k-handler", "h", 1.5)
    assert len(plain.to_bytes().decode().split(",")) == 5  # the original 5 fields
