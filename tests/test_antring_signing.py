"""AntRing request signatures, checked against literal vectors (computed once with `sha256sum`)."""

from __future__ import annotations

from handlers.antring.signing import app_hash, histories_hash, recording_hash

APP_ID = "6544646543674"
SECRET = "123456"
FROM = "2018-02-07T02:19:33.000Z"
TO = "2018-02-07T07:04:22.000Z"


def test_histories_hash_matches_the_vendors_worked_example() -> None:
    """The vendor's example: appId, created_from, created_to, then the secret, no limit or page."""
    assert histories_hash(APP_ID, SECRET, FROM, TO) == "9b11b9ff77dbba70fe059acf84c02cfe6af90de9122e4d3bd6ec69c9d637f9ed"


def test_histories_hash_appends_limit_then_page_before_the_secret() -> None:
    """limit and page, when present, follow created_to in that order: sha256(appId+from+to+'100'+'2'+secret)."""
    expected = "9a04c3ef1aecc19aa7c6496e23ec6790aa065a8ac8a087f8df7f61ace65a6ce7"
    assert histories_hash(APP_ID, SECRET, FROM, TO, limit=100, page=2) == expected
    assert histories_hash(APP_ID, SECRET, FROM, TO, limit="100", page="2") == expected


def test_histories_hash_leaves_out_absent_parameters() -> None:
    """Only the parameters present take part: limit alone differs from limit and page, and from none."""
    none = histories_hash(APP_ID, SECRET, FROM, TO)
    limit_only = histories_hash(APP_ID, SECRET, FROM, TO, limit=100)
    both = histories_hash(APP_ID, SECRET, FROM, TO, limit=100, page=2)
    assert len({none, limit_only, both}) == 3
    assert histories_hash(APP_ID, SECRET, FROM, TO, page=2) == histories_hash(APP_ID, SECRET, FROM, TO, limit=2)


def test_histories_hash_puts_app_id_first_not_after_page() -> None:
    """The other documented order (appId just before the secret) gives a different hash, which is not used."""
    other_order = "7288ecaee840b828217734779744df016ac84061de27bb2904eef015d5cdc52a"
    assert histories_hash(APP_ID, SECRET, FROM, TO, limit=100, page=2) != other_order


def test_recording_hash_is_app_id_media_secret() -> None:
    """play_recording: sha256('6544646543674' + 'call_recording_dl5m5j5hfh4n8njj1oor.mp3' + '123456')."""
    media = "call_recording_dl5m5j5hfh4n8njj1oor.mp3"
    expected = "a42709c4a06468c0f2aefed7a99266845804b08b39b075f7c4224d117978ded2"
    assert recording_hash(APP_ID, media, SECRET) == expected


def test_app_hash_is_app_id_then_secret() -> None:
    """x-auth-app-hash: sha256('6544646543674' + '123456')."""
    assert app_hash(APP_ID, SECRET) == "1de1c7a667297905f45373f982c0e182c6d5ba6391f2bf41dc053619182b351b"

