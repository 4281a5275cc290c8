"""What of a call's transformer_options the distributed workers get: plain data, never patch functions."""
import pytest

from comfyui_parallel.models.multi_gpu.call_options import function_patches, worker_options
from comfyui_parallel.utils.errors import InputError


def attention_patch(q, k, v, extra_options):
    return q, k, v


def test_plain_data_travels_and_the_rest_stays_in_the_server():
    options = {"rope_options": {"scale_t": 0.5}, "cond_or_uncond": [1, 0], "sigmas": None, "patches": {},
               "patches_replace": {}, "easycache": object()}
    assert worker_options(options) == {"rope_options": {"scale_t": 0.5}}
    assert worker_options({}) == {}


def test_every_function_patch_is_named_with_its_function():
    options = {"patches": {"attn1_patch": [attention_patch], "attn1_output_patch": [attention_patch]},
               "patches_replace": {"dit": {("double_block", 3): attention_patch}},
               "optimized_attention_override": attention_patch}
    names = function_patches(options)
    where = f"({__name__}.attention_patch)"
    assert names == [f"patches['attn1_patch'] {where}", f"patches['attn1_output_patch'] {where}",
                     f"patches_replace['dit'][('double_block', 3)] {where}", f"optimized_attention_override {where}"]
    with pytest.raises(InputError, match=r"^model: parallelism_type 'distributed'.*attn1_patch.*allowed: "):
        worker_options(options)
