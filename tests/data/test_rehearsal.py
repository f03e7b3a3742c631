"""benchmarks/data_rehearsal.py (`make rehearse-data`) at a small fraction of the real sizes: it writes the twin with
the real per-source shares, converts it (and again, writing nothing), plans for several ranks, loads rank 0's epoch
with forked workers whose memory it probes, and runs LLaVA's list-of-dicts baseline over the same order."""

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow  # a subprocess running the rehearsal at 0.2 % of the real sizes
def test_rehearsal_at_small_fraction(tmp_path):
    root = tmp_path / "rehearsal"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "data_rehearsal.py"), "--fraction", "0.002",
                           "--ranks", "2", "--workers", "2", "--size", "32", "--image-size", "24",
                           "--distinct-images", "4", "--interval", "0.05", "--root", str(root)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((root / "rehearsal.json").read_text())
    pre, fine = out["stages"]
    assert (pre["records"], fine["records"]) == (round(558_128 * 0.002), round(665_298 * 0.002))
    for st in (pre, fine):
        lo = st["loader"]
        assert st["converted"] == st["records"] and st["rejected"] == 0 and st["reconvert_written"] == 0
        assert lo["planned"] == lo["trained"] + lo["skipped"] == lo["samples"] > 0
        assert len(lo["workers"]) == 2 and lo["main"]["rss_peak"] > 0
        assert all(w["uss_end"] > 0 for w in lo["workers"])
    assert fine["baseline"]["samples"] == fine["loader"]["samples"]  # the same order, read by LLaVA's pattern
    assert "samples/s" in proc.stdout and "growth" in proc.stdout and "converting again" in proc.stdout
