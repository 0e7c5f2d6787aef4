"""Model folders: what ``slap export`` and the tagging recipes write, and every loader reads.

* ``checksums``: ``SHA256SUMS`` of every file of a folder, checked before loading.
* ``yaml_check``: the allow-list of what a folder's ``hyperparams.yaml`` may build,
  and the check that its paths stay inside the folder (``path_escapes``).
* ``export``: writing SLAP folders (from a recipe output, the text encoder's files
  included) and tagging folders (for SpeechBrain's ``EncoderClassifier``), with
  one model card.
* ``loading``: the one loader: a local folder or a Hugging Face hub id
  (``fetch_model_folder``, ``open_model_folder``), the ``SLAP`` interface
  (``load_slap``), a recipe's modules (``load_pretrained``, strict), and the
  folder's architecture for a recipe started from it (``architecture_overrides``).

Nothing here imports torch until a function needs it.

Example
-------
>>> folder = getfixture("tmp_path")
>>> _ = (folder / "a.ckpt").write_bytes(b"weights")
>>> _ = write_checksums(folder, ["a.ckpt"])
>>> verify_checksums(folder)
['a.ckpt']
"""

from speechbrain_slap.model_folder.checksums import (
    SUMS_FILE,
    ModelFolderError,
    folder_files,
    model_digest,
    read_checksums,
    sha256sum,
    verify_checksums,
    write_checksums,
)
from speechbrain_slap.model_folder.export import (
    export_model,
    export_tagging_model,
    find_best_checkpoint,
    inference_yaml,
    save_text_encoder,
)
from speechbrain_slap.model_folder.loading import (
    architecture_overrides,
    check_encoder_matches,
    check_model_folder,
    fetch_model_folder,
    is_hub_id,
    load_pretrained,
    load_slap,
    load_state_dict_strict,
    model_folder,
    open_model_folder,
)
from speechbrain_slap.model_folder.yaml_check import (
    ALLOWED_YAML_TARGETS,
    check_yaml_targets,
    path_escapes,
    untrusted_yaml_targets,
)

__all__ = [
    "ALLOWED_YAML_TARGETS",
    "SUMS_FILE",
    "ModelFolderError",
    "architecture_overrides",
    "check_encoder_matches",
    "check_model_folder",
    "check_yaml_targets",
    "export_model",
    "export_tagging_model",
    "fetch_model_folder",
    "find_best_checkpoint",
    "folder_files",
    "inference_yaml",
    "is_hub_id",
    "load_pretrained",
    "load_slap",
    "load_state_dict_strict",
    "model_digest",
    "model_folder",
    "open_model_folder",
    "path_escapes",
    "read_checksums",
    "save_text_encoder",
    "sha256sum",
    "untrusted_yaml_targets",
    "verify_checksums",
    "write_checksums",
]
