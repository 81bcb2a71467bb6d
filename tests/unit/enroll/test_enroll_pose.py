"""The enrolment report's pose coverage: yaw per accepted photo, the only-frontal warning."""

from __future__ import annotations

from pathlib import Path

from device.enroll.enroll import IdentityReport, PhotoResult


def _photo(name: str, yaw: float | None, accepted: bool = True) -> PhotoResult:
    return PhotoResult(Path(name), () if accepted else ("blurry",), quality=0.8 if accepted
                       else None, yaw=yaw)


def test_only_frontal_photos_give_a_warning_and_a_json_field() -> None:
    report = IdentityReport("Ada", (_photo("a.jpg", 3.0), _photo("b.jpg", -14.9),
                                    _photo("c.jpg", 40.0, accepted=False)))
    assert report.only_frontal
    doc = report.to_json()
    assert doc["only_frontal"] is True and "only frontal" in str(doc["pose_warning"])
    assert [p["yaw"] for p in doc["photos"]] == [3.0, -14.9, 40.0]  # type: ignore[index]


def test_one_turned_photo_covers_the_pose() -> None:
    report = IdentityReport("Ada", (_photo("a.jpg", 3.0), _photo("b.jpg", -22.0)))
    assert not report.only_frontal and report.pose_warning is None
    assert report.to_json()["only_frontal"] is False


def test_unknown_yaw_claims_nothing() -> None:
    assert not IdentityReport("Ada", (_photo("a.jpg", None),)).only_frontal
