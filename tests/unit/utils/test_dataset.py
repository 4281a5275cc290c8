"""The dataset folder: atomic PNGs with text chunks, manifest lines after them, resume repairs."""
import json

import numpy as np

from comfyui_parallel.utils.dataset import Dataset, ImageRecord, encode_png, read_lines, read_png_record
from comfyui_parallel.utils.prompts import expand_tasks, parse_text

SETTINGS = {"steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "width": 8, "height": 8,
            "ckpt_name": "m.safetensors"}


def record_for(task, worker="0"):
    return ImageRecord(file=task.file_name, prompt=task.prompt, negative_prompt=task.negative_prompt, seed=task.seed,
                       id=task.row_id, lora="None", lora_strength=1.0, settings=SETTINGS, worker=worker, seconds=0.1)


def add_all(dataset, tasks):
    for task in tasks:
        record = record_for(task)
        dataset.add(record, encode_png(np.full((8, 8, 3), 0.5), record))


def test_png_carries_its_record_and_pixels(tmp_path):
    task = expand_tasks(parse_text("a cat"), 5, 1, "ugly")[0]
    dataset = Dataset.open(tmp_path, resume=False)
    path = dataset.add(record_for(task), encode_png(np.full((8, 8, 3), 1.0), record_for(task)))
    stored = read_png_record(path)
    assert stored["prompt"] == "a cat" and stored["seed"] == 5 and stored["settings"]["steps"] == 2
    assert [json.loads(line)["file"] for line in dataset.manifest_path.read_text().splitlines()] == [path.name]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resume_skips_finished_and_repairs_the_manifest(tmp_path):
    tasks = expand_tasks(parse_text("a\nb\nc\nd"), 0, 1, "")
    add_all(Dataset.open(tmp_path, resume=False), tasks[:3])
    (tmp_path / tasks[1].file_name).unlink()  # a line whose image is gone
    with open(tmp_path / "manifest.jsonl", "a") as handle:
        handle.write(record_for(tasks[0]).to_json() + "\n")  # a repeated pair
        handle.write('{"file": "torn')  # a torn last line (killed mid-write)
    dataset = Dataset.open(tmp_path, resume=True)
    assert [t.prompt for t in dataset.pending(tasks)] == ["b", "d"]
    add_all(dataset, dataset.pending(tasks))
    lines = read_lines(dataset.manifest_path)
    assert sorted(r.prompt for r in lines) == ["a", "b", "c", "d"]
    assert all((tmp_path / r.file).is_file() for r in lines)
    assert len(dataset.manifest_path.read_text().splitlines()) == 4


def test_fresh_run_starts_an_empty_manifest(tmp_path):
    tasks = expand_tasks(parse_text("a\nb"), 0, 1, "")
    add_all(Dataset.open(tmp_path, resume=False), tasks)
    dataset = Dataset.open(tmp_path, resume=False)
    assert dataset.pending(tasks) == tasks and dataset.manifest_path.read_text() == ""
