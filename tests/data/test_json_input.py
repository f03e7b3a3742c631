"""Text that is not UTF-8 costs the records that hold it, never the conversion: a JSONL line or an element of a
JSON list with a bad byte is rejected with its id, index and line number (``invalid_utf8``), the others convert,
and in = out + rejected. A file that is not JSON at all is still one clear error naming it."""

import json
import re

import pytest

from lmm.data.records import read_records
from lmm.data.shards import convert

RULES = [{"source": "x"}]


def record(sid, text="A shape."):
    return {"id": sid, "conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": text}]}


def reasons(report):
    return {r["id"]: (r["reason"], r["detail"]) for r in report["rejected_samples"]}


def test_a_jsonl_line_with_a_bad_byte_is_one_rejected_record(tmp_path):
    lines = [json.dumps(record(f"r{i}", "caf\u00e9 \u2028 ok"), ensure_ascii=False).encode() for i in range(4)]
    lines[2] = lines[2].replace(b"ok", b"o\xffk")  # a Latin-1 byte in the middle of line 3
    src = tmp_path / "d.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # with a byte-order mark, as some editors write
    report = convert(src, None, tmp_path / "out", rules=RULES, echo=lambda s: None)
    got = reasons(report)
    assert list(got) == ["r2"] and got["r2"][0] == "invalid_utf8"
    assert "line 3" in got["r2"][1] and "0xff" in got["r2"][1]
    assert report["records_in"] == 4 and report["converted"] == 3 and report["rejected"] == 1


def test_a_bad_byte_in_a_json_list_rejects_only_its_record(tmp_path):
    recs = [record(f"r{i}", "na\u00efve") for i in range(5)]
    text = json.dumps(recs, indent=2, ensure_ascii=False).encode()
    bad = text.index(b'"r3"')
    text = text[:bad] + text[bad:].replace("na\u00efve".encode(), b"na\xefve", 1)  # an unfinished 3-byte sequence
    src = tmp_path / "d.json"
    src.write_bytes(text)
    line = text[:text.index(b"na\xefve")].count(b"\n") + 1
    records, rejected = read_records(src)
    assert [r.id for r in records] == ["r0", "r1", "r2", "r4"] and records[3].turns[0][1] == "na\u00efve"
    assert [(e.sample_id, e.reason) for e in rejected] == [("r3", "invalid_utf8")]
    assert f"line {line}" in rejected[0].detail and "#3" in rejected[0].detail
    report = convert(src, None, tmp_path / "out", rules=RULES, echo=lambda s: None)
    assert report["records_in"] == 5 == report["converted"] + report["rejected"] and report["rejected"] == 1


def test_a_lone_surrogate_escape_is_rejected_not_a_crash(tmp_path):
    src = tmp_path / "d.json"
    src.write_text("[" + json.dumps(record("ok")) + ', {"id": "sur", "conversations": [{"from": "human", '
                   '"value": "Q"}, {"from": "gpt", "value": "half a pair \\ud83d"}]}]')
    report = convert(src, None, tmp_path / "out", rules=RULES, echo=lambda s: None)
    got = reasons(report)
    assert list(got) == ["sur"] and got["sur"][0] == "invalid_utf8" and report["converted"] == 1


@pytest.mark.parametrize("content", [b'[{"id": "a", \xff}]', b"[1, 2", b'{"id": "a"}', b"\xff\xfe[]"])
def test_a_file_that_is_not_a_json_list_is_one_clear_error(tmp_path, content):
    src = tmp_path / "d.json"
    src.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(src))):
        read_records(src)
