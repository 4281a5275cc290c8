"""Per-call rank layout of the distributed mode: CFG groups only when the batch splits over them."""
import pytest
import torch

from comfyui_parallel.models.multi_gpu.layout import Layout, batch_share, call_layout, combine, most_cfg_groups


@pytest.mark.parametrize("batch,world,expected", [
    (2, 4, Layout(2, 2)), (4, 4, Layout(2, 2)), (2, 6, Layout(2, 3)),  # cond + uncond (or two latents)
    (1, 4, Layout(1, 4)), (3, 4, Layout(1, 4)),  # cfg 1, or cond and uncond sent apart: every rank on the sequence
    (2, 2, Layout(1, 2)), (2, 3, Layout(1, 3)), (1, 1, Layout(1, 1)),  # too few ranks (or odd) for CFG groups
])
def test_call_layout(batch, world, expected):
    layout = call_layout(batch, world)
    assert layout == expected and layout.groups * layout.size == world
    assert most_cfg_groups(world) >= layout.groups


def test_place_and_combine_return_every_row_once_in_batch_order():
    layout = call_layout(2, 4)
    assert [layout.place(rank) for rank in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    rows = torch.arange(6.0).reshape(2, 3)
    shares = [batch_share({"x": rows, "n": 7}, 2, share, 2) for share in range(2)]
    outputs = [shares[0]["x"], None, shares[1]["x"], None]
    assert torch.equal(combine(outputs, layout), rows) and shares[1]["n"] == 7
    assert torch.equal(combine([rows, None, None, None], call_layout(1, 4)), rows)
