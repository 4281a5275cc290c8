"""models/wan_sequence.py on ComfyUI's WanModel in one process (a 1-rank gloo group): the hooks and the
replaced self-attention give the plain forward; per-frame modulation expands exactly as Wan's repeat_e."""
import copy

import pytest
import torch
import torch.distributed as dist

from multi_gpu_helpers import load_wan_layers  # configures ComfyUI for the CPU first

from comfy.ldm.wan.model import repeat_e  # noqa: E402
from comfyui_parallel.models.wan.sequence import SequenceShard, install_sequence_parallel  # noqa: E402


@pytest.fixture(scope="module")
def one_rank_group(tmp_path_factory):
    created = not dist.is_initialized()
    if created:
        store = dist.FileStore(str(tmp_path_factory.mktemp("store") / "file"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield dist.group.WORLD
    if created:
        dist.destroy_process_group()


@pytest.mark.parametrize("frames, length", [(3, 48), (3, 50), (1, 7), (5, 5)])
def test_per_token_modulation_shards_join_to_wans_repeat_e(frames, length):
    e = torch.randn(2, frames, 6, 4)
    shards = []
    for rank in range(2):
        shard = SequenceShard(rank, 2, group=None)
        shard.begin(length)
        shards.append(shard.per_token(e))
    joined = torch.cat(shards, dim=1)[:, :length] if frames > 1 else shards[0]  # the last shard is padded
    assert torch.equal(joined, repeat_e(e, torch.empty(2, length, 1)) if frames > 1 else e)


def test_one_rank_sequence_parallel_model_equals_plain(one_rank_group):
    plain = load_wan_layers(2).model.diffusion_model
    parallel = copy.deepcopy(plain)
    install_sequence_parallel(parallel, 0, 1, one_rank_group)
    assert type(parallel.blocks[0].self_attn).__name__ == "UlyssesSelfAttention"
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 3, 8, 8, generator=generator)
    context = torch.randn(2, 5, 4096, generator=generator)
    for timestep in (torch.tensor([500.0, 10.0]), torch.tensor([[900.0, 500.0, 100.0], [1.0, 2.0, 3.0]])):
        with torch.inference_mode():
            torch.testing.assert_close(parallel(x, timestep, context), plain(x, timestep, context), rtol=0, atol=0)
