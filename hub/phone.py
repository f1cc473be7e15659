"""Phone numbers as Vietnamese contact centres write them: E.164 (`+84912345678`) or national
format (`0912345678`, `028 7301 9555`).

`parse_phone` accepts either, with the usual separators, and answers both forms; anything else
is a clear `InvalidPhoneNumber`. Validation is structural (length, prefix), not a carrier
lookup: a number that parses may still not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hub.exceptions import InvalidEvent

__all__ = ["Phone", "InvalidPhoneNumber", "parse_phone"]

_SEPARATORS = re.compile(r"[\s.\-()]")
#: E.164: a country code and subscriber number, at most 15 digits in all.
_E164 = re.compile(r"\+[1-9]\d{7,14}")
#: Vietnamese national format: a trunk 0, then 9 digits (mobiles, 03/05/07/08/09) or 10 (landlines, 02x).
_VN_NATIONAL = re.compile(r"0(?:[35789]\d{8}|2\d{9})")
VN_COUNTRY = "84"


class InvalidPhoneNumber(InvalidEvent):
    code = "invalid_phone_number"


@dataclass(frozen=True, slots=True)
class Phone:
    e164: str
    #: National format for Vietnamese numbers; the E.164 form for others.
    national: str

    @property
    def is_vietnamese(self) -> bool:
        return self.e164.startswith("+" + VN_COUNTRY)


def parse_phone(value: object, *, field: str = "number") -> Phone:
    if not isinstance(value, str) or not value.strip():
        raise InvalidPhoneNumber(f"'{field}' must be a phone number such as 0912345678 or +84912345678", field=field)
    number = _SEPARATORS.sub("", value.strip())
    if number.startswith("00"):
        number = "+" + number[2:]
    if _VN_NATIONAL.fullmatch(number):
        return Phone("+" + VN_COUNTRY + number[1:], number)
    if _E164.fullmatch(number):
        if number.startswith("+" + VN_COUNTRY):
            national = "0" + number[1 + len(VN_COUNTRY):]
            if not _VN_NATIONAL.fullmatch(national):
                raise InvalidPhoneNumber(f"{value!r} is not a valid Vietnamese number", field=field)
            return Phone(number, national)
        return Phone(number, number)
    raise InvalidPhoneNumber(
        f"{value!r} is not a phone number: use E.164 (+84912345678) or Vietnamese national format (0912345678)",
        field=field,
    )
