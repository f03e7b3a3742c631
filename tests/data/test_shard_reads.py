"""A manifest never makes the loader read outside its shard folder, block, or allocate what a span claims: shard names
are plain names (checked when the manifest is loaded, with the row and the name), member spans are integers >= 0,
and at read time the shard must be a regular file inside the folder and the span must lie inside it — a FIFO, a link
to /dev/zero or out of the folder, a span past the end are counted skips (``unreadable_shard``), never a hang."""

import json
import os
import shutil
import threading
from collections import Counter

import pytest

from lmm.data.manifest import MANIFEST_NAME, Manifest
from lmm.data.shards import read_member


def within(seconds, fn, *args):
    """``fn(*args)`` in a daemon thread: its result or its exception, and a failure (not a hang) after ``seconds``."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def rows_of(folder):
    return [json.loads(line) for line in (folder / MANIFEST_NAME).read_text().splitlines()]


def write_rows(folder, rows):
    (folder / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def copy(shard_dir, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(shard_dir, out)
    return out


@pytest.mark.parametrize("name", ["../shard-000000.tar", "/dev/zero", "sub/shard-000000.tar", "", "..",
                                  "..\\shard-000000.tar", "C:shard.tar"])
def test_a_shard_name_that_is_not_a_plain_name_is_refused_at_load(copy, name):
    rows = rows_of(copy)
    rows[3]["shard"] = name
    write_rows(copy, rows)
    with pytest.raises(ValueError, match=r"row 4\b.*shard name") as err:
        Manifest.load(copy)
    assert repr(name) in str(err.value)


@pytest.mark.parametrize("span", [[-1, 10], [0, -5], [1.5, 10], ["0", 10], [0], None, [True, 3]])
def test_a_member_span_that_is_not_two_integers_from_zero_is_refused_at_load(copy, span):
    rows = rows_of(copy)
    rows[2]["members"]["json"] = span
    write_rows(copy, rows)
    with pytest.raises(ValueError, match=r"row 3\b.*'json'"):
        Manifest.load(copy)


def test_a_manifest_line_that_is_not_utf8_names_the_file_and_line(copy):
    lines = (copy / MANIFEST_NAME).read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b'"id":"', b'"id":"\xff\xfe', 1)
    (copy / MANIFEST_NAME).write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"manifest.jsonl line 5: not UTF-8") as err:
        Manifest.load(copy)
    assert not isinstance(err.value, UnicodeDecodeError)
    (copy / MANIFEST_NAME).write_bytes(b"\n".join(lines[:4] + lines[5:]))  # without the bad line it loads
    (copy / "report.json").write_bytes(b'{"converted": "\xff"}')
    with pytest.raises(ValueError, match=r"report.json is not a JSON report"):
        Manifest.load(copy)


def test_read_member_refuses_fifos_devices_links_out_and_spans_past_the_end(copy, tmp_path):
    m = Manifest.load(copy)
    span = m.members[0]["json"]
    assert json.loads(read_member(copy / m.shards[0], span))["id"] == m.ids[0]
    os.mkfifo(copy / "fifo.tar")
    os.symlink("/dev/zero", copy / "zero.tar")
    (tmp_path / "outside.tar").write_bytes((copy / m.shards[0]).read_bytes())
    os.symlink(tmp_path / "outside.tar", copy / "out.tar")
    (copy / "dir.tar").mkdir()
    for name, why in [("fifo.tar", "not a regular file"), ("dir.tar", "not a regular file"),
                      ("zero.tar", "would leave"), ("out.tar", "would leave")]:
        for handles in (None, {}):
            with pytest.raises(OSError, match=why) as err:
                within(5, read_member, copy / name, span, handles)  # a FIFO is never waited on
            assert name in str(err.value)
            assert not handles  # nothing left open
    size = (copy / m.shards[0]).stat().st_size
    handles = {}
    for bad in ([size - 10, 20], [0, 1 << 50], [-1, 10], [0, -1]):  # a span is checked before a byte is read
        with pytest.raises(OSError, match=r"outside the file|not \[offset, size\]") as err:
            read_member(copy / m.shards[0], bad, handles)
        assert m.shards[0] in str(err.value) and str(bad[0]) in str(err.value)
    assert read_member(copy / m.shards[0], span, handles) == read_member(copy / m.shards[0], span)
    for fd, _ in handles.values():
        os.close(fd)


def test_a_fifo_and_a_link_to_dev_zero_in_the_folder_are_counted_skips(copy, make_dm):
    (copy / "shard-000001.tar").unlink()
    os.mkfifo(copy / "shard-000001.tar")
    (copy / "shard-000002.tar").unlink()
    os.symlink("/dev/zero", copy / "shard-000002.tar")
    rows = rows_of(copy)
    rows[-1]["members"]["json"][1] = 10 ** 12  # a span far past the end of its (regular) shard
    write_rows(copy, rows)
    dm = make_dm(shards=copy)
    dm.setup("fit")
    m, last = dm.manifest, len(rows) - 1
    planned = [i for mb in dm.rank_rows(0) for i in mb]
    bad = sum(m.shards[i] in ("shard-000001.tar", "shard-000002.tar") or i == last for i in planned)
    assert bad > 16
    batches = within(60, lambda: list(dm.train_dataloader()))  # the FIFO is refused, not waited on
    assert sum((b.skipped for b in batches), Counter()) == Counter(unreadable_shard=bad)
    c = dm.counts()
    assert c["data/planned"] == len(planned) == c["data/trained"] + bad and c["data/skipped"] == bad
