"""Two real DDP processes (gloo, CPU): equal batch counts, disjoint samples covering the selection, one modality per
optimizer step. Uneven batch counts would hang the gradient all-reduce — the timeout would catch it."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lmm.data.manifest import Manifest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_get_equal_batch_counts_and_disjoint_samples(shard_dir, tmp_path, tiny_tokenizer):
    from conftest import CACHE  # the top-level test cache, where the tiny tokenizer already lives

    accum = 2
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "NODE_RANK": "0", "LOCAL_RANK": str(rank), "RANK": str(rank), "PL_DISABLE_FORK": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("ddp_worker.py")), str(shard_dir), str(tmp_path),
             str(CACHE), str(accum)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=150)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("DDP run timed out (uneven batch counts hang the all-reduce)")
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) > 10
    assert ranks[0]["steps"] == ranks[1]["steps"]
    ids = [[i for mb in r["batches"] for i in mb] for r in ranks]
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(Manifest.load(shard_dir).ids)
    for r in ranks:
        assert r["counts"]["data/planned"] == r["counts"]["data/trained"] == len(ids[r["rank"]])
    n = len(ranks[0]["batches"])
    for s in range(0, n, accum):  # an optimizer step: accum micro-batches on each rank, one modality
        kinds = {i.split("-")[0] == "text" for r in ranks for mb in r["batches"][s:s + accum] for i in mb}
        assert len(kinds) == 1, s
