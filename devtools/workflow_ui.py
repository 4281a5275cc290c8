"""Write the UI-format twin (drag into ComfyUI) of each API-format workflow.

`python -m devtools.workflow_ui [names...]` starts a real ComfyUI with the pack, reads
/object_info to know which inputs are widgets and in which order (seed inputs get the
frontend's extra "control_after_generate" widget), and writes workflows/<name>.json
next to workflows/api/<name>.json; a name `real/<name>` reads workflows/real/api/<name>.json and
writes workflows/real/<name>.json. A `<name>.note.md` beside the API file becomes a Note node
(frontend-only, so the API twin has none).

Layout, left to right: one column per depth in the graph (loaders first, savers last), each
node as tall as its slots and widgets so nothing overlaps, and the Note above the first column.
"""
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API_DIR = REPO / "workflows" / "api"
UI_DIR = REPO / "workflows"


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def input_specs(info: dict) -> list[tuple[str, list]]:
    specs = []
    for section in ("required", "optional"):
        specs += list(info["input"].get(section, {}).items())
    return specs


def widget_values(node: dict, info: dict) -> list:
    values = []
    for name, spec in input_specs(info):
        kind = spec[0]
        options = spec[1] if len(spec) > 1 else {}
        is_widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
        if not is_widget or is_link(node["inputs"].get(name)):
            continue
        values.append(node["inputs"].get(name, options.get("default")))
        if options.get("control_after_generate"):
            values.append("fixed")
    return values


def text_boxes(node: dict, info: dict) -> int:
    """Multiline STRING widgets of a node (drawn about four widget rows high)."""
    return sum(1 for name, spec in input_specs(info) if spec[0] == "STRING" and len(spec) > 1
               and spec[1].get("multiline") and not is_link(node["inputs"].get(name)))


def depth_of(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            parents = [v[0] for v in api[node_id]["inputs"].values() if is_link(v)]
            depth[node_id] = 1 + max((visit(p) for p in parents), default=-1)
        return depth[node_id]

    for node_id in api:
        visit(node_id)
    return depth


MARGIN, COLUMN_WIDTH, NODE_WIDTH, GAP = 60, 400, 340, 40
TITLE, SLOT, WIDGET = 36, 22, 26  # pixels: title bar, one input / output row, one widget


def node_height(slots: int, widgets: int) -> int:
    return TITLE + SLOT * slots + WIDGET * widgets + 12


def note_size(text: str) -> list[int]:
    lines = sum(1 + len(line) // 95 for line in text.splitlines())
    return [COLUMN_WIDTH * 2 - GAP, 40 + 17 * lines]


def note_node(node_id: int, text: str) -> dict:
    """The frontend's own Note node (no backend class, not part of the API prompt), above the first column."""
    return {"id": node_id, "type": "Note", "pos": [MARGIN, MARGIN], "size": note_size(text), "flags": {},
            "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653"}


def api_to_ui(api: dict, object_info: dict, note: str | None = None) -> dict:
    depth = depth_of(api)
    top = MARGIN + (note_size(note)[1] + GAP if note is not None else 0)
    column_y: dict[int, int] = {}
    nodes, links = [], []
    outputs: dict[tuple[str, int], list[int]] = {}
    for node_id, node in api.items():
        for name, value in node["inputs"].items():
            if is_link(value):
                link_id = len(links) + 1
                out_type = object_info[api[value[0]]["class_type"]]["output"][value[1]]
                links.append([link_id, int(value[0]), value[1], int(node_id), name, out_type])
                outputs.setdefault((value[0], value[1]), []).append(link_id)
    for node_id, node in api.items():
        info = object_info[node["class_type"]]
        column = depth[node_id]
        node_inputs = []
        for name, spec in input_specs(info):
            if is_link(node["inputs"].get(name)):
                link = next(l for l in links if l[3] == int(node_id) and l[4] == name)
                node_inputs.append({"name": name, "type": link[5], "link": link[0]})
        for slot, entry in enumerate(node_inputs):
            for link in links:
                if link[0] == entry["link"]:
                    link[4] = slot
        node_outputs = [{"name": name, "type": kind, "links": outputs.get((node_id, slot), []), "slot_index": slot}
                        for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
        widgets = widget_values(node, info)
        height = node_height(max(len(node_inputs), len(node_outputs)), len(widgets) + 3 * text_boxes(node, info))
        y = column_y.get(column, top)
        column_y[column] = y + height + GAP
        nodes.append({"id": int(node_id), "type": node["class_type"], "pos": [MARGIN + COLUMN_WIDTH * column, y],
                      "size": [NODE_WIDTH, height], "flags": {}, "order": depth[node_id], "mode": 0,
                      "inputs": node_inputs, "outputs": node_outputs,
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets})
    last = max(int(k) for k in api)
    if note is not None:
        last += 1
        nodes.append(note_node(last, note))
    return {"last_node_id": last, "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def api_file(name: str) -> Path:
    """workflows/api/<name>.json, or workflows/real/api/<name>.json for `real/<name>`."""
    folder, _, stem = name.rpartition("/")
    return UI_DIR / folder / "api" / f"{stem}.json"


def main(names: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from devtools.comfy_server import ComfyServer
    from devtools.demo_models import ensure_models

    files = [api_file(n) for n in names] if names else sorted(API_DIR.glob("*.json"))
    with tempfile.TemporaryDirectory() as base:
        (Path(base) / "models").symlink_to(ensure_models(REPO / "out" / "models-cache")[0].parents[1])
        with ComfyServer(Path(base)) as server:
            object_info = server.get("/object_info")
    for path in files:
        note = path.with_suffix(".note.md")
        ui = api_to_ui(json.loads(path.read_text()), object_info, note.read_text() if note.exists() else None)
        target = path.parents[1] / path.name
        target.write_text(json.dumps(ui, indent=1) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
