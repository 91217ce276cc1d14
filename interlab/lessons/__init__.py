"""Lessons: contrastive learning taught hands-on on a laptop CPU (`notebooks/lessons/`).

Part of the lab layer. Each lesson notebook has a module here holding what it needs beyond
the core (small helpers, its widgets and its `check_...` functions), and a module in
`interlab.lessons.solutions` with the exercises' solutions, so the notebook stays short:

    01_views             views.py           02_infonce       infonce.py
    03_first_model       first_model.py     04_clusters      clusters.py
    05_negatives         negatives.py       06_margins       margins.py
    07_beyond_one_image  beyond.py

`checking` is what every check shares; `build` executes all lessons into a handout.
"""
