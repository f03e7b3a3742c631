"""``python -m lmm.evaluation``: scoring the real fixtures, judge-less benchmarks, errors, conversions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmm.evaluation.__main__ import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


def test_score_pope_fixture(capsys, eval_samples):
    code, out, err = run(
        capsys,
        "score",
        "pope",
        "--predictions",
        eval_samples / "pope/answers/llava-v1.5-13b.jsonl",
        "--data-root",
        eval_samples,
    )
    assert code == 0 and err == ""
    assert out["benchmark"] == "pope" and out["score"] == pytest.approx(200 / 3)
    assert out["random"]["f1"] == pytest.approx(200 / 3) and out["n_missing"] == 0


def test_score_scienceqa_fixture(capsys, eval_samples):
    code, out, _ = run(
        capsys,
        "score",
        "scienceqa",
        "--predictions",
        eval_samples / "scienceqa/answers/llava-v1.5-13b.jsonl",
        "--data-root",
        eval_samples,
    )
    assert code == 0 and out["score"] == pytest.approx(100 / 3) and out["accuracy"] == 37.5


def test_score_mme_fixture(capsys, eval_samples):
    code, out, err = run(
        capsys,
        "score",
        "mme",
        "--predictions",
        eval_samples / "MME/answers/llava-v1.5-13b.jsonl",
        "--data-root",
        eval_samples,
    )
    assert code == 0 and out["perception"] == 162.5 and out["cognition"] == 87.5
    assert "warning: MME tasks without questions" in err


def test_score_llava_wild_reviews(capsys, eval_samples):
    reviews = sorted((eval_samples / "llava-bench-in-the-wild/reviews").glob("*.jsonl"))
    code, out, _ = run(capsys, "score", "llava_wild", "--data-root", eval_samples, "--judgments", *reviews)
    assert code == 0 and round(out["score"], 1) == 91.2
    assert [r["all"]["relative"] for r in out["runs"]] == [90.6, 92.2, 90.9]


def test_score_mmvet_grades(capsys, eval_samples):
    grades = eval_samples / "mm-vet/results/llava-v1.5-7b_gpt-4-grade-3runs.json"
    code, out, _ = run(capsys, "score", "mmvet", "--data-root", eval_samples, "--judgments", grades)
    assert code == 0 and out["score"] == 0.0 and out["n_runs"] == 3 and out["n_questions"] == 4


def test_judged_benchmark_without_judge_is_skipped(capsys, eval_samples):
    code, out, err = run(capsys, "score", "llava_wild", "--data-root", eval_samples)
    assert code == 3 and out["skipped"].startswith("skipped: no judge configured") and "no judge" in err


def test_errors_exit_2(capsys, eval_samples, tmp_path):
    pope = eval_samples / "pope/answers/llava-v1.5-13b.jsonl"
    cases = [
        (
            ["score", "pope", "--predictions", tmp_path / "missing.jsonl", "--data-root", eval_samples],
            "not found",
        ),
        (["score", "bogus", "--predictions", pope, "--data-root", eval_samples], "unknown benchmark"),
        (["score", "pope", "--data-root", eval_samples], "none was given"),
        (["score", "pope", "--predictions", pope, "--data-root", tmp_path], "file not found"),
        (
            ["score", "pope", "--predictions", pope, "--data-root", eval_samples, "--split", "val"],
            "no option",
        ),
        (["score", "gqa", "--predictions", pope, "--data-root", eval_samples], "GQA ground truth"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2 and out is None and message in err, (argv, err)


def test_malformed_prediction_files(capsys, eval_samples, tmp_path):
    lines = (eval_samples / "pope/answers/llava-v1.5-13b.jsonl").read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines[:5] + ['{"question_id": 6, "text": "Yes"'] + lines[5:]) + "\n")
    code, _, err = run(capsys, "score", "pope", "--predictions", broken, "--data-root", eval_samples)
    assert code == 2 and "1 unparsable prediction line(s)" in err and "line 6" in err
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:-1]) + "\n")
    code, _, err = run(capsys, "score", "pope", "--predictions", short, "--data-root", eval_samples)
    assert code == 2 and "have no prediction" in err
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text("\n".join(lines + lines[:1]) + "\n")
    code, _, err = run(capsys, "score", "pope", "--predictions", doubled, "--data-root", eval_samples)
    assert code == 2 and "more than once" in err


def test_convert(capsys, tmp_path, write_jsonl, make_answer):
    write_jsonl(
        tmp_path / "vqav2/llava_vqav2_mscoco_test2015.jsonl",
        [{"question_id": q, "image": "x.jpg", "text": "q"} for q in (1, 2)],
    )
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps(make_answer(1, "Two.")) + "\nnot json\n")
    code, out, err = run(
        capsys,
        "convert",
        "vqav2",
        "--predictions",
        answers,
        "--data-root",
        tmp_path,
        "--output",
        tmp_path / "up/vqav2.json",
    )
    assert code == 0 and out["n_blank"] == 1 and out["n_unparsable"] == 1 and "skipped" in err
    assert json.loads((tmp_path / "up/vqav2.json").read_text()) == [
        {"question_id": 1, "answer": "2"},
        {"question_id": 2, "answer": ""},
    ]
    answers.write_text(json.dumps(make_answer("7", "Yes.")) + "\n")
    code, out, _ = run(
        capsys,
        "convert",
        "gqa",
        "--predictions",
        answers,
        "--data-root",
        tmp_path,
        "--output",
        tmp_path / "gqa.json",
    )
    assert code == 0 and json.loads((tmp_path / "gqa.json").read_text()) == [
        {"questionId": "7", "prediction": "yes"}
    ]
    code, out, _ = run(
        capsys,
        "convert",
        "mmvet",
        "--predictions",
        answers,
        "--data-root",
        tmp_path,
        "--output",
        tmp_path / "mmvet.json",
    )
    assert code == 0 and json.loads((tmp_path / "mmvet.json").read_text()) == {"v1_7": "Yes."}
    write_jsonl(tmp_path / "vizwiz/llava_test.jsonl", [{"question_id": 0, "image": "a.jpg", "text": "q"}])
    code, _, err = run(
        capsys,
        "convert",
        "vizwiz",
        "--predictions",
        answers,
        "--data-root",
        tmp_path,
        "--output",
        tmp_path / "vizwiz.json",
    )
    assert code == 2 and "no prediction" in err


def test_convert_never_writes_over_its_predictions(capsys, tmp_path, make_answer):
    """``--output`` naming the predictions file (as spelt, through a link, or with ``..``) is refused with exit
    code 2 and the answers stay as they were; an output written elsewhere leaves no temporary file behind."""
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps(make_answer("7", "Yes.")) + "\n")
    before = answers.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.jsonl").symlink_to(answers)
    for output in (answers, tmp_path / "link.jsonl", tmp_path / "sub" / ".." / "answers.jsonl"):
        code, out, err = run(capsys, "convert", "gqa", "--predictions", answers, "--data-root", tmp_path,
                             "--output", output)
        assert code == 2 and out is None and "is the predictions file" in err and str(output) in err
        assert answers.read_bytes() == before
    code, _, _ = run(capsys, "convert", "gqa", "--predictions", answers, "--data-root", tmp_path,
                     "--output", tmp_path / "sub" / "gqa.json")
    assert code == 0 and [p.name for p in (tmp_path / "sub").iterdir()] == ["gqa.json"]


@pytest.mark.slow  # a subprocess: `python -m lmm.evaluation`
def test_module_entry_point(eval_samples):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmm.evaluation",
            "score",
            "pope",
            "--predictions",
            str(eval_samples / "pope/answers/llava-v1.5-13b.jsonl"),
            "--data-root",
            str(eval_samples),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["score"] == pytest.approx(200 / 3)
