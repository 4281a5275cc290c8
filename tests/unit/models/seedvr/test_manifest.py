"""The full-size SeedVR models built on the meta device match the reference key manifests
(tests/data/seedvr/*.tsv, read from the official code's models)."""
from pathlib import Path

import pytest

from devtools.seedvr_manifest import build_manifests

REFERENCE = Path(__file__).resolve().parents[3] / "data" / "seedvr"


def _reference(name: str) -> list:
    lines = (REFERENCE / name).read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def manifests():
    return build_manifests()


@pytest.mark.parametrize("name", ["seedvr_dit_3b.tsv", "seedvr_dit_7b.tsv", "seedvr_vae.tsv"])
def test_names_shapes_dtypes_and_order_match_reference(manifests, name):
    ours, ref = manifests[name], _reference(name)
    ours_names = {line.split("\t")[0] for line in ours}
    ref_names = {line.split("\t")[0] for line in ref}
    assert not ref_names - ours_names, f"missing: {sorted(ref_names - ours_names)[:10]}"
    assert not ours_names - ref_names, f"extra: {sorted(ours_names - ref_names)[:10]}"
    assert ours == ref


def test_parameter_counts_match_notes():
    from comfyui_parallel.models.seedvr import build

    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(build.meta_dit("seedvr_3b")) == 3_391_475_776
    assert count(build.meta_dit("seedvr2_7b")) == 8_239_607_872
    assert count(build.meta_vae()) == 250_648_227
