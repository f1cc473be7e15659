"""Phone numbers: every form trunks and vendors send, one normal form out; nonsense refused; parties kept as sent."""

from __future__ import annotations

import pytest

from hub.phone import (
    RENUMBERED_2018,
    InvalidPhoneNumber,
    call_party,
    number_key,
    parse_extension,
    parse_phone,
)


@pytest.mark.parametrize(
    ("raw", "e164", "national"),
    [
        ("0912345678", "+84912345678", "0912345678"),
        ("+84912345678", "+84912345678", "0912345678"),
        ("84912345678", "+84912345678", "0912345678"),
        ("0084 912 345 678", "+84912345678", "0912345678"),
        ("091-234-5678", "+84912345678", "0912345678"),
        ("028 7301 9555", "+842873019555", "02873019555"),
        ("842873019555", "+842873019555", "02873019555"),
        ("+14155550123", "+14155550123", "+14155550123"),
    ],
)
def test_accepted_forms(raw: str, e164: str, national: str) -> None:
    """Mobiles, landlines, E.164 with or without its plus, and 00-prefixed numbers parse into E.164 and national."""
    phone = parse_phone(raw)
    assert (phone.e164, phone.national) == (e164, national)


@pytest.mark.parametrize(
    ("raw", "national"),
    [
        ("01693608879", "0393608879"),  # the vendor's own history example (Viettel 0169 -> 039)
        ("+841693608879", "0393608879"),
        ("841693608879", "0393608879"),
        ("0169 360 8879", "0393608879"),
        ("01201234567", "0701234567"),  # MobiFone 0120 -> 070
        ("01231234567", "0831234567"),  # VinaPhone 0123 -> 083
        ("01861234567", "0561234567"),  # Vietnamobile 0186 -> 056
        ("01991234567", "0591234567"),  # Gmobile 0199 -> 059
    ],
)
def test_pre_2018_mobile_numbers_become_todays_number(raw: str, national: str) -> None:
    """An 11-digit mobile number from before the 2018 renumbering is read as the 10-digit number it became."""
    assert parse_phone(raw).national == national


def test_renumbering_table_is_the_ministrys() -> None:
    """All 21 old network codes of the 2018 plan, each to its published new code, and no other."""
    assert RENUMBERED_2018 == {
        "162": "32", "163": "33", "164": "34", "165": "35", "166": "36", "167": "37", "168": "38", "169": "39",
        "120": "70", "121": "79", "122": "77", "126": "76", "128": "78",
        "123": "83", "124": "84", "125": "85", "127": "81", "129": "82",
        "186": "56", "188": "58", "199": "59",
    }


@pytest.mark.parametrize(
    "raw",
    ["", "abc", "12345", "0112345678", "091234567", "+84 12 34", "+0123456789", None, 912345678,
     "01301234567", "84123", "+8401234567890"],
)
def test_refused_forms(raw: object) -> None:
    """Too short, wrong prefix, an old code that was never a mobile code, letters or not a string: a clear 422."""
    with pytest.raises(InvalidPhoneNumber) as info:
        parse_phone(raw)
    assert info.value.status_code == 422 and info.value.details["field"] == "number"


@pytest.mark.parametrize(("form", "written"), [("e164", "+84912345678"), ("84", "84912345678"),
                                               ("national", "0912345678")])
def test_numbers_are_written_in_the_form_a_vendor_wants(form: str, written: str) -> None:
    """`formatted` writes E.164, E.164 without the plus, or national format."""
    assert parse_phone("84 912 345 678").formatted(form) == written  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sent", "party"),
    [
        ("84912345678", {"number": "0912345678", "as_sent": "84912345678"}),
        ("+84 1693 608 879", {"number": "0393608879", "as_sent": "+84 1693 608 879"}),
        ("+14155550123", {"number": "+14155550123", "as_sent": "+14155550123"}),
        ("anonymous", {"number": "anonymous", "as_sent": "anonymous"}),
        ("101", {"number": "101", "as_sent": "101"}),
        (None, {"number": None, "as_sent": None}),
    ],
)
def test_call_party_keeps_what_was_sent_beside_the_normal_form(sent: str | None, party: dict[str, str]) -> None:
    """A party's number is the normal form when it parses, what was sent otherwise; as_sent is always what was sent."""
    assert call_party(sent, "Khách") == {**party, "name": "Khách"}


def test_number_key_compares_every_form_of_a_number_as_one() -> None:
    """Every form of one number has one key; what is no phone number is compared as written."""
    forms = ["0393608879", "+84393608879", "84393608879", "01693608879", "0169.360.8879"]
    assert {number_key(f) for f in forms} == {"0393608879"}
    assert number_key(" anonymous ") == "anonymous" and number_key("") is None


@pytest.mark.parametrize(("raw", "extension"), [("101", "101"), ("123456", "123456"), ("12", None),
                                                ("1234567", None), ("10a", None), (101, None)])
def test_extensions_are_three_to_max_digits(raw: object, extension: str | None) -> None:
    """An internal extension is 3 to `max_digits` digits and nothing else."""
    assert parse_extension(raw, max_digits=6) == extension
