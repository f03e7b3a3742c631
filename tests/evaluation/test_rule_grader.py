"""The rule-based MM-Vet grader (issue 23): MM-Vet's ground-truth syntax (``<AND>``: every part, ``<OR>``: any
alternative) over normalised text, written in the GPT judge's grade-file format so ``MMVet.score`` reads it as is."""

import json

import pytest

from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.rule_grader import RULE_GRADER, grade_mmvet_rules, rule_grade


@pytest.mark.parametrize(("truth", "answer", "grade"), [
    ("green", "The circle is green.", 1.0),
    ("green", "GREEN", 1.0),
    ("green", "It is red.", 0.0),                       # a wrong answer scores 0
    ("green", "greenish", 0.0),                         # whole words only
    ("SALE", "The word is \"sale\"!", 1.0),              # case and punctuation do not matter
    ("4<OR>four", "It has four corners.", 1.0),          # <OR>: any alternative
    ("4<OR>four", "4", 1.0),
    ("0<OR>zero", "None: a circle has no corners.", 1.0),  # number words are digits ("none" = 0, as VQA's map)
    ("3<OR>three", "It has 4 corners.", 0.0),
    ("red circle<AND>blue square", "A red circle and a blue square.", 1.0),  # <AND>: every part must appear
    ("red circle<AND>blue square", "A red circle on grey.", 0.5),             # half the parts: half the grade
    ("red circle<AND>blue square", "A blue circle and a red square.", 0.0),   # the words, not in order: 0
    ("red circle<AND>blue square", "", 0.0),
])
def test_rule_grade_follows_mmvet_ground_truth_syntax(truth, answer, grade):
    assert rule_grade(truth, answer) == grade


def test_an_empty_ground_truth_is_an_error_in_our_words():
    with pytest.raises(ValueError, match="MM-Vet ground truth .* has no part to look for"):
        rule_grade("<AND>", "anything")


def test_the_grade_file_is_the_gpt_judges_format_and_mmvet_scores_it(tmp_path, write_json, write_jsonl):
    metadata = {"v1_0": {"question": "What color?", "answer": "green", "capability": ["rec"]},
                "v1_1": {"question": "How many?", "answer": "4<OR>four", "capability": ["rec", "know"]},
                "v1_2": {"question": "Caption?", "answer": "red circle<AND>blue square", "capability": ["gen"]},
                "v1_3": {"question": "Word?", "answer": "SALE", "capability": ["ocr"]}}
    write_json(tmp_path / "mm-vet" / "mm-vet.json", metadata)
    answers = [{"question_id": 0, "text": "Green."}, {"question_id": 1, "text": "four"},
               {"question_id": 2, "text": "a red circle"}]  # v1_3 unanswered: no grade, it adds 0
    out = grade_mmvet_rules(tmp_path, answers, tmp_path / "grades.json")
    grades = json.loads(out.read_text())
    assert grades == {"v1_0": {"model": [RULE_GRADER], "content": ["1.0"], "score": [1.0]},
                      "v1_1": {"model": [RULE_GRADER], "content": ["1.0"], "score": [1.0]},
                      "v1_2": {"model": [RULE_GRADER], "content": ["0.5"], "score": [0.5]}}
    scores = get_benchmark("mmvet").score(None, tmp_path, judgments=[out])
    assert scores["score"] == pytest.approx(100 * 2.5 / 4) and scores["n_ungraded"] == 1
    assert scores["judge"] == [RULE_GRADER] == ["rule-v1"]
    assert any("rule-graded" in w and "not comparable" in w for w in scores["warnings"])


def test_eval_with_the_rule_judge_scores_mmvet_and_writes_per_question_scores(model_folder, tmp_path):
    """eval.py's evaluation of a tiny model on the synthetic twins with ``judge.kind: rule`` (scale=tiny's setting):
    MM-Vet is scored (rule-graded, labelled so), LLaVA-W stays judge-only, and every scored benchmark gets its
    per_question.json beside scores.json, logged to MLflow with it."""
    from conftest import REPO
    from mlflow import MlflowClient
    from omegaconf import OmegaConf

    from lmm.evaluation.run import run_eval
    from lmm.synth.benchmarks import write_synthetic_benchmarks

    data = write_synthetic_benchmarks(tmp_path / "bench", 2, 28, names=["mmvet", "pope", "llava_wild"])
    store = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "eval" / "default.yaml"), {
        "data_root": str(data), "benchmarks": ["mmvet", "pope", "llava_wild"], "batch_size": 4,
        "max_new_tokens": 3, "device": "cpu", "tracking_uri": store, "judge": {"kind": "rule"}})
    out = run_eval(cfg, model_folder, tmp_path / "eval")
    mmvet = json.loads((tmp_path / "eval" / "mmvet" / "scores.json").read_text())
    assert mmvet["judge"] == ["rule-v1"] and mmvet["n_questions"] == 2 and 0.0 <= mmvet["score"] <= 100.0
    assert any("not comparable" in w for w in mmvet["warnings"])
    assert (tmp_path / "eval" / "mmvet" / "judgments" / "grade-rule-v1.json").is_file()
    assert "llava_wild is scored by an LLM judge only" in out["results"]["llava_wild"]["skipped"]
    for name, n in (("mmvet", 2), ("pope", len(get_benchmark("pope").questions(data)))):
        per_question = json.loads((tmp_path / "eval" / name / "per_question.json").read_text())
        assert per_question["benchmark"] == name and per_question["unit"] == get_benchmark(name).QUESTION_UNIT
        assert len(per_question["scores"]) == n and all(0 <= s <= 1 for s in per_question["scores"].values())
    mean = sum(per_question["scores"].values()) / n  # POPE: the accuracy over all its questions
    pope = out["results"]["pope"]
    cats = [pope[c] for c in ("adversarial", "popular", "random")]
    assert mean == pytest.approx(sum(c["accuracy"] * c["n"] for c in cats) / sum(c["n"] for c in cats) / 100)
    arts = {a.path for a in MlflowClient(store).list_artifacts(out["run_id"], "eval/mmvet")}
    assert "eval/mmvet/per_question.json" in arts
