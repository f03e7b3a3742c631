"""Row packing (lmm.models.packing): whole samples share rows no wider than the longest sample (one row under
varlen FlashAttention), every real token lands once, position ids restart per sample and over each row's unused
tail, and transformers reads exactly the samples back out of those position ids as separate attention segments."""

import pytest
import torch
from transformers.masking_utils import find_packed_sequence_indices

from lmm.models.packing import first_fit_rows, pack, row_layout


def test_first_fit_decreasing_fills_rows_and_refuses_a_sample_wider_than_a_row():
    row, col, fill = first_fit_rows([5, 9, 4, 2, 7], 9)
    assert fill == [9, 9, 9]  # 9 | 7+2 | 5+4
    assert sorted(zip(row, col)) == sorted([(2, 0), (0, 0), (2, 5), (1, 7), (1, 0)])
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_rows([3, 10], 9)


@pytest.mark.parametrize("one_row", [False, True])
def test_pack_places_every_token_once_with_per_sample_positions(one_row):
    lengths = torch.tensor([6, 2, 3, 5, 1])
    T, H = 7, 4
    keep = torch.arange(T)[None, :] < lengths[:, None]
    pos_ids = torch.arange(T).expand(5, T).masked_fill(~keep, 0)
    embeds = torch.randn(5, T, H)
    labels = torch.arange(5 * T).view(5, T).masked_fill(~keep, -100)
    layout = row_layout(lengths, one_row)
    rows, pos, lab, dest = pack(layout, keep, embeds, pos_ids, labels, -100)
    assert (layout.rows, layout.width) == ((1, 17) if one_row else (3, 6))  # 6 | 5+1 | 3+2
    assert rows.shape == (layout.rows, layout.width, H) and dest.unique().numel() == int(lengths.sum())
    assert torch.equal(rows.flatten(0, 1)[dest], embeds[keep])
    assert torch.equal(pos.flatten()[dest], pos_ids[keep])
    starts = pos.flatten()[dest] == 0
    assert torch.equal(lab.flatten()[dest][~starts], labels[keep][~starts])  # a sample's first token: no target
    assert (lab.flatten()[dest][starts] == -100).all()
    tail = torch.ones(layout.rows * layout.width, dtype=torch.bool)
    tail[dest] = False
    assert (rows.flatten(0, 1)[tail] == 0).all() and (lab.flatten()[tail] == -100).all()
    # transformers' packed-sequence detection: one segment per sample (plus each row's tail), never across samples
    seg = find_packed_sequence_indices(pos)
    seg_of = (seg + torch.arange(layout.rows)[:, None] * 100).flatten()[dest]
    sample_of = torch.arange(5)[:, None].expand(5, T)[keep]
    assert seg_of.unique().numel() == 5
    for s in range(5):
        assert seg_of[sample_of == s].unique().numel() == 1
