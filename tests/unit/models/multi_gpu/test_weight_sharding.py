"""weight_sharding resolved for the distributed mode: replicate when a replica fits, fsdp when asked or needed,
and fsdp refused by name on a torch without FSDP2 (the pack itself still loads there)."""
import sys

import pytest
import torch

from comfyui_parallel.models.multi_gpu.sharding import resolve_sharding
from comfyui_parallel.utils.errors import InputError
from devtools.demo_models import tiny_wan

DEVICES = [torch.device("cpu", 0), torch.device("cpu", 1)]


@pytest.fixture(scope="module")
def wan():
    with torch.device("meta"):
        return tiny_wan(num_layers=4)


def test_replicate_fits_and_fsdp_when_asked(wan):
    assert resolve_sharding(wan, "distributed", DEVICES, 0, "auto", 2)[0] == "replicate"
    sharding, reason = resolve_sharding(wan, "distributed", DEVICES, 0, "fsdp", 2)
    assert sharding == "fsdp" and reason.startswith("fsdp: ")


def test_fsdp_is_refused_by_name_on_a_torch_without_fsdp2(wan, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.distributed.fsdp", None)  # as on a torch before 2.6: import fails
    with pytest.raises(InputError, match=r"^weight_sharding: fsdp needs fsdp here .* has no torch.distributed.fsdp"):
        resolve_sharding(wan, "distributed", DEVICES, 0, "fsdp", 2)
    assert resolve_sharding(wan, "distributed", DEVICES, 0, "replicate", 2)[0] == "replicate"
