"""Load / Save Conditioning: precomputed text embeddings, so a huge text encoder runs once."""
import os
from pathlib import Path

import folder_paths

from ..utils.conditioning_file import read_conditioning, write_conditioning
from ..utils.errors import InputError
from ..utils.files import existing_file, resolve_inside


class LoadConditioningFile:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "file": ("STRING", {"default": "cond.safetensors", "tooltip":
                     "A file in ComfyUI's input folder: safetensors with a tensor 'cond' ([tokens, dim] or "
                     "[1, tokens, dim]) and optional 'pooled_output', or a bare tensor saved with torch.save (.pt)."}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "load"
    CATEGORY = "parallel/conditioning"
    DESCRIPTION = "Load a precomputed text embedding (cond.safetensors, uncond.safetensors, SeedVR's pos_emb.pt)."

    def load(self, file):
        path = existing_file(folder_paths.get_input_directory(), file, "file")
        cond, pooled = read_conditioning(path, "file")
        extra = {"pooled_output": pooled} if pooled is not None else {}
        return ([[cond, extra]],)


class SaveConditioningFile:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "conditioning": ("CONDITIONING", {"tooltip": "One conditioning (one entry) to store."}),
            "filename_prefix": ("STRING", {"default": "conditioning/cond", "tooltip":
                                "Name under ComfyUI's output folder; a counter and .safetensors are added."}),
        }}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = "parallel/conditioning"
    DESCRIPTION = "Save a conditioning as cond (+ pooled_output) safetensors, loadable by Load Conditioning."

    def save(self, conditioning, filename_prefix):
        if len(conditioning) != 1:
            raise InputError("conditioning", f"holds {len(conditioning)} entries", "exactly one entry per file")
        cond, extra = conditioning[0]
        output_dir = folder_paths.get_output_directory()
        resolve_inside(output_dir, filename_prefix, "filename_prefix")
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        file_name = f"{name}_{counter:05}.safetensors"
        os.makedirs(folder, exist_ok=True)
        write_conditioning(Path(folder) / file_name, cond, extra.get("pooled_output"))
        return {"ui": {"conditioning_files": [{"filename": file_name, "subfolder": subfolder, "type": "output"}]}}


NODE_CLASS_MAPPINGS = {
    "LoadConditioningFile": LoadConditioningFile,
    "SaveConditioningFile": SaveConditioningFile,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadConditioningFile": "Load Conditioning (file)",
    "SaveConditioningFile": "Save Conditioning (file)",
}
