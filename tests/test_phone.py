"""Phone numbers: E.164 and Vietnamese national format in, both forms out; nonsense refused."""

from __future__ import annotations

import pytest

from hub.phone import InvalidPhoneNumber, parse_phone


@pytest.mark.parametrize(
    ("raw", "e164", "national"),
    [
        ("0912345678", "+84912345678", "0912345678"),
        ("+84912345678", "+84912345678", "0912345678"),
        ("0084 912 345 678", "+84912345678", "0912345678"),
        ("091-234-5678", "+84912345678", "0912345678"),
        ("028 7301 9555", "+842873019555", "02873019555"),
        ("+14155550123", "+14155550123", "+14155550123"),
    ],
)
def test_accepted_forms(raw: str, e164: str, national: str) -> None:
    """Mobiles, landlines, E.164 and 00-prefixed numbers parse into E.164 and national form."""
    phone = parse_phone(raw)
    assert (phone.e164, phone.national) == (e164, national)


@pytest.mark.parametrize("raw", ["", "abc", "12345", "0112345678", "091234567", "+84 12 34", "+0123456789", None, 912345678])
def test_refused_forms(raw: object) -> None:
    """Too short, wrong prefix, letters or not a string: a clear 422 error naming the field."""
    with pytest.raises(InvalidPhoneNumber) as info:
        parse_phone(raw)
    assert info.value.status_code == 422 and info.value.details["field"] == "number"
