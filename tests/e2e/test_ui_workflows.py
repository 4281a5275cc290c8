"""Every bundled UI-format workflow loads in the real ComfyUI frontend, in headless Chromium.

Debian's Chromium is driven by Playwright with its executable path set (a test tool's own
browser download does not work on these machines). No node may be reported missing, and
the loaded graph must hold the node types of the workflow's API-format twin. A screenshot
per workflow goes to out/screenshots/.
"""
import json
import shutil
from pathlib import Path

import pytest

from devtools.comfy_server import REPO

# the bundled ones (run by make demo) and those for real checkpoints (workflows/real/)
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json")) + sorted((REPO / "workflows" / "real").glob("*.json"))
FRONTEND_ONLY = {"Note"}  # the frontend's own nodes: no backend class, not in the API twin
SCREENSHOTS = REPO / "out" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Chromium is not installed (make setup installs Debian's chromium package); "
                    "the UI workflow check cannot run without it")
    return path


@pytest.fixture(scope="module")
def page(comfy_server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    import requests

    # a first-run user would see the templates dialog over the graph: mark the tutorial done
    requests.post(f"{comfy_server.url}/settings/Comfy.TutorialCompleted", json=True, timeout=10).raise_for_status()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(comfy_server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph"
                               " && Object.keys(window.LiteGraph.registered_node_types).length > 100",
                               timeout=120_000)
        yield page
        browser.close()


def test_there_are_ui_workflows():
    assert UI_WORKFLOWS, "no UI-format workflow in workflows/"


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_ui_workflow_loads_without_missing_nodes(page, workflow: Path):
    ui = json.loads(workflow.read_text())
    api = json.loads((workflow.parent / "api" / workflow.name).read_text())
    report = page.evaluate("""async (workflow) => {
        await window.app.loadGraphData(workflow);
        const nodes = window.app.graph._nodes;
        return {
            unregistered: workflow.nodes.map(n => n.type).filter(t => !window.LiteGraph.registered_node_types[t]),
            types: nodes.map(n => n.type),
            errored: nodes.filter(n => n.has_errors).map(n => n.type),
        };
    }""", ui)
    assert report["unregistered"] == [], f"missing node types: {report['unregistered']}"
    assert report["errored"] == [], f"nodes loaded with errors: {report['errored']}"
    backend = [t for t in report["types"] if t not in FRONTEND_ONLY]
    assert sorted(backend) == sorted(node["class_type"] for node in api.values())
    page.evaluate("() => window.app.canvas.ds.offset.splice(0, 2, 20, 20)")
    page.wait_for_timeout(300)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{workflow.stem}.png"))
