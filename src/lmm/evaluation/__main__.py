"""``python -m lmm.evaluation`` (alias ``lmm-score``): score, judge and convert LLaVA answer files.

    score   BENCH --predictions answers.jsonl --data-root playground/data/eval [--judgments F ...] [--split S]
    judge   {llava_wild,mmvet} --predictions answers.jsonl --data-root DIR --base-url URL --model NAME --output F
    convert {vqav2,vizwiz,gqa,mmbench,mmbench_cn,seed,mmvet} --predictions answers.jsonl --data-root DIR --output F
            (the official file of LLaVA's scripts/convert_*.py; F is written atomically and may not be the
            predictions file)

``score`` prints one JSON object on stdout (warnings go to stderr). Exit codes: 0 ok, 2 error (missing files,
malformed predictions, judge failure), 3 skipped (a judge-scored benchmark without judgments).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from lmm.evaluation.answers import PredictionsError, read_predictions
from lmm.evaluation.benchmarks import BENCHMARKS, BenchmarkDataError, JudgeNotConfiguredError, get_benchmark
from lmm.evaluation.benchmarks.base import warn_stderr
from lmm.evaluation.judge import JudgeConfig, JudgeError, judge_file
from lmm.evaluation.submission import SUBMISSIONS, write_submission

JUDGED = ("llava_wild", "mmvet")
CONVERTIBLE = tuple(SUBMISSIONS)
EXIT_ERROR, EXIT_SKIPPED = 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lmm.evaluation", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="score an answer file the way the official script does")
    score.add_argument("benchmark", help=f"one of: {', '.join(BENCHMARKS)}")
    score.add_argument("--predictions", type=Path, help="LLaVA answer JSONL (optional for judged benchmarks)")
    score.add_argument("--data-root", type=Path, required=True, help="LLaVA's playground/data/eval")
    score.add_argument(
        "--judgments", type=Path, nargs="+", help="judge outputs: LLaVA-W reviews, MM-Vet grades"
    )
    score.add_argument("--split", help="vqav2: test-dev|val; vizwiz: test|val; scienceqa: pid_splits key")
    score.add_argument("--annotations", help="vqav2: annotation file with 10 answers per question")

    judge = sub.add_parser("judge", help="run an LLM judge and write the official judgment file")
    judge.add_argument("benchmark", choices=JUDGED)
    judge.add_argument("--predictions", type=Path, required=True)
    judge.add_argument("--data-root", type=Path, required=True)
    judge.add_argument(
        "--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"
    )
    judge.add_argument("--model", required=True, help="judge model name sent to the endpoint")
    judge.add_argument(
        "--output", type=Path, required=True, help="review JSONL (llava_wild) / grade JSON (mmvet)"
    )
    judge.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key (if any)")
    judge.add_argument("--runs", type=int, default=1, help="judge runs (paper: 3)")
    judge.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    judge.add_argument("--no-resume", action="store_true", help="ignore judgments already in --output")

    convert = sub.add_parser("convert", help="write the upload / official-evaluator file of a benchmark")
    convert.add_argument("benchmark", choices=CONVERTIBLE)
    convert.add_argument("--predictions", type=Path, required=True)
    convert.add_argument("--data-root", type=Path, required=True)
    convert.add_argument("--output", type=Path, required=True)
    return parser


def _score(args: argparse.Namespace) -> dict[str, Any]:
    bench = get_benchmark(args.benchmark)
    options = {k: v for k, v in (("split", args.split), ("annotations", args.annotations)) if v is not None}
    names = {f.name for f in dataclasses.fields(bench)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"{args.benchmark} has no option(s) {unknown}")
    bench = bench.with_options(**options) if options else bench
    predictions = read_predictions(args.predictions) if args.predictions is not None else None
    return bench.score(predictions, args.data_root, args.judgments)


def _judge(args: argparse.Namespace) -> dict[str, Any]:
    config = JudgeConfig(
        base_url=args.base_url, model=args.model, api_key_env=args.api_key_env, timeout_s=args.timeout
    )
    out, resume = args.output, not args.no_resume
    if args.benchmark == "mmvet":
        outputs = [
            judge_file("mmvet", args.predictions, args.data_root, out, config, runs=args.runs, resume=resume)
        ]
    else:
        paths = (
            [out]
            if args.runs == 1
            else [out.with_name(f"{out.stem}-eval{k}{out.suffix}") for k in range(1, args.runs + 1)]
        )
        outputs = [
            judge_file("llava_wild", args.predictions, args.data_root, p, config, resume=resume)
            for p in paths
        ]
    return {"benchmark": args.benchmark, "judge": args.model, "judgments": [str(p) for p in outputs]}


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (through links, ``..`` or another spelling)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _convert(args: argparse.Namespace) -> dict[str, Any]:
    if _same_file(args.output, args.predictions):
        raise ValueError(f"--output {args.output} is the predictions file {args.predictions}: converting would "
                         "replace the answers; choose another output file")
    bench = get_benchmark(args.benchmark)
    predictions = read_predictions(args.predictions)
    records = predictions.records
    result: dict[str, Any] = {"benchmark": args.benchmark, "output": str(args.output)}
    if predictions.n_unparsable:
        if not bench.skips_unparsable:
            raise PredictionsError(predictions.describe_unparsable())
        warn_stderr([predictions.describe_unparsable() + " (skipped, as the official converter does)"])
    result["n_unparsable"] = predictions.n_unparsable
    result.update(write_submission(bench, records, args.data_root, args.output))
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"score": _score, "judge": _judge, "convert": _convert}
    try:
        result = handlers[args.command](args)
    except JudgeNotConfiguredError as err:
        print(json.dumps({"benchmark": args.benchmark, "skipped": str(err)}))
        print(str(err), file=sys.stderr)
        return EXIT_SKIPPED
    except (PredictionsError, BenchmarkDataError, JudgeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyError as err:
        print(f"error: a benchmark or prediction file lacks the expected field {err}", file=sys.stderr)
        return EXIT_ERROR
    warn_stderr(result.get("warnings", []))
    print(json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
