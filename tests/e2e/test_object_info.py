"""The pack loads into a real ComfyUI server; /object_info lists its nodes with tooltips."""


def pack_nodes(object_info: dict) -> dict:
    return {name: info for name, info in object_info.items() if info.get("python_module", "").endswith("ComfyUI-Parallel")}


def test_pack_nodes_listed_with_tooltips(server):
    info = pack_nodes(server.get("/object_info"))
    assert info, "no node of the pack in /object_info"
    missing = []
    for name, node in info.items():
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                if not options.get("tooltip"):
                    missing.append(f"{name}.{input_name}")
    assert not missing, f"inputs without tooltip: {missing}"


def test_readme_node_reference_matches_the_server(server):
    from devtools.node_reference import README, current_section, render

    expected = render(server.get("/object_info"))
    assert current_section(README.read_text()) == expected, \
        "README's node reference is stale: run `.venv/bin/python -m devtools.node_reference`"
