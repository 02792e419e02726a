"""Text augmentation for distillation: the augmenter (``augmenter``) and its command (``cli``).

Nothing is imported here, so the ``spacy-distill`` CLI starts without spaCy.
"""
