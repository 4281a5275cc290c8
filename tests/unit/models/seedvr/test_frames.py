"""Resize / crop / pad / chunking of input frames."""
import pytest
import torch

from comfyui_parallel.models.seedvr.frames import (Chunk, area_size, blend_chunks, make_chunks, pad_frames,
                                                   padded_length, preprocess)
from comfyui_parallel.utils.errors import InputError


def test_area_resize_keeps_aspect_and_crops_to_16():
    assert area_size(360, 640, 720, 1280) == (720, 1280)
    out = preprocess(torch.rand(2, 100, 70, 3), 64, 64)
    assert out.shape[2] % 16 == 0 and out.shape[3] % 16 == 0
    assert out.shape[:2] == (2, 3) and out.min() >= -1 and out.max() <= 1


def test_too_small_target_and_bad_images_are_refused():
    with pytest.raises(InputError, match="res_h"):
        preprocess(torch.rand(1, 100, 1000, 3), 16, 16)
    with pytest.raises(InputError, match="images"):
        preprocess(torch.rand(1, 10, 10), 64, 64)


@pytest.mark.parametrize("frames,expected", [(1, 1), (2, 5), (4, 5), (5, 5), (6, 9), (9, 9), (10, 13)])
def test_padding_to_4n_plus_1_repeats_last_frame(frames, expected):
    assert padded_length(frames) == expected
    video = torch.arange(frames, dtype=torch.float32).view(frames, 1)
    padded = pad_frames(video)
    assert padded.shape[0] == expected and padded[-1].item() == frames - 1


def test_chunks_with_overlap_cover_all_frames():
    assert make_chunks(4, 5, 0) == [Chunk(0, 4)]
    assert make_chunks(12, 5, 1) == [Chunk(0, 5), Chunk(4, 9), Chunk(8, 12)]
    for bad in [(12, 4, 0), (12, 5, 5), (12, 0, 0)]:
        with pytest.raises(InputError):
            make_chunks(*bad)


def test_blend_reproduces_consistent_chunks_and_crossfades():
    full = torch.arange(12, dtype=torch.float32).view(12, 1)
    chunks = make_chunks(12, 5, 2)
    parts = [full[c.start:c.stop] for c in chunks]
    torch.testing.assert_close(blend_chunks(parts, chunks, 12), full)
    parts = [torch.zeros(c.stop - c.start, 1) + i for i, c in enumerate(chunks)]
    mixed = blend_chunks(parts, chunks, 12).flatten()
    assert mixed[0] == 0 and 0 < mixed[3] < 1 and mixed[-1] == len(chunks) - 1
