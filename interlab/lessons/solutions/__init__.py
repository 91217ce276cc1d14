"""The lessons' exercise solutions, one module per lesson (a teacher's run: `solutions=True`).

Kept out of the notebooks so a lesson stays short and a student is not handed the answer in
the next cell; the `tests/test_lessons_*.py` files run every check against these solutions.
"""
