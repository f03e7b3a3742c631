"""Question files written by someone else: image names confined to the benchmark's image folder (issue 21 item 13)
and non-UTF-8 bytes reported with the file and line (item 15), never a raw UnicodeDecodeError."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from lmm.evaluation.__main__ import main as cli_main
from lmm.evaluation.answers import read_predictions
from lmm.evaluation.benchmarks import BenchmarkDataError, get_benchmark
from lmm.evaluation.benchmarks.base import read_json, read_jsonl
from lmm.evaluation.benchmarks.mmbench import read_mmbench_tsv
from lmm.evaluation.benchmarks.mme import MME


def _gqa(root, names):
    """A GQA layout whose question file names ``names`` as images (one question each)."""
    images = root / "gqa" / "data" / "images"
    images.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(images / "ok.jpg")
    rows = [{"question_id": f"q{k}", "image": name, "text": "What?"} for k, name in enumerate(names)]
    path = root / "gqa" / "llava_gqa_testdev_balanced.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("name", "why"), [("/etc/passwd", "absolute"), ("../../secret.jpg", "'..'"),
                                           ("sub/../../x.jpg", "'..'")])
def test_image_names_leaving_the_image_folder_are_refused(tmp_path, name, why):
    path = _gqa(tmp_path, ["ok.jpg", name])
    with pytest.raises(BenchmarkDataError) as err:
        get_benchmark("gqa").questions(tmp_path)
    message = str(err.value)
    assert str(path) in message and "'q1'" in message and repr(name) in message and why in message


def test_a_link_inside_the_image_folder_pointing_outside_is_refused(tmp_path):
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (4, 4)).save(outside)
    _gqa(tmp_path, ["ok.jpg", "link.jpg"])
    os.symlink(outside, tmp_path / "gqa" / "data" / "images" / "link.jpg")
    with pytest.raises(BenchmarkDataError, match=r"question 'q1'.*'link.jpg'.*a link resolving to"):
        get_benchmark("gqa").questions(tmp_path)


def test_the_image_folder_itself_may_be_a_link(tmp_path):
    """Real setups link playground/data/eval/*/images to big disks: only the names inside it are confined."""
    disk = tmp_path / "disk" / "gqa_images"
    disk.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(disk / "ok.jpg")
    root = tmp_path / "eval"
    (root / "gqa" / "data").mkdir(parents=True)
    os.symlink(disk, root / "gqa" / "data" / "images")
    (root / "gqa" / "llava_gqa_testdev_balanced.jsonl").write_text(
        json.dumps({"question_id": "q0", "image": "ok.jpg", "text": "What?"}) + "\n")
    [question] = get_benchmark("gqa").questions(root)
    assert question.load_image().size == (4, 4)


def test_scienceqa_image_names_are_confined_too(tmp_path):
    folder = tmp_path / "scienceqa"
    folder.mkdir()
    rows = [{"id": "7", "image": "../../../etc/hostname", "conversations": [{"from": "human", "value": "Q?"}]}]
    (folder / "llava_test_CQM-A.json").write_text(json.dumps(rows))
    with pytest.raises(BenchmarkDataError, match=r"llava_test_CQM-A.json: question '7'"):
        get_benchmark("scienceqa").questions(tmp_path)


def test_non_utf8_question_lines_name_the_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"question_id": 1}\n{"question_id": 2, "text": "caf\xe9"}\n')
    with pytest.raises(BenchmarkDataError, match=r"q\.jsonl:2: not UTF-8 text \(byte 0xe9"):
        read_jsonl(path)
    annotations = tmp_path / "a.json"
    annotations.write_bytes(b'{\n  "questions": [\n    "\xff"\n  ]\n}\n')
    with pytest.raises(BenchmarkDataError, match=r"a\.json:3: not UTF-8 text \(byte 0xff"):
        read_json(annotations)
    broken = tmp_path / "b.json"
    broken.write_text('{\n  "a": 1,\n}\n')
    with pytest.raises(BenchmarkDataError, match=r"b\.json:3: invalid JSON"):
        read_json(broken)


def test_non_utf8_tsv_and_mme_files_name_the_file_and_line(tmp_path):
    tsv = tmp_path / "mmbench.tsv"
    tsv.write_bytes(b"index\tquestion\tanswer\tA\tB\timage\n0\tQ\tA\tx\ty\t\n1\tQ\xff\tA\tx\ty\t\n")
    with pytest.raises(BenchmarkDataError, match=r"mmbench\.tsv:3: not UTF-8 text"):
        read_mmbench_tsv(tsv)
    task = tmp_path / "release" / "color"
    task.mkdir(parents=True)
    (task / "1.txt").write_bytes(b"Is it red?\tYes\nIs it \xe9?\tNo\n")
    with pytest.raises(BenchmarkDataError, match=r"1\.txt:2: not UTF-8 text"):
        MME.ground_truth(tmp_path / "release")
    (task / "1.txt").write_bytes(b"Is it red?\tYes\nIs it blue? No\n")
    with pytest.raises(BenchmarkDataError, match=r"1\.txt:2: expected 'question<TAB>answer'"):
        MME.ground_truth(tmp_path / "release")


def test_a_non_utf8_answer_line_is_counted_unparsable_with_its_number(tmp_path, capsys):
    path = tmp_path / "answers.jsonl"
    good = json.dumps({"question_id": 1, "text": "yes"}).encode()
    path.write_bytes(good + b"\n" + b'{"question_id": 2, "text": "n\xf6"}\n' + good.replace(b"1", b"3") + b"\n")
    pf = read_predictions(path)
    assert [r["question_id"] for r in pf.records] == [1, 3] and pf.n_lines == 3
    assert pf.unparsable == [(2, "not UTF-8 text (byte 0xf6 at column 30)")]
    # the scorer of a benchmark whose official script stops on such a line says where, with exit code 2
    assert cli_main(["score", "gqa", "--predictions", str(path), "--data-root", str(tmp_path)]) == 2
    assert "line 2: not UTF-8 text" in capsys.readouterr().err
