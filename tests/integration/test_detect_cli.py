"""`facegate detect` end to end with the real model: output, annotation, bad inputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from device.cli import main
from device.vision import samples


@pytest.fixture(scope="module")
def photo_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(samples.astronaut()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path: Path, photo_bytes: bytes) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(photo_bytes)
    (root / "sub" / "b.jpg").write_bytes(photo_bytes)
    (root / "notes.txt").write_text("not an image, and not picked up: wrong suffix")
    return root


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["detect", *args])
    return result.exit_code, result.stdout, result.stderr


def test_without_a_path_the_shipped_astronaut_photo_is_used(tmp_path: Path) -> None:
    out = tmp_path / "astronaut-faces.jpg"
    code, stdout, _ = _run("--json", "--annotate", str(out))
    assert code == 0
    record = json.loads(stdout)
    assert record["image"] == samples.ASTRONAUT_LABEL
    assert (record["width"], record["height"]) == (512, 512)
    [face] = record["faces"]
    x, y, w, h = face["box"]
    assert 150 < x < 200 and 50 < y < 90 and 90 < w < 120 and 90 < h < 120
    assert face["score"] > 0.8
    assert len(face["keypoints"]) == 6
    with Image.open(out) as img:
        assert img.size == (512, 512)


def test_a_folder_gives_one_json_line_per_image_and_annotations_in_a_folder(
    folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "annotated"
    code, stdout, stderr = _run("--json", "--tile", "--annotate", str(out), str(folder))
    assert code == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [Path(r["image"]).name for r in records] == ["a.jpg", "b.jpg"]
    assert all(len(r["faces"]) == 1 for r in records)
    assert sorted(p.name for p in out.iterdir()) == ["a-faces.jpg", "b-faces.jpg"]


def test_text_output_and_the_short_range_model(folder: Path) -> None:
    code, stdout, _ = _run("--model", "short", str(folder / "a.jpg"))
    assert code == 0
    assert stdout.splitlines()[0] == f"{folder / 'a.jpg'}: 512x512, 1 face"
    assert "box [" in stdout and "score" in stdout and "keypoints" in stdout


def test_bad_inputs_are_reported_by_name_and_the_rest_still_processed(
    tmp_path: Path, folder: Path, photo_bytes: bytes
) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo_bytes[: len(photo_bytes) // 2])
    text = tmp_path / "text.jpg"
    text.write_text("hello, I am not a JPEG\n")
    missing = tmp_path / "missing.jpg"
    good = folder / "a.jpg"

    code, stdout, stderr = _run(
        "--json", str(empty), str(truncated), str(good), str(text), str(missing)
    )

    assert code == 1
    assert [Path(json.loads(line)["image"]) for line in stdout.splitlines()] == [good]
    errors = stderr.splitlines()
    assert len(errors) == 4
    for path, reason in [(empty, "empty"), (truncated, "truncated"), (text, "not an image"),
                         (missing, "no such file")]:
        [line] = [e for e in errors if e.startswith(f"error: {path}: ")]
        assert reason in line


def test_several_images_cannot_be_annotated_into_one_file(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "one.jpg"
    target.write_bytes(b"x")
    code, _, stderr = _run("--annotate", str(target), str(folder))
    assert code == 2
    assert "folder" in stderr


def test_bench_detect_measures_tiling_at_the_asked_frame_size_and_face_width() -> None:
    result = CliRunner().invoke(main, [
        "bench", "detect", "--json", "--runs", "1", "--warmup", "0", "--threads", "1",
        "--tiled-size", "640x360", "--tiled-min-face", "24"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    tiled = [r for r in rows if r["tiled"]]
    assert [(r["frame"], r["min_face"]) for r in tiled] == [("640x360", 24)]
    assert tiled[0]["passes"] > 1  # the whole frame plus its tiles
    assert all(r["min_face"] is None and r["passes"] == 1 for r in rows if not r["tiled"])


@pytest.mark.parametrize("size", ["640", "640x", "axb", "8x8", "640x360x2"])
def test_bench_detect_refuses_a_malformed_tiled_size(size: str) -> None:
    result = CliRunner().invoke(main, ["bench", "detect", "--tiled-size", size])
    assert result.exit_code == 2
    assert repr(size) in result.output and "expected WxH" in result.output
