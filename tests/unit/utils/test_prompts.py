"""Prompt lists: typed text, .txt / .csv / .jsonl files, seeds and stable file names."""
import json

import pytest

from comfyui_parallel.utils.errors import InputError
from comfyui_parallel.utils.prompts import expand_tasks, gather_rows, parse_text, read_prompt_file


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def test_text_one_prompt_per_line_blank_lines_skipped():
    rows = parse_text("a cat\n\n  a dog  \n")
    assert [row.prompt for row in rows] == ["a cat", "a dog"]
    assert rows[1].source == "prompts line 3"


def test_csv_columns_any_case_and_optional_fields(tmp_path):
    path = write(tmp_path, "p.csv", "\ufeffPrompt,negative_prompt,seed,id\na cat,blurry,7,cat 1\na dog,,,\n,,,\n")
    rows = read_prompt_file(path)
    assert [(r.prompt, r.negative_prompt, r.seed, r.id) for r in rows] == [
        ("a cat", "blurry", 7, "cat_1"), ("a dog", None, None, None)]


def test_csv_without_prompt_column_names_its_columns(tmp_path):
    path = write(tmp_path, "p.csv", "text,seed\na cat,1\n")
    with pytest.raises(InputError, match=r"prompts_file: CSV 'p.csv' has no 'prompt' column \(its columns: text, seed\)"):
        read_prompt_file(path)


def test_jsonl_rows_and_bad_lines(tmp_path):
    rows = read_prompt_file(write(tmp_path, "p.jsonl", json.dumps({"prompt": "a cat", "seed": 3}) + "\n\n"))
    assert rows[0].prompt == "a cat" and rows[0].seed == 3
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        read_prompt_file(write(tmp_path, "bad.jsonl", '{"prompt": "x"}\n{oops\n'))
    with pytest.raises(InputError, match="line 1 holds a list"):
        read_prompt_file(write(tmp_path, "list.jsonl", "[1, 2]\n"))
    with pytest.raises(InputError, match="line 1 has no prompt text"):
        read_prompt_file(write(tmp_path, "empty.jsonl", '{"prompt": "  "}\n'))


@pytest.mark.parametrize("seed", ["-1", "abc", "1.5", True])
def test_bad_seed_is_refused_with_its_row(tmp_path, seed):
    path = write(tmp_path, "p.jsonl", json.dumps({"prompt": "a", "seed": seed}) + "\n")
    with pytest.raises(InputError, match="line 1: seed .* is not a whole number"):
        read_prompt_file(path)


def test_undecodable_file_is_refused(tmp_path):
    path = write(tmp_path, "p.csv", b"prompt\n\xff\xfe caf\xe9\n")
    with pytest.raises(InputError, match=r"'p.csv' is not UTF-8 text \(byte 0xff at position 7\)"):
        read_prompt_file(path)


def test_unsupported_extension_is_refused(tmp_path):
    with pytest.raises(InputError, match="unsupported extension.*allowed: .txt, .csv, .jsonl"):
        read_prompt_file(write(tmp_path, "p.xlsx", "prompt\n"))


def test_empty_list_is_refused(tmp_path):
    with pytest.raises(InputError, match="prompts: the prompt list is empty"):
        gather_rows(parse_text(" \n\n"), read_prompt_file(write(tmp_path, "e.csv", "prompt\n")))


def test_seeds_negatives_and_stable_file_names():
    rows = parse_text("a cat\na dog") + read_prompt_file_rows()
    tasks = expand_tasks(rows, seed=100, images_per_prompt=2, negative_prompt="ugly")
    assert [(t.prompt, t.seed) for t in tasks] == [
        ("a cat", 100), ("a cat", 101), ("a dog", 102), ("a dog", 103), ("a fox", 7), ("a fox", 8)]
    assert tasks[-1].negative_prompt == "dark" and tasks[0].negative_prompt == "ugly"
    assert tasks[-1].file_name == "fox_s8.png"
    again = expand_tasks(parse_text("a new first line") + rows, 100, 2, "ugly")
    before, after = {t.file_name: t.key for t in tasks}, {t.file_name: t.key for t in again}
    assert all(before[name] == after[name] for name in before.keys() & after.keys())  # a name keeps its pair
    assert after["fox_s7.png"] == ("a fox", 7)


def test_repeated_prompt_and_seed_generated_once():
    rows = read_prompt_file_rows() * 2
    tasks = expand_tasks(rows, seed=0, images_per_prompt=1, negative_prompt="")
    assert [(t.prompt, t.seed) for t in tasks] == [("a fox", 7)]


def read_prompt_file_rows():
    from comfyui_parallel.utils.prompts import PromptRow

    return [PromptRow("a fox", negative_prompt="dark", seed=7, id="fox")]
