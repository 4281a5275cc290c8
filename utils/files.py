"""Safe file paths: everything is read and written inside ComfyUI's own folders."""
import os
import tempfile
from pathlib import Path

from .errors import InputError


def resolve_inside(root: str | os.PathLike, relative: str, input_name: str) -> Path:
    """Join ``relative`` to ``root`` and refuse anything that escapes ``root``.

    Absolute paths, ``..`` components and symlinks pointing outside are refused.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise InputError(input_name, "is empty", f"a path inside {root}")
    if os.path.isabs(relative) or Path(relative).drive:
        raise InputError(input_name, f"'{relative}' is an absolute path", f"a path inside {root}")
    if ".." in Path(relative).parts:
        raise InputError(input_name, f"'{relative}' escapes its folder with '..'", f"a path inside {root}")
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise InputError(input_name, f"'{relative}' resolves outside {base}", f"a path inside {root}")
    return target


def existing_file(root: str | os.PathLike, relative: str, input_name: str) -> Path:
    """Like resolve_inside, and the file must exist."""
    path = resolve_inside(root, relative, input_name)
    if not path.is_file():
        raise InputError(input_name, f"'{relative}' not found in {root}")
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
