"""Which twins a row's numbers come from (issue 23 item 2, part 3): training runs (and, through them or the model
folder, their evaluations) carry a `twins` tag — `pretrained` under `twins=pretrained`, `random` under
`twins=random` — and the comparison report names them per row instead of calling every twin "random"."""

import pandas as pd
import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from lmm.tracking.compare import write_report
from lmm.tracking.mlflow import twins_tag
from lmm.tracking.paper import load_paper_results
from lmm.tracking.runs import collect_runs

from .test_compare import _line, _run


def _model(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={REPO}", "paths.output_dir=/tmp/unused",
                                           *overrides]).model


def test_the_twins_tag_follows_the_twins_config():
    assert twins_tag(_model("twins=pretrained")) == {"twins": "pretrained"}
    assert twins_tag(_model("twins=random")) == {"twins": "random"}
    assert twins_tag(_model()) == {"twins": "random"}                   # train.py's default
    assert twins_tag(_model("twins=pretrained", "model/llm=tinyllama_1b")) == {"twins": "pretrained-vision"}
    assert twins_tag({"twin": False, "vision": {"twin": {"pretrain": {"steps": 1}}}, "llm": {}}) == {}  # real


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("twins_kind")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(store)
    exp = c.create_experiment("lmm")
    rows = [("row7_gqa", {"twins": "pretrained"}, {}), ("row3_mlp_connector", {"twins": "random"}, {}),
            ("row2_format_prompt", {}, {"twins": "pretrained"}),  # the evaluation says it (from the model folder)
            ("row4_okvqa_ocr", {}, {})]                              # a run from before the tag
    for i, (experiment, train_tags, eval_tags) in enumerate(rows):
        parent = _run(c, exp, {"experiment": experiment, "stage": "finetune", **train_tags}, [("model.twin", True)],
                      start=10 * i)
        _run(c, exp, {"experiment": experiment, "kind": "eval", "mlflow.parentRunId": parent,
                      "benchmark_data": "synthetic", **eval_tags}, [], [("eval/gqa/score", 40.0 + i)],
             start=10 * i + 1)
    runs = collect_runs([store])
    out = write_report(runs, load_paper_results(REPO / "experiments" / "paper_results.yaml"), tmp_path / "report")
    return runs, out["report"].read_text()


def test_evaluations_inherit_the_twins_tag_of_their_training_run(report):
    runs, _ = report
    ev = runs.eval_runs.set_index("experiment")["twins"].to_dict()
    assert pd.isna(ev.pop("row4_okvqa_ocr"))                              # a run from before the tag: unknown
    assert ev == {"row7_gqa": "pretrained", "row3_mlp_connector": "random", "row2_format_prompt": "pretrained"}


def test_the_report_says_pretrained_or_random_twins_per_row(report):
    _, text = report
    warning = _line(text, "> **Not comparable to the paper")
    assert "random tiny models trained on synthetic data" not in warning   # no longer said of every twin row
    assert "`row7_gqa †`: synthetic twins of the benchmarks, tiny twin model (pretrained twins)" in warning
    assert "`row3_mlp_connector †`: synthetic twins of the benchmarks, tiny twin model (random twins)" in warning
    assert "`row2_format_prompt †`: synthetic twins of the benchmarks, tiny twin model (pretrained twins)" in warning
    assert "`row4_okvqa_ocr †`: synthetic twins of the benchmarks, tiny twin model;" in warning
