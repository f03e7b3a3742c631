"""Answers written as they come (issue 21 item 12): a bad image at the end of a benchmark keeps every answer
before it; a re-run with the same settings generates only the rest (after a line cut by a crash too) and ends with
a clean run's answers; a failed evaluation ends its MLflow run FAILED, never RUNNING."""

import json

import pytest
from conftest import REPO
from mlflow import MlflowClient
from omegaconf import OmegaConf

from lmm.evaluation.benchmarks.base import QuestionImageError
from lmm.evaluation.partial import ANSWERS, KEY, PARTIAL, PARTIAL_KEY
from lmm.evaluation.run import PER_QUESTION, run_eval
from lmm.synth.benchmarks import write_synthetic_benchmarks


def _cfg(data_root, store, **changes):
    cfg = OmegaConf.load(REPO / "conf" / "eval" / "default.yaml")
    return OmegaConf.merge(cfg, {"data_root": str(data_root), "benchmarks": ["gqa"], "batch_size": 1,
                                 "max_new_tokens": 3, "device": "cpu", "tracking_uri": store, **changes})


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_ids(records):
    return [{k: v for k, v in r.items() if k != "answer_id"} for r in records]


def test_a_bad_last_image_keeps_the_answers_before_it_and_a_rerun_generates_only_the_rest(model_folder, tmp_path):
    data = write_synthetic_benchmarks(tmp_path / "bench", 2, 28, names=["gqa"])
    questions_file = data / "gqa" / "llava_gqa_testdev_balanced.jsonl"
    rows = _records(questions_file)
    images = data / "gqa" / "data" / "images"
    good = (images / rows[-1]["image"]).read_bytes()
    rows[-1]["image"] = "last.jpg"  # the last question alone has this image
    questions_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (images / "last.jpg").write_bytes(good[: len(good) // 3])  # cut short: a corrupt JPEG
    store = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "eval"

    with pytest.raises(QuestionImageError) as err:
        run_eval(_cfg(data, store), model_folder, out)
    message = str(err.value)
    assert f"gqa: question {rows[-1]['question_id']!r}" in message and str(images / "last.jpg") in message
    assert f"The {len(rows) - 1} answer(s) before it are saved in {out / 'gqa' / PARTIAL}" in message
    partial = _records(out / "gqa" / PARTIAL)
    assert [r["question_id"] for r in partial] == [r["question_id"] for r in rows[:-1]]
    assert not (out / "gqa" / ANSWERS).exists()
    client = MlflowClient(store)
    [failed] = client.search_runs([client.get_experiment_by_name("lmm").experiment_id])
    assert failed.info.status == "FAILED" and "QuestionImageError" in failed.data.tags["error"]

    (images / "last.jpg").write_bytes(good)  # the image fixed: only the last question is generated
    result = run_eval(_cfg(data, store), model_folder, out)
    assert result["results"]["gqa"]["n_resumed"] == len(rows) - 1 and result["results"]["gqa"]["n_missing"] == 0
    answers = _records(out / "gqa" / ANSWERS)
    assert answers[:-1] == partial and len(answers) == len(rows)  # the kept ones, answer ids included
    assert sorted(p.name for p in (out / "gqa").iterdir()) == sorted([ANSWERS, KEY, "scores.json", PER_QUESTION])
    assert client.get_run(result["run_id"]).info.status == "FINISHED"

    clean = run_eval(_cfg(data, store), model_folder, tmp_path / "clean")
    assert clean["results"]["gqa"]["n_resumed"] == 0
    assert _without_ids(_records(tmp_path / "clean" / "gqa" / ANSWERS)) == _without_ids(answers)

    # A partial file whose second line was cut by a crash: the whole first line is kept, the rest generated again.
    crashed = tmp_path / "crashed" / "gqa"
    crashed.mkdir(parents=True)
    lines = (out / "gqa" / ANSWERS).read_bytes().split(b"\n")
    (crashed / PARTIAL).write_bytes(lines[0] + b"\n" + lines[1][:20])
    (crashed / PARTIAL_KEY).write_bytes((out / "gqa" / KEY).read_bytes())
    cut = run_eval(_cfg(data, store), model_folder, crashed.parent)
    assert cut["results"]["gqa"]["n_resumed"] == 1
    assert _records(crashed / ANSWERS)[0] == answers[0] and _without_ids(_records(crashed / ANSWERS)) == \
        _without_ids(answers)
    again = run_eval(_cfg(data, store), model_folder, out)  # finished with the same settings: nothing generated
    assert again["results"]["gqa"]["n_resumed"] == len(rows) and "answers_per_s" not in again["results"]["gqa"]
    assert _records(out / "gqa" / ANSWERS) == answers
    other = run_eval(_cfg(data, store, max_new_tokens=2), model_folder, out)  # other settings: all generated
    assert other["results"]["gqa"]["n_resumed"] == 0 and not (out / "gqa" / PARTIAL_KEY).exists()
