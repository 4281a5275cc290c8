"""Prompt lists for the batch generator: typed text, or a .txt / .csv / .jsonl file.

A prompt list becomes a list of `PromptRow`s, then a list of `ImageTask`s (one per image
to generate, with its own seed and file name). File names are derived from the row's id
(or its position and a hash of its text), so they are stable across reruns: resume can
trust that a file name always belongs to the same (prompt, seed).
"""
import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

FILE_SUFFIXES = (".txt", ".csv", ".jsonl")
COLUMNS = "prompt, optional negative_prompt, seed, id"
MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class PromptRow:
    """One prompt of the list; None fields fall back to the node's own inputs."""
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    id: str | None = None
    source: str = ""  # where it came from, for error messages ("prompts line 3")


@dataclass(frozen=True)
class ImageTask:
    """One image to generate: the unit of work handed to a worker."""
    index: int
    prompt: str
    negative_prompt: str
    seed: int
    file_name: str
    row_id: str

    @property
    def key(self) -> tuple[str, int]:
        """What resume compares: a (prompt, seed) pair is finished once."""
        return (self.prompt, self.seed)


def parse_text(text: str, input_name: str = "prompts") -> list[PromptRow]:
    """One prompt per non-blank line."""
    return [PromptRow(line.strip(), source=f"{input_name} line {number}")
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_prompt_file(path: Path, input_name: str = "prompts_file") -> list[PromptRow]:
    """Read a .txt (one per line), .csv (header with a prompt column) or .jsonl file."""
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise InputError(input_name, f"'{path.name}' has an unsupported extension", ", ".join(FILE_SUFFIXES))
    text = decode(path.read_bytes(), path.name, input_name)
    if suffix == ".csv":
        return parse_csv(text, path.name, input_name)
    if suffix == ".jsonl":
        return parse_jsonl(text, path.name, input_name)
    return parse_text(text, f"{input_name} '{path.name}'")


def decode(data: bytes, file_name: str, input_name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(input_name, f"'{file_name}' is not UTF-8 text (byte 0x{data[error.start]:02x} at "
                         f"position {error.start})", "a UTF-8 encoded .txt, .csv or .jsonl file") from error


def parse_csv(text: str, file_name: str, input_name: str) -> list[PromptRow]:
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
    except csv.Error as error:
        raise InputError(input_name, f"'{file_name}' is not a readable CSV file ({error})") from error
    if "prompt" not in header:
        shown = ", ".join(h for h in header if h) or "none"
        raise InputError(input_name, f"CSV '{file_name}' has no 'prompt' column (its columns: {shown})",
                         f"a header row with columns {COLUMNS}")
    reader.fieldnames = header
    rows = []
    try:
        for record in reader:
            line = reader.line_num
            if not any((value or "").strip() for value in record.values() if isinstance(value, str)):
                continue
            rows.append(make_row(record, f"{input_name} '{file_name}' line {line}", input_name))
    except csv.Error as error:
        raise InputError(input_name, f"'{file_name}' is not a readable CSV file ({error})") from error
    return rows


def parse_jsonl(text: str, file_name: str, input_name: str) -> list[PromptRow]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{input_name} '{file_name}' line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(input_name, f"{where} is not valid JSON ({error.msg})",
                             f"one JSON object per line with keys {COLUMNS}") from error
        if not isinstance(record, dict):
            raise InputError(input_name, f"{where} holds a {type(record).__name__}, not an object",
                             f"one JSON object per line with keys {COLUMNS}")
        rows.append(make_row(record, where, input_name))
    return rows


def make_row(record: dict, where: str, input_name: str) -> PromptRow:
    """A PromptRow from one CSV / JSONL record, checking each field."""
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(input_name, f"{where} has no prompt text", "a non-empty 'prompt' on every row")
    negative = record.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise InputError(input_name, f"{where}: negative_prompt is a {type(negative).__name__}", "text")
    return PromptRow(prompt=prompt.strip(), negative_prompt=(negative or "").strip() or None,
                     seed=parse_seed(record.get("seed"), where, input_name),
                     id=parse_id(record.get("id"), where, input_name), source=where)


def parse_seed(value, where: str, input_name: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seed = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        seed = None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(input_name, f"{where}: seed '{value}' is not a whole number", f"0 to {MAX_SEED}")
    return seed


def parse_id(value, where: str, input_name: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    if not safe:
        raise InputError(input_name, f"{where}: id '{text}' has no usable characters",
                         "letters, digits, '_', '-', '.'")
    return safe[:80]


def gather_rows(text_rows: list[PromptRow], file_rows: list[PromptRow]) -> list[PromptRow]:
    """Typed prompts first, then the file's; an empty result is an error."""
    rows = list(text_rows) + list(file_rows)
    if not rows:
        raise InputError("prompts", "the prompt list is empty (no prompt typed and no prompts_file)",
                         "one prompt per line in prompts, and / or a .txt, .csv or .jsonl file in prompts_file")
    return rows


def expand_tasks(rows: list[PromptRow], seed: int, images_per_prompt: int, negative_prompt: str) -> list[ImageTask]:
    """One ImageTask per image. Seeds: a row's own seed + k, else seed + running image number.

    Repeated (prompt, seed) pairs are generated once.
    """
    tasks, seen, ids = [], set(), {}
    for row_index, row in enumerate(rows):
        stem = row_stem(row, row_index, ids)
        for k in range(images_per_prompt):
            image_seed = ((row.seed if row.seed is not None else seed + row_index * images_per_prompt) + k) % (MAX_SEED + 1)
            negative = row.negative_prompt if row.negative_prompt is not None else negative_prompt
            if (row.prompt, image_seed) in seen:
                continue
            seen.add((row.prompt, image_seed))
            tasks.append(ImageTask(index=len(tasks), prompt=row.prompt, negative_prompt=negative, seed=image_seed,
                                   file_name=f"{stem}_s{image_seed}.png", row_id=row.id or stem))
    return tasks


def row_stem(row: PromptRow, row_index: int, ids: dict) -> str:
    """File name stem: the row's id (made unique), else its position and a hash of its text."""
    if row.id is None:
        digest = hashlib.sha1(f"{row.prompt}\n{row.negative_prompt}".encode()).hexdigest()[:8]
        return f"p{row_index:05d}_{digest}"
    count = ids.get(row.id, 0)
    ids[row.id] = count + 1
    return row.id if count == 0 else f"{row.id}-{count}"
