"""Per-question scores (issue 23): beside scores.json every evaluation writes per_question.json, one score in [0, 1]
per question of the benchmark under a key stable across runs, whose mean is the official headline accuracy (the
Table-2 report bootstraps over them). Checked on the synthetic twins with answers that are partly right."""

import itertools

import pytest

from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.rule_grader import grade_mmvet_rules
from lmm.synth.benchmarks import write_synthetic_benchmarks

WORDS = ["STOP", "Red.", "yes", "no", "2", "blue", "green", "circle", "square", "left", "3", "No, there is not."]
NAMES = ["vqav2", "gqa", "pope", "textvqa", "mme", "mmvet", "vizwiz"]


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    return write_synthetic_benchmarks(tmp_path_factory.mktemp("pq") / "eval", 6, 16, names=NAMES)


def _bench(name):
    bench = get_benchmark(name)
    return bench.with_options(split="val") if name in ("vqav2", "vizwiz") else bench


def _answers(bench, root, skip=()):
    words = itertools.cycle(WORDS)
    return [{"question_id": q.question_id, "prompt": q.answer_prompt, "text": next(words)}
            for i, q in enumerate(bench.questions(root)) if i not in skip]


def _headline(name, result):
    """The official accuracy as a fraction: POPE's mean accuracy over its questions, MME's per-question accuracy
    (not the MME score), MM-Vet's total."""
    if name == "pope":
        cats = [result[c] for c in ("adversarial", "popular", "random")]
        return sum(c["accuracy"] * c["n"] for c in cats) / sum(c["n"] for c in cats) / 100
    if name == "mme":
        tasks = result["tasks"].values()
        return sum(t["acc"] * t["n_questions"] for t in tasks) / sum(t["n_questions"] for t in tasks) / 100
    return result["score"] / 100


@pytest.mark.parametrize("name", NAMES)
def test_the_mean_of_the_question_scores_is_the_official_accuracy(twins, name, tmp_path):
    bench = _bench(name)
    answers = _answers(bench, twins)
    if name == "mmvet":  # every other sample answered with its ground truth
        truth = bench.metadata(twins)
        for a in answers[::2]:
            a["text"] = truth[f"v1_{a['question_id']}"]["answer"].split("<OR>")[0].replace("<AND>", " and ")
    judgments = [grade_mmvet_rules(twins, answers, tmp_path / "g.json")] if name == "mmvet" else None
    result, scores = bench.score_questions(answers, twins, judgments)
    assert result == bench.score(answers, twins, judgments)           # the same scoring, nothing else
    assert scores == bench.question_scores(answers, twins, judgments)
    n = result.get("n_questions") or len(bench.questions(twins))
    assert len(scores) == n and all(0.0 <= s <= 1.0 for s in scores.values())
    assert sum(scores.values()) > 0                                     # partly right answers
    assert sum(scores.values()) / len(scores) == pytest.approx(_headline(name, result), abs=1e-12)
    again = bench.question_scores(list(reversed(answers)), twins, judgments) if name not in ("pope", "mme") else \
        scores
    assert list(again) == list(scores) and again == scores               # keys stable, in question-file order
    assert bench.QUESTION_UNIT


def test_question_keys_are_unique_across_pope_splits_and_mme_prompts(twins):
    pope = get_benchmark("pope").question_scores(_answers(get_benchmark("pope"), twins), twins)
    assert {k.split("/")[0] for k in pope} == {"adversarial", "popular", "random"}
    mme = get_benchmark("mme")
    keys = list(mme.question_scores(_answers(mme, twins), twins))
    assert len(keys) == len(set(keys)) == len(mme.questions(twins))    # two questions per image, two keys


def test_an_unanswered_question_scores_zero(twins):
    for name in ("vqav2", "textvqa"):
        bench = _bench(name)
        full = bench.question_scores(_answers(bench, twins), twins)
        first = next(iter(full))
        cut = bench.question_scores(_answers(bench, twins, skip={0}), twins)
        assert list(cut) == list(full) and cut[first] == 0.0


def test_a_benchmark_whose_headline_is_no_question_mean_says_so():
    with pytest.raises(ValueError, match="llava_wild has no per-question scores"):
        get_benchmark("llava_wild").question_scores(None, "/nonexistent", [])
