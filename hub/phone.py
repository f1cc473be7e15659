"""Phone numbers in every form Vietnamese trunks, CRMs and callhub's vendors write them, normalised once.

`parse_phone` accepts, with the usual separators (spaces, `.`, `-`, parentheses):

    +84912345678     E.164
    84912345678      E.164 without the plus (trunks and AntRing's socket send this)
    0084912345678    the international prefix 00
    0912345678       national format (trunk 0); landlines such as 028 7301 9555 too
    01693608879      a pre-2018 11-digit mobile number (AntRing's own history example), also as
                     +841693608879 or 841693608879: read as today's number, 0393608879

and answers a `Phone` holding the number in E.164 and in national format, and `formatted()`
writes it the way a vendor wants it (`e164`, `84`, `national`). Anything else is a clear `InvalidPhoneNumber` (422). Validation is
structural (length, prefix), not a carrier lookup: a number that parses may still not exist.

**The 2018 renumbering.** On 15 September 2018 Vietnam's Ministry of Information and
Communications moved every 11-digit mobile number to 10 digits: the four-digit network code
became three digits and the last seven digits stayed (`RENUMBERED_2018`). Old numbers rang in
parallel until 14 November 2018 and were announced as changed until 30 June 2019; since then only
the new ones work, but old numbers live on in CRMs, call histories and caller ids.

**The normal form** (`Phone.normal`, `normal_number`) is one spelling per number, whatever the
source: national format for Vietnamese numbers (`0912345678`), E.164 for any other country's
(`+14155550123`). The two cannot collide (a national number starts with 0, E.164 with +), and
national is how Vietnamese contact centres, AntCRM's examples and AntRing's click-to-call write
numbers, so rules and ticket titles read naturally and rules written before read the same.
Call events carry each party as `call_party()` builds it: the normal form beside exactly what the
vendor sent, never dropping what cannot be parsed (`anonymous`, an extension). docs/EVENTS.md
describes the shape; `number_key` is how two numbers are compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from hub.exceptions import InvalidEvent

__all__ = [
    "EXTENSION_MIN_DIGITS",
    "InvalidPhoneNumber",
    "Phone",
    "PhoneForm",
    "RENUMBERED_2018",
    "call_party",
    "normal_number",
    "number_key",
    "parse_extension",
    "parse_phone",
]

VN_COUNTRY = "84"
#: How a number is written to a vendor: `+84912345678`, `84912345678` or `0912345678`.
PhoneForm = Literal["e164", "84", "national"]
#: The shortest internal extension a destination may be (the longest is the vendor's, see AntRing).
EXTENSION_MIN_DIGITS = 3

#: The 2018 renumbering of 11-digit mobile numbers: old network code -> new one (both without the
#: trunk 0); the seven subscriber digits after it are unchanged. Source: the Ministry of Information
#: and Communications' plan as reported by SGGP (en.sggp.org.vn, "Mobile phone numbers conversion
#: to affect 60 million subscribers nationwide", 2018) and MobiFone's "Detailed plan of the mobile
#: phone number conversion" (mobifone.vn); see docs/DECISIONS.md.
RENUMBERED_2018: dict[str, str] = {
    # Viettel
    "162": "32", "163": "33", "164": "34", "165": "35", "166": "36", "167": "37", "168": "38", "169": "39",
    # MobiFone
    "120": "70", "121": "79", "122": "77", "126": "76", "128": "78",
    # VinaPhone
    "123": "83", "124": "84", "125": "85", "127": "81", "129": "82",
    # Vietnamobile
    "186": "56", "188": "58",
    # Gmobile
    "199": "59",
}

_SEPARATORS = re.compile(r"[\s.\-()]")
#: Any other country's number in E.164: a country code and subscriber number, at most 15 digits.
_E164 = re.compile(r"\+[1-9]\d{7,14}")
#: A Vietnamese number after the trunk 0 / country code: 9 digits for mobiles (03/05/07/08/09),
#: 10 for landlines (02x).
_VN_SUBSCRIBER = re.compile(r"[35789]\d{8}|2\d{9}")
#: A pre-2018 mobile number after the trunk 0 / country code: old network code, then 7 digits.
_VN_OLD_MOBILE = re.compile(r"(1\d\d)(\d{7})")
_DIGITS = re.compile(r"\d+")


class InvalidPhoneNumber(InvalidEvent):
    code = "invalid_phone_number"


@dataclass(frozen=True, slots=True)
class Phone:
    #: `+84912345678`.
    e164: str
    #: National format for Vietnamese numbers (`0912345678`); the E.164 form for others.
    national: str

    @property
    def normal(self) -> str:
        """The normal form: national for Vietnamese numbers, E.164 for others (the module docstring)."""
        return self.national

    def formatted(self, form: PhoneForm) -> str:
        """The number as a vendor wants it: `e164`, `84` (E.164 digits without the plus) or `national`."""
        if form == "national":
            return self.national
        if form == "84":
            return self.e164[1:]
        return self.e164


def _vietnamese(subscriber: str) -> Phone | None:
    """The Phone for a Vietnamese number given after its trunk 0 or country code, or None."""
    old = _VN_OLD_MOBILE.fullmatch(subscriber)
    if old is not None and old.group(1) in RENUMBERED_2018:
        subscriber = RENUMBERED_2018[old.group(1)] + old.group(2)
    if not _VN_SUBSCRIBER.fullmatch(subscriber):
        return None
    return Phone("+" + VN_COUNTRY + subscriber, "0" + subscriber)


def parse_phone(value: object, *, field: str = "number") -> Phone:
    """The `Phone` for a number in any accepted form (see the module docstring); `InvalidPhoneNumber` otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidPhoneNumber(f"'{field}' must be a phone number such as 0912345678 or +84912345678", field=field)
    number = _SEPARATORS.sub("", value.strip())
    if number.startswith("00"):
        number = "+" + number[2:]
    phone: Phone | None = None
    if number.startswith("+" + VN_COUNTRY) or (number.startswith(VN_COUNTRY) and number.isdigit()):
        # Bare `84…` is only ever read as Vietnamese: no national number starts with 8 (trunk 0 first).
        phone = _vietnamese(number.lstrip("+")[len(VN_COUNTRY):])
        if phone is None and number.startswith("+"):
            raise InvalidPhoneNumber(f"{value!r} is not a valid Vietnamese number", field=field)
    elif number.startswith("0") and number.isdigit():
        phone = _vietnamese(number[1:])
    elif _E164.fullmatch(number):
        phone = Phone(number, number)
    if phone is None:
        raise InvalidPhoneNumber(
            f"{value!r} is not a phone number: use E.164 (+84912345678) or Vietnamese national format (0912345678)",
            field=field,
        )
    return phone


