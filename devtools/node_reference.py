"""The README's node reference, generated from ComfyUI's own /object_info.

`python -m devtools.node_reference` starts a real ComfyUI with the pack and rewrites the
part of README.md between the node-reference markers; a test checks that the README
matches what the server reports, so the reference cannot drift from the nodes.
"""
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BEGIN, END = "<!-- node-reference:begin -->", "<!-- node-reference:end -->"


def pack_nodes(object_info: dict) -> dict:
    return {name: info for name, info in object_info.items()
            if info.get("python_module", "").endswith("ComfyUI-Parallel")}


MODEL_FILE = re.compile(r"\.(safetensors|sft|pt|pth|ckpt|bin|gguf|csv|jsonl|txt)$")


def combo_text(choices: list) -> str:
    """A combo's choices; a list of files (which depends on the machine) shows as <files>."""
    static = [str(c) for c in choices if c != "None" and not MODEL_FILE.search(str(c))]
    if len(static) < len(choices) or not choices:
        static.append("<files from its folder>")
    shown = static if len(static) <= 8 else static[:8] + ["…"]
    return "[" + ", ".join(shown) + "]"


def input_line(name: str, spec: list, optional: bool) -> str:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    if isinstance(kind, list):
        kind = combo_text(kind)
        options = {k: v for k, v in options.items() if k != "default" or not MODEL_FILE.search(str(v))}
    default = f", default `{options['default']}`" if "default" in options else ""
    flag = " (optional)" if optional else ""
    tooltip = " ".join(str(options.get("tooltip", "")).split())
    return f"- `{name}` {kind}{default}{flag}: {tooltip}"


def render(object_info: dict) -> str:
    parts = []
    for name, info in sorted(pack_nodes(object_info).items()):
        outputs = ", ".join(info["output"]) or "none (output node)"
        parts.append(f"### `{name}` — {info['display_name']}\n\n{info.get('description', '').strip()}\n\n"
                     f"Outputs: {outputs}.\n")
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                parts.append(input_line(input_name, spec, section == "optional"))
        parts.append("")
    return "\n".join(parts).strip() + "\n"


def replace_section(text: str, body: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + body + text[end:]


def current_section(text: str) -> str:
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].lstrip("\n")


def main() -> None:
    sys.path.insert(0, str(REPO))
    from devtools.comfy_server import ComfyServer

    with tempfile.TemporaryDirectory() as base, ComfyServer(Path(base)) as server:
        body = render(server.get("/object_info"))
    README.write_text(replace_section(README.read_text(), body))
    print(f"updated {README}")


if __name__ == "__main__":
    main()
