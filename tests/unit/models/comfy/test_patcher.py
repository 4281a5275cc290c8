"""Multi-GPU and Offload both manage where blocks live: one MODEL carries only one of them."""
import pytest
import torch

from comfyui_parallel.models.comfy.runtime import ensure_comfy

ensure_comfy()
import comfy.model_patcher  # noqa: E402

from comfyui_parallel.models.multi_gpu.patcher import MultiGPUPatcherMixin  # noqa: E402
from comfyui_parallel.models.offload.patcher import OffloadPatcherMixin  # noqa: E402
from comfyui_parallel.models.comfy.patcher import refuse_other_block_manager, with_mixin  # noqa: E402
from comfyui_parallel.utils.errors import InputError  # noqa: E402

BASE = comfy.model_patcher.ModelPatcher


def test_one_class_per_base_and_mixin_and_idempotent():
    cls = with_mixin(BASE, OffloadPatcherMixin)
    assert cls is with_mixin(BASE, OffloadPatcherMixin)
    assert with_mixin(cls, OffloadPatcherMixin) is cls
    assert cls.__name__ == "OffloadModelPatcher" and issubclass(cls, BASE)


@pytest.mark.parametrize("have, add", [(OffloadPatcherMixin, MultiGPUPatcherMixin),
                                       (MultiGPUPatcherMixin, OffloadPatcherMixin)])
def test_the_other_block_manager_is_refused_naming_the_model_input(have, add):
    patcher = BASE(torch.nn.Module(), torch.device("cpu"), torch.device("cpu"))
    patcher.__class__ = with_mixin(BASE, have)
    with pytest.raises(InputError, match=rf"^model: comes from the {have.BLOCK_MANAGER} nodes"):
        refuse_other_block_manager(patcher, add)
    refuse_other_block_manager(patcher, have)  # re-applying the same kind is allowed
    refuse_other_block_manager(BASE(torch.nn.Module(), torch.device("cpu"), torch.device("cpu")), add)
