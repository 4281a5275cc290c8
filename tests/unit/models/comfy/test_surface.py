"""The coupling table of models/comfy (its docstring) against the installed ComfyUI.

Every `always` item must exist; an `optional` one may be absent, and then the adapter's
fallback must still work (the checks at the bottom); every `instance` item is set on a new
ModelPatcher (or on the model it wraps); nothing outside models/comfy touches
`comfy`, and every `comfy.*` name the adapter uses is in the table.
"""
import ast
import importlib
import re
from pathlib import Path

import pytest

from comfyui_parallel.models.comfy.runtime import ensure_comfy

ensure_comfy()
import comfyui_parallel.models.comfy as adapter  # noqa: E402

PACK = Path(adapter.__file__).resolve().parents[2]
ROW = re.compile(r"^\| `([^`]+)` \| (always|optional|instance|server) \|", re.M)
ROWS = ROW.findall(adapter.__doc__)
PACK_FOLDERS = ("models", "nodes", "parallel", "offload", "utils")
ALIASES = {"mm.": "comfy.model_management.", "flux_math.": "comfy.ldm.flux.math.",
           "k_sampling.": "comfy.k_diffusion.sampling."}


def resolve(dotted: str):
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_the_table_is_there_and_names_each_item_once():
    items = [item for item, _ in ROWS]
    assert len(items) > 50 and len(items) == len(set(items))


def test_every_always_item_exists_in_this_comfyui():
    if "nodes" not in __import__("sys").modules:
        from comfyui_parallel.models.comfy.guidance import comfy_node_module

        comfy_node_module("comfy_extras.nodes_video_model")  # comfy_extras modules need ComfyUI's nodes.py
    missing = []
    for item, needed in ROWS:
        if needed != "always":
            continue
        try:
            resolve(item)
        except (ImportError, AttributeError) as error:
            missing.append(f"{item} ({error})")
    assert not missing, "ComfyUI lacks: " + "; ".join(missing)


def test_every_instance_item_is_set_on_a_new_patcher():
    import torch
    import comfy.model_patcher

    patcher = comfy.model_patcher.ModelPatcher(torch.nn.Linear(1, 1), torch.device("cpu"), torch.device("cpu"))
    owners = {"comfy.model_patcher.ModelPatcher": patcher, "comfy.model_base.BaseModel": patcher.model}
    items = [item for item, needed in ROWS if needed == "instance"]
    assert items, "the table names the instance attributes it relies on"
    missing = [item for item in items if not hasattr(owners[item.rsplit(".", 1)[0]], item.rsplit(".", 1)[1])]
    assert not missing, "ComfyUI does not set: " + "; ".join(missing)


def test_one_of_each_optional_pair_exists():
    present = {item for item, needed in ROWS if needed == "optional" and _exists(item)}
    assert present & {"comfy.utils.string_to_seed", "comfy.model_patcher.string_to_seed"}
    assert present & {"comfy.ldm.flux.math.apply_rope1", "comfy.ldm.flux.math.apply_rope"}


def _exists(item: str) -> bool:
    try:
        resolve(item)
        return True
    except (ImportError, AttributeError):
        return False


def _pack_sources():
    """(path relative to the pack, text) of every module of the pack itself (not tools or tests)."""
    paths = [PACK / "__init__.py"] + [p for folder in PACK_FOLDERS for p in (PACK / folder).rglob("*.py")]
    for path in paths:
        yield path.relative_to(PACK), path.read_text()


def test_nothing_outside_the_adapter_imports_comfy():
    offenders = []
    for relative, text in _pack_sources():
        if relative.parts[:2] == ("models", "comfy"):
            continue
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{relative}: {n}" for n in names if n == "comfy" or n.startswith(("comfy.", "comfy_"))]
    assert not offenders, offenders


def test_every_comfy_name_the_adapter_uses_is_in_the_table():
    items = [item for item, _ in ROWS]
    unlisted = set()
    for path in Path(adapter.__file__).parent.glob("*.py"):
        if path.name == "__init__.py":
            continue
        text = path.read_text()
        for alias, full in ALIASES.items():
            text = re.sub(rf"\b{re.escape(alias)}", full, text)
        for used in re.findall(r"\bcomfy(?:_extras)?(?:\.(?!__)[A-Za-z_]\w*)+", text):
            if not any(item.startswith(used) or used.startswith(item) for item in items):
                unlisted.add(f"{path.name}: {used}")
    assert not unlisted, sorted(unlisted)


@pytest.mark.parametrize("text", ["diffusion_model.blocks.0.self_attn.q.weight", ""])
def test_string_to_seed_works_on_this_comfyui(text):
    from comfyui_parallel.models.comfy.management import string_to_seed

    assert isinstance(string_to_seed(text), int)
