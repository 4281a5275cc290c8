import os

import pytest

from comfyui_parallel.utils.errors import InputError
from comfyui_parallel.utils.files import atomic_write_bytes, existing_file, resolve_inside


def test_inside_paths_resolve(tmp_path):
    assert resolve_inside(tmp_path, "a/b.txt", "file") == tmp_path.resolve() / "a" / "b.txt"


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "", "   "])
def test_escaping_paths_are_refused_naming_the_input(tmp_path, bad):
    with pytest.raises(InputError, match=r"^output_subfolder: "):
        resolve_inside(tmp_path, bad, "output_subfolder")


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    os.symlink("/etc", tmp_path / "root" / "link")
    with pytest.raises(InputError, match="resolves outside"):
        resolve_inside(tmp_path / "root", "link/passwd", "file")


def test_existing_file_reports_missing(tmp_path):
    with pytest.raises(InputError, match="not found"):
        existing_file(tmp_path, "nope.safetensors", "file")


def test_atomic_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "img.png"
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    assert [p.name for p in target.parent.iterdir()] == ["img.png"]