def normal_number(value: object) -> str | None:
    """The normal form of `value` if it is a phone number in any accepted form, else None."""
    try:
        return parse_phone(value).normal
    except InvalidPhoneNumber:
        return None


def number_key(value: object) -> str | None:
    """What two numbers are compared by: the normal form, or, for what is no phone number (an
    extension, `anonymous`), the text without separators. None for no number at all."""
    if not isinstance(value, str) or not value.strip():
        return None
    return normal_number(value) or _SEPARATORS.sub("", value.strip())


def parse_extension(value: object, *, max_digits: int) -> str | None:
    """`value` as an internal extension (`EXTENSION_MIN_DIGITS` to `max_digits` digits), or None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _DIGITS.fullmatch(text) and EXTENSION_MIN_DIGITS <= len(text) <= max_digits:
        return text
    return None


def call_party(number: object, name: object = None) -> dict[str, Any]:
    """One side of a call as call events carry it: `{"number", "as_sent", "name"}`.

    `number` is the normal form (`0912345678`) when what the vendor sent is a phone number, else exactly
    what it sent (an extension stays `101`, `anonymous` stays `anonymous`); `as_sent` is always
    exactly what it sent (None when it sent nothing).
    """
    sent = number if isinstance(number, str) and number else None
    return {
        "number": (normal_number(sent) or sent) if sent is not None else None,
        "as_sent": sent,
        "name": name if isinstance(name, str) and name else None,
    }
