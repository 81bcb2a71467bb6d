"""Enrollment and identification with the real models on the shared photos.

Rejections with the right reason (two faces, no face, a corrupt file, a non-image);
a refused batch leaves the gallery file byte-for-byte unchanged; enrolled people are
found in other photos (match) and strangers are not (unknown); the CLI verbs; a small
open-set evaluation and calibration run. The full LFW/diversity evaluation is slow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from device.cli import main
from device.enroll.enroll import DUPLICATE, UNREADABLE, enroll_directory, enroll_images
from device.enroll.identify import GallerySearcher, identify_image
from device.errors import ConfigError, ModelError
from device.gallery.store import GalleryStore
from device.imageio import read_image
from device.lab.openset import embed_tree, evaluate_open_set
from device.service.thresholds import ThresholdPolicy, find_table, resolve_threshold
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
from device.vision.dlib_tflite import DlibTFLiteEmbedder, DlibTFLiteEmbedderConfig
from device.vision.stills import StillFaceFinder
from tests.support.gallery import sha256_file

pytestmark = pytest.mark.dataset


@pytest.fixture(scope="module")
def models() -> Iterator[tuple[BlazeFaceDetector, BlazeFaceDetector, DlibTFLiteEmbedder]]:
    try:
        embedder = DlibTFLiteEmbedder(DlibTFLiteEmbedderConfig(num_threads=1))
    except ModelError as exc:
        pytest.skip(f"embedder unavailable: {exc}")
    short = BlazeFaceDetector(BlazeFaceConfig(model="short", num_threads=1))
    full = BlazeFaceDetector(BlazeFaceConfig(model="full", num_threads=1))
    yield short, full, embedder
    for m in (short, full, embedder):
        m.close()


@pytest.fixture()
def gallery(tmp_path: Path, models: tuple[BlazeFaceDetector, BlazeFaceDetector,
                                          DlibTFLiteEmbedder]) -> Iterator[GalleryStore]:
    with GalleryStore(tmp_path / "gallery.db", model_id=models[2].model_id, dim=128,
                      create=True) as store:
        yield store


def _fingerprint(store: GalleryStore) -> str:
    store.checkpoint()
    return sha256_file(store.path)


def _bad_files(tmp_path: Path, datasets: Path) -> tuple[Path, Path]:
    good = (datasets / "media" / "single" / "obama.jpg").read_bytes()
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good[: len(good) // 3])  # a truncated JPEG
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    return corrupt, text


def test_rejections_name_the_reason_and_leave_the_gallery_untouched(
    datasets: Path, tmp_path: Path, gallery: GalleryStore,
    models: tuple[BlazeFaceDetector, BlazeFaceDetector, DlibTFLiteEmbedder],
) -> None:
    short, full, embedder = models
    biden = datasets / "media" / "single" / "biden.jpg"
    assert enroll_images(gallery, short, embedder, "Biden", [biden], refiner=full).committed
    before = _fingerprint(gallery)
    corrupt, text = _bad_files(tmp_path, datasets)
    photos = [datasets / "media" / "group" / "two_people.jpg",
              datasets / "boxes" / "dogs.jpg", corrupt, text,
              datasets / "media" / "single" / "obama.jpg", biden]
    report = enroll_images(gallery, short, embedder, "Mixed", photos, refiner=full)
    assert not report.committed and report.reason is not None
    verdicts = {p.path.name: p for p in report.photos}
    assert verdicts["two_people.jpg"].reasons == ("multiple_faces",)
    assert verdicts["dogs.jpg"].reasons == ("no_face",)
    assert verdicts["corrupt.jpg"].reasons == (UNREADABLE,)
    assert "truncated" in verdicts["corrupt.jpg"].detail
    assert verdicts["notes.jpg"].reasons == (UNREADABLE,)
    assert "not an image" in verdicts["notes.jpg"].detail
    assert verdicts["obama.jpg"].accepted
    assert verdicts["biden.jpg"].reasons == (DUPLICATE,)
    assert gallery.counts() == (1, 1)
    assert _fingerprint(gallery) == before


def test_enrolled_people_match_and_strangers_do_not(
    datasets: Path, tmp_path: Path, gallery: GalleryStore,
    models: tuple[BlazeFaceDetector, BlazeFaceDetector, DlibTFLiteEmbedder],
) -> None:
    short, full, embedder = models
    single = datasets / "media" / "single"
    root = tmp_path / "people"
    for name in ("obama", "biden"):
        (root / name.title()).mkdir(parents=True)
        (root / name.title() / f"{name}.jpg").symlink_to(single / f"{name}.jpg")
    report = enroll_directory(gallery, short, embedder, root, refiner=full)
    assert report.committed and gallery.counts() == (2, 2)
    try:
        find_table(embedder.model_id)
    except ConfigError as exc:
        pytest.skip(f"no calibration table: {exc}")
    finder = StillFaceFinder(full, retry=short, refiner=full)
    threshold = resolve_threshold(embedder.model_id, ThresholdPolicy(1e-4))
    with GallerySearcher(gallery, threshold) as searcher:
        both = identify_image(read_image(datasets / "media" / "group" / "obama_and_biden.jpg"),
                              finder, embedder, searcher)
        assert {f.result.match.label for f in both if f.result.match} == {"Obama", "Biden"}
        for f in both:
            assert (f.result.candidates[0].fmr_at_similarity or 1.0) <= 1e-4
        stranger = identify_image(read_image(single / "grace_hopper.bmp"), finder, embedder,
                                  searcher)
        assert stranger and all(f.result.decision == "unknown" for f in stranger)


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_cli_enroll_and_identify(datasets: Path, tmp_path: Path,
                                 models: tuple[object, object, DlibTFLiteEmbedder]) -> None:
    db = str(tmp_path / "cli.db")
    corrupt, text = _bad_files(tmp_path, datasets)
    code, out = _run("gallery", "enroll", "--db", db, "--label", "Group", "--json",
                     "--threads", "1", str(datasets / "media" / "group" / "two_people.jpg"),
                     str(corrupt), str(text))
    assert code == 1, out
    doc = json.loads(out)
    assert not doc["committed"] and doc["rejected"] == 3
    assert [p["reasons"] for p in doc["identities"][0]["photos"]] == [
        ["multiple_faces"], ["unreadable"], ["unreadable"]]
    assert not Path(db).exists()  # a refused batch does not create the gallery
    code, out = _run("gallery", "enroll", "--db", db, "--label", "Obama", "--json",
                     "--threads", "1", "--expires", "2999-01-01", "--consent-ref", "form-17",
                     str(datasets / "media" / "single" / "obama.jpg"))
    assert code == 0, out
    doc = json.loads(out)
    assert doc["committed"] and doc["identities"][0]["identity_id"]
    code, out = _run("gallery", "show", "--db", db, "--json", doc["identities"][0]["identity_id"])
    shown = json.loads(out)
    assert shown["consent_ref"] == "form-17" and shown["expires_at"].startswith("2999-01-01")
    code, out = _run("identify", "--db", db, "--json", "--threads", "1",
                     str(datasets / "media" / "group" / "obama_and_biden.jpg"))
    if code == 2 and "no calibration table" in out:
        pytest.skip(out)
    assert code == 0, out
    doc = json.loads(out)
    decisions = sorted(f["decision"] for f in doc["faces"])
    assert decisions == ["match", "unknown"]
    assert doc["threshold"]["target_fmr"] == 1e-4
    assert all("embedding" not in json.dumps(f) for f in doc["faces"])


def test_small_open_set_evaluation(datasets: Path,
                                   models: tuple[object, object, DlibTFLiteEmbedder]) -> None:
    code, out = _run("eval", "identify", "--root", str(datasets / "lfw" / "people"),
                     "--limit", "150", "--unenrolled-fraction", "0.2", "--threads", "1",
                     "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["gallery"] > 30 and result["held_out_identities"] > 0
    assert result["non_mated"] >= 100
    assert result["rank1"] >= 0.9
    at_1e2, at_1e3 = result["fnir_at_fpir"]
    assert at_1e2["resolvable"] and at_1e2["fnir"] <= 0.5 and at_1e2["fpir"] <= 1e-2
    assert not at_1e3["resolvable"]  # fewer than 1000 non-mated searches


def test_cli_enroll_dir_dry_run(datasets: Path, tmp_path: Path,
                                models: tuple[object, object, DlibTFLiteEmbedder]) -> None:
    root = tmp_path / "people"
    for photo in sorted((datasets / "media" / "video" / "enroll").glob("*.png")):
        (root / photo.stem).mkdir(parents=True)
        (root / photo.stem / photo.name).symlink_to(photo)
    (root / "Group").mkdir()
    (root / "Group" / "g.jpg").symlink_to(datasets / "media" / "group" / "two_people.jpg")
    db = tmp_path / "dir.db"
    code, out = _run("gallery", "enroll-dir", "--db", str(db), "--json", "--threads", "1",
                     str(root))
    assert code == 1, out
    doc = json.loads(out)
    assert [(i["label"], i["accepted"], i["rejected"]) for i in doc["identities"]] == [
        ("Group", 0, 1), ("alex-lacamoire", 1, 0), ("lin-manuel-miranda", 1, 0)]
    assert not doc["committed"] and not db.exists()
    (root / "Group" / "g.jpg").unlink()
    (root / "Group").rmdir()
    code, out = _run("gallery", "enroll-dir", "--db", str(db), "--dry-run", "--threads", "1",
                     str(root))
    assert code == 0 and "dry run" in out and not db.exists()
    code, out = _run("gallery", "enroll-dir", "--db", str(db), "--threads", "1", str(root))
    assert code == 0 and "written: 2 identities, 2 faces" in out, out


def test_cli_calibrate_small(datasets: Path, tmp_path: Path,
                             models: tuple[object, object, DlibTFLiteEmbedder]) -> None:
    out_file = tmp_path / "table.json"
    code, out = _run("calibrate", "--identities", str(datasets / "lfw" / "people"),
                     "--limit", "40", "--threads", "1", "-o", str(out_file), "--json")
    assert code == 0, out
    doc = json.loads(out)
    rows = {r["target_fmr"]: r for r in doc["summary"]}
    assert rows[1e-2]["threshold"] is not None and rows[1e-5]["threshold"] is None
    assert doc["impostors"] * 1e-5 < 1
    table = json.loads(out_file.read_text())
    assert table["model_id"] == doc["model_id"] and table["impostors"] == doc["impostors"]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fraction"), [("lfw/people", 0.0), ("diversity", 0.4)])
def test_full_open_set_evaluation(datasets: Path, name: str, fraction: float,
                                  models: tuple[BlazeFaceDetector, BlazeFaceDetector,
                                                DlibTFLiteEmbedder]) -> None:
    short, full, embedder = models
    finder = StillFaceFinder(full, retry=short, refiner=full)
    embedded = embed_tree(datasets / name, finder, embedder)
    result = evaluate_open_set(embedded, unenrolled_fraction=fraction)
    print(name, json.dumps(result.to_json()))
    assert result.rank1 >= 0.5


def test_cli_calibrate_pairs(datasets: Path, tmp_path: Path,
                             models: tuple[object, object, DlibTFLiteEmbedder]) -> None:
    lines = (datasets / "lfw" / "pairs.csv").read_text().splitlines()
    same = [ln for ln in lines if ln.endswith(",1")][:15]
    different = [ln for ln in lines if ln.endswith(",0")][:25]
    subset = tmp_path / "pairs.csv"
    subset.write_text("\n".join(["fold,image_a,image_b,same", *same, *different]) + "\n")
    code, out = _run("calibrate", "--pairs", str(subset), "--root",
                     str(datasets / "lfw" / "people"), "--threads", "1", "--no-save", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["impostors"] == 25 and doc["genuine"] == 15 and doc["written"] is None
    rows = {r["target_fmr"]: r for r in doc["summary"]}
    assert all(rows[f]["threshold"] is None for f in (1e-2, 1e-3, 1e-4, 1e-5))


def test_cli_rejections_say_each_thing_once(datasets: Path, tmp_path: Path) -> None:
    """A missing file reads ``unreadable: no such file`` (not ``unreadable: unreadable: …``),
    and a dog's low-confidence candidate is a detection, not a face."""
    dogs, missing = datasets / "boxes" / "dogs.jpg", tmp_path / "nothere.jpg"
    db = str(tmp_path / "cli.db")
    args = ("gallery", "enroll", "--db", db, "--label", "Dog", "--dry-run", "--threads", "1",
            str(dogs), str(missing))
    code, out = _run(*args)
    assert code == 1, out
    assert f"rejected  {missing}  unreadable: no such file\n" in out
    assert out.count("unreadable") == 1
    code, out = _run(*args, "--json")
    photos = {Path(p["path"]).name: p for p in json.loads(out)["identities"][0]["photos"]}
    assert photos["dogs.jpg"]["reasons"] == ["no_face"]
    assert photos["dogs.jpg"]["faces"] == 0 and photos["dogs.jpg"]["detections"] >= 1
    assert photos["nothere.jpg"]["detail"] == "no such file"


def test_cli_enroll_reports_yaw_and_only_frontal(datasets: Path, tmp_path: Path) -> None:
    photo = str(datasets / "media" / "single" / "obama.jpg")
    code, out = _run("gallery", "enroll", "--db", str(tmp_path / "p.db"), "--label", "Obama",
                     "--json", "--dry-run", "--threads", "1", photo)
    assert code == 0, out
    ident = json.loads(out)["identities"][0]
    yaw = ident["photos"][0]["yaw"]
    assert isinstance(yaw, float) and abs(yaw) < 15  # a frontal portrait
    assert ident["only_frontal"] is True and "only frontal" in ident["pose_warning"]
    code, out = _run("gallery", "enroll", "--db", str(tmp_path / "p.db"), "--label", "Obama",
                     "--dry-run", "--threads", "1", photo)
    assert code == 0, out
    assert "yaw " in out and "warning: only frontal photos" in out
