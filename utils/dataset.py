"""An image dataset on disk: PNG files plus `manifest.jsonl`, written so nothing is ever half there.

Each image is written atomically (temp file, then rename) with its prompt, seed and settings
in PNG text chunks; only then is its manifest line appended (one `write` of one line).
A killed run therefore leaves complete images, complete manifest lines, and at worst one
image without a line or one torn last line. `Dataset.open` repairs both: torn lines and
lines whose file is gone are dropped, repeated (prompt, seed) pairs are kept once, and
the rest are the finished set that resume skips.
"""
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .files import atomic_write_bytes
from .prompts import ImageTask

MANIFEST = "manifest.jsonl"
TEXT_CHUNK = "dataset"  # not "prompt" / "workflow": ComfyUI reads those as graphs


@dataclass
class ImageRecord:
    """One manifest line."""
    file: str
    prompt: str
    negative_prompt: str
    seed: int
    id: str
    lora: str
    lora_strength: float
    settings: dict
    worker: str
    seconds: float

    @property
    def key(self) -> tuple[str, int]:
        return (self.prompt, self.seed)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False, sort_keys=True)


@dataclass
class Dataset:
    """The output folder of one job: its manifest, and which (prompt, seed) pairs are finished."""
    folder: Path
    records: dict = field(default_factory=dict)  # key -> ImageRecord

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    @classmethod
    def open(cls, folder: Path, resume: bool) -> "Dataset":
        """Open (resume) or start afresh (the old manifest is replaced; images are regenerated)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dataset = cls(folder)
        lines = read_lines(dataset.manifest_path) if resume else []
        for record in lines:
            if record.key not in dataset.records and (folder / record.file).is_file():
                dataset.records[record.key] = record
        dataset.rewrite()  # drops torn, orphaned and repeated lines; a fresh run starts empty
        return dataset

    def rewrite(self) -> None:
        text = "".join(record.to_json() + "\n" for record in self.records.values())
        atomic_write_bytes(self.manifest_path, text.encode("utf-8"))

    def pending(self, tasks: list[ImageTask]) -> list[ImageTask]:
        """The tasks not finished yet, in order."""
        return [task for task in tasks if task.key not in self.records]

    def add(self, record: ImageRecord, png: bytes) -> Path:
        """Write the image atomically, then append its manifest line."""
        path = self.folder / record.file
        atomic_write_bytes(path, png)
        with open(self.manifest_path, "a", encoding="utf-8") as handle:
            handle.write(record.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[record.key] = record
        return path


def record_for(task: ImageTask, settings: dict, worker: str, seconds: float) -> ImageRecord:
    """The manifest line of a generated image (`settings`: the job's shared generation settings)."""
    return ImageRecord(file=task.file_name, prompt=task.prompt, negative_prompt=task.negative_prompt, seed=task.seed,
                       id=task.row_id, lora=settings.get("lora_name", "None"),
                       lora_strength=settings.get("lora_strength", 0.0), settings=settings, worker=worker,
                       seconds=round(seconds, 4))


def read_lines(path: Path) -> list[ImageRecord]:
    """The manifest's complete, well-formed lines (a torn or foreign line is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(ImageRecord(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return records


def encode_png(image: np.ndarray, record: ImageRecord) -> bytes:
    """PNG bytes of an [H, W, 3] float image in [0, 1], with the record in text chunks."""
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    info = PngInfo()
    info.add_text(TEXT_CHUNK, record.to_json())
    info.add_text("parameters", a1111_parameters(record))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def a1111_parameters(record: ImageRecord) -> str:
    """The widely read "parameters" text (prompt, negative, then settings) for dataset tools."""
    settings = record.settings
    return (f"{record.prompt}\nNegative prompt: {record.negative_prompt}\n"
            f"Steps: {settings.get('steps')}, Sampler: {settings.get('sampler_name')}, "
            f"Schedule type: {settings.get('scheduler')}, CFG scale: {settings.get('cfg')}, Seed: {record.seed}, "
            f"Size: {settings.get('width')}x{settings.get('height')}, Model: {settings.get('ckpt_name')}")


def read_png_record(path: Path) -> dict:
    """The record stored in an image's text chunk (for checks and dataset tools)."""
    with Image.open(path) as image:
        return json.loads(image.text[TEXT_CHUNK])
