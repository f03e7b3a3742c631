"""Which of our numbers stand beside the paper's (issue 22 item 3): a row is comparable only when the model is real
AND its benchmark files are the real ones AND the split is the paper's. Whether the benchmarks were the synthetic
twins comes from the evaluation run itself (its `benchmark_data` tag; for older runs its `synthetic_benchmarks` /
`data_root` params), not only from the model: a real model scored on the twins is marked † as well."""

import pytest
from conftest import REPO
from mlflow import MlflowClient

from lmm.tracking.compare import write_report
from lmm.tracking.paper import load_paper_results
from lmm.tracking.runs import collect_runs

from .test_compare import _line, _run

EVALUATIONS = [  # (experiment, eval run tags, eval run params, headline scores); every model is real
    ("row7_gqa", {"benchmark_data": "synthetic"}, [], {"gqa": 40.0}),            # eval.py writes the tag
    ("row3_mlp_connector", {"benchmark_data": "real"}, [], {"gqa": 55.0}),
    ("row2_format_prompt", {}, [("data_root", "/home/u/.cache/lmm/synthetic/eval")], {"gqa": 41.0}),  # older runs
    ("row4_okvqa_ocr", {}, [("synthetic_benchmarks", '{"n_images": 24, "image_size": 64}')], {"gqa": 42.0}),
    ("llava_v1_5_7b", {"benchmark_data": "real", "split.vqav2": "val"}, [], {"vqav2": 76.0, "gqa": 61.0}),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One store holding a real (model.twin=False) finetune run per experiment and its evaluation run."""
    tmp_path = tmp_path_factory.mktemp("comparable")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(store)
    exp = c.create_experiment("lmm")
    for i, (experiment, tags, params, scores) in enumerate(EVALUATIONS):
        parent = _run(c, exp, {"experiment": experiment, "stage": "finetune"}, [("model.twin", False)], start=10 * i)
        _run(c, exp, {"experiment": experiment, "kind": "eval", "mlflow.parentRunId": parent, **tags}, params,
             [(f"eval/{b}/score", v) for b, v in scores.items()], start=10 * i + 1)
    runs = collect_runs([store])
    out = write_report(runs, load_paper_results(REPO / "experiments" / "paper_results.yaml"), tmp_path / "report")
    return runs, out["table"].set_index(["experiment", "benchmark"]), out["report"].read_text()


def test_a_real_model_on_the_synthetic_benchmarks_is_not_comparable(report):
    runs, table, text = report
    ev = runs.eval_runs.set_index("experiment")
    assert not ev["twin"].any()                                       # every model is real...
    assert ev["synthetic_data"].to_dict() == {"row7_gqa": True, "row3_mlp_connector": False,
                                              "row2_format_prompt": True, "row4_okvqa_ocr": True,
                                              "llava_v1_5_7b": False}
    assert "| 40.0 / 62.0* |" in _line(text, "| row7_gqa † |")      # ...but scored on the twins: marked
    assert "| 41.0 / 46.8 |" in _line(text, "| row2_format_prompt † |")
    assert "| 42.0 / 50.0 |" in _line(text, "| row4_okvqa_ocr † |")
    assert "| 55.0 / 47.3 |" in _line(text, "| row3_mlp_connector |")
    assert "`row7_gqa †`: synthetic twins of the benchmarks" in _line(text, "> **Not comparable to the paper")
    assert not table.loc[("row7_gqa", "gqa"), "comparable"] and table.loc[("row3_mlp_connector", "gqa"), "comparable"]


def test_a_number_from_another_split_is_not_comparable_and_says_so_in_its_cell(report):
    _, table, text = report
    row = _line(text, "| llava_v1_5_7b |")
    assert "| 76.0 (val) / 78.5* |" in row and "| 61.0 / 62.0* |" in row
    assert not table.loc[("llava_v1_5_7b", "vqav2"), "comparable"]
    assert table.loc[("llava_v1_5_7b", "gqa"), "comparable"]
    assert not table.loc[("llava_v1_5_7b", "mme"), "comparable"]       # nothing of ours to compare
