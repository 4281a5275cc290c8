"""The bundled UI workflows are laid out readably (devtools/workflow_ui.py): no two nodes overlap,
every link runs left to right, and the workflows for real checkpoints open with a Note naming files
and memory, placed clear of the nodes."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json")) + sorted((REPO / "workflows" / "real").glob("*.json"))


def boxes(ui: dict) -> dict[int, tuple[float, float, float, float]]:
    return {n["id"]: (n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in ui["nodes"]}


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_nodes_do_not_overlap_and_links_run_left_to_right(workflow):
    ui = json.loads(workflow.read_text())
    box = boxes(ui)
    ids = sorted(box)
    clashes = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:] if overlap(box[a], box[b])]
    assert clashes == [], f"overlapping nodes: {clashes}"
    backwards = [link for link in ui["links"] if box[link[1]][2] > box[link[3]][0]]
    assert backwards == [], f"links ending left of where they start: {backwards}"


@pytest.mark.parametrize("workflow", sorted((REPO / "workflows" / "real").glob("*.json")),
                         ids=lambda p: p.stem)
def test_real_checkpoint_workflows_name_files_and_memory(workflow):
    notes = [n for n in json.loads(workflow.read_text())["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1, "one Note naming the files to download"
    text = notes[0]["widgets_values"][0]
    assert "models/" in text and ("GB" in text or "GiB" in text), text
