"""Former home of the e5 converter, now ``spacy_distill.teacher.e5`` (an import alias)."""

from .teacher.e5 import *  # noqa: F401,F403
from .teacher.e5 import __all__  # noqa: F401
