"""Write the key manifests of the full-size SeedVR models built on the meta device.

`make seedvr-manifest` (python -m devtools.seedvr_manifest) writes out/seedvr/
{seedvr_dit_3b,seedvr_dit_7b,seedvr_vae}.tsv: one line per state_dict entry, in order,
"name<TAB>shape<TAB>dtype", in the format of the reference manifests in tests/data/seedvr/.
The DiTs are listed in float32 (their construction dtype), the VAE in bfloat16 (the reference
casts it before loading), as the reference manifests are.
"""
from pathlib import Path

import torch

from .pack import register_pack

REPO = Path(__file__).resolve().parents[1]


def _pack():
    """Import the pack as `comfyui_parallel` (works from any folder name)."""
    register_pack()
    from comfyui_parallel.models.seedvr import build

    return build


def manifest_lines(module: torch.nn.Module, dtype: torch.dtype | None = None) -> list:
    """name, shape (comma-separated), dtype of every state_dict entry, in order."""
    lines = []
    for name, tensor in module.state_dict().items():
        kind = str(dtype or tensor.dtype).replace("torch.", "")
        lines.append(f"{name}\t{','.join(str(s) for s in tensor.shape)}\t{kind}")
    return lines


def build_manifests() -> dict:
    """{file name: lines} for the three full-size models."""
    build = _pack()
    return {
        "seedvr_dit_3b.tsv": manifest_lines(build.meta_dit("seedvr_3b")),
        "seedvr_dit_7b.tsv": manifest_lines(build.meta_dit("seedvr_7b")),
        "seedvr_vae.tsv": manifest_lines(build.meta_vae(), torch.bfloat16),
    }


def main() -> None:
    out = REPO / "out" / "seedvr"
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in build_manifests().items():
        (out / name).write_text("\n".join(lines) + "\n")
        print(f"{out / name}: {len(lines)} entries")


if __name__ == "__main__":
    main()
