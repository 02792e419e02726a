"""Kept for imports of earlier versions: the readers live in ``spacy_distill.io``.

``iter_records`` is ``spacy_distill.io.read_records``: the server's CLI, ``label``
and ``augment`` read the same formats with the same ``file:line`` errors.
"""

from ..io import SUFFIXES, InputError, Record, record_to_dict
from ..io import read_records as iter_records

__all__ = ["SUFFIXES", "InputError", "Record", "iter_records", "record_to_dict"]
