"""Lesson 7, "Beyond one image": CycleContrast's cycle and SCFS's feature search, and checks.

Two short CPU runs (`cycle_run`, and `interlab.lab.search_maps.scfs_run`) are traced on a few
images with the study helpers (`interlab.lab.cycle_study`, `interlab.lab.search_maps`). The
exercises rebuild the two mechanisms on toy vectors; every check computes the expected value
with the package (`interlab.losses.soft_nearest_neighbour`, `interlab.losses.negative_logits`,
`interlab.distill.search_weights`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from interlab.data import ImageSet, load_dataset
from interlab.distill import search_weights
from interlab.lab.paths import in_project
from interlab.lessons.checking import Verdict, as_tensor, call_answer, compare, failed, passed
from interlab.losses import negative_logits, soft_nearest_neighbour


def cycle_run(
    out_dir: str = "runs/lessons/beyond/cycle", epochs: int = 2, device: str = "cpu"
) -> tuple[Path, Any, ImageSet]:
    """(run folder, trained CycleContrast method on the CPU, its training images).

    A CPU-sized run (quickstart settings: ConvNet, cycle queue 2,048 with a 512 support) into
    `out_dir/run`, reused when finished; the method is ready to trace (`on_fit_start` done).
    """
    from interlab.lab.quickstart import quickstart_config
    from interlab.train import load_trained, train

    config = quickstart_config(
        method="cyclecontrast",
        epochs=epochs,
        device=device,
        out_dir=str(in_project(out_dir)),
        overrides={"eval_every": 0},
    )
    path = Path(train(config, progress=False).out)
    config, method = load_trained(path / "checkpoint.pt", device="cpu")
    train_set = load_dataset(config.data, "train", root=config.data_root)
    method.on_fit_start(train_set)
    return path, method, train_set


def near(value: torch.Tensor, atol: float = 1e-4):
    """A hint test: the answer equals `value` (a typical mistake's result)."""
    return lambda got: got.shape == value.shape and torch.allclose(got, value, atol=atol)


def toy_vectors(seed: int, *shape: int) -> torch.Tensor:
    """Reproducible L2-normalised rows (the last dimension is the embedding)."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


def toy_cycle(seed: int = 0, support: int = 5, dim: int = 6) -> dict[str, torch.Tensor]:
    """A query, a support of other videos' frames, and candidate frames for the way back.

    Candidate (seed + 2) % 4 is the query's own other frame (near the query); the others are
    frames of unrelated videos.
    """
    query = toy_vectors(seed, dim)
    frames = toy_vectors(seed + 100, 4, dim)
    own = (seed + 2) % len(frames)
    frames[own] = F.normalize(query + 0.3 * frames[own], dim=0)
    return {"query": query, "support": toy_vectors(seed + 1, support, dim), "frames": frames}


def check_soft_neighbour(function: Any, temperature: float = 0.1) -> Verdict:
    """Exercise 7.1: `function(query (D,), support (S, D), temperature)` -> neighbour (D,)."""
    exercise = "7.1 soft nearest neighbour"
    for seed in (0, 1):
        toy = toy_cycle(seed)
        query, support = toy["query"], toy["support"]
        answer, problem = call_answer(
            exercise, function, query.clone(), support.clone(), temperature
        )
        if problem is not None:
            return problem
        expected, weights = soft_nearest_neighbour(query[None], support, temperature)
        sims = support @ query

        verdict = compare(
            exercise,
            answer,
            expected[0].double(),
            "the soft neighbour",
            hints=(
                (
                    near(weights[0].double() @ support),
                    "right weights; now renormalise to unit length",
                ),
                (
                    near(F.normalize(sims.softmax(0) @ support, dim=0)),
                    "the temperature is missing: softmax(query . support / t)",
                ),
                (
                    near(support[sims.argmax()]),
                    "that is the hard nearest neighbour: weight every support entry by its softmax",
                ),
            ),
        )
        if not verdict:
            if (
                verdict.message.startswith("the soft neighbour should have shape")
                and as_tensor(answer) is not None
                and as_tensor(answer).shape == (len(support),)
            ):
                return failed(
                    exercise,
                    "those are the weights (S,); return their weighted mean of the support",
                )
            return verdict
    return passed(exercise, "softmax(q . s / t) weights, weighted mean, renormalised")


def check_cycle_back(function: Any) -> Verdict:
    """Exercise 7.2: `function(neighbour (D,), frames (F, D))` -> index of the frame it picks."""
    exercise = "7.2 cycle back"
    for seed in (0, 1, 2):
        toy = toy_cycle(seed)
        neighbour = F.normalize(toy["query"] + 0.2 * toy["support"][0], dim=0)
        frames = toy["frames"]
        answer, problem = call_answer(exercise, function, neighbour.clone(), frames.clone())
        if problem is not None:
            return problem
        scores = negative_logits(neighbour[None], frames)[0]
        expected = int(scores.argmax())
        got = as_tensor(answer)
        if got is None or got.numel() != 1:
            return failed(exercise, "return one frame index (an int)")
        value = float(got.flatten()[0])
        if not math.isfinite(value) or value != int(value) or not 0 <= value <= len(frames):
            return failed(
                exercise, f"{value:g} is not a frame index: return the argmax, not the cosine"
            )
        if int(value) == expected:
            continue
        if int(value) == int(scores.argmin()):
            return failed(
                exercise, "that is the least similar frame: the neighbour picks the most similar"
            )
        if int(value) == expected + 1:
            return failed(exercise, "indices start at 0")
        return failed(
            exercise, f"frame {int(value)}; the neighbour's cosines are {scores.tolist()}"
        )
    return passed(
        exercise, "the frame with the highest cosine: the cycle closes when it is your own"
    )


def toy_search(seed: int = 0, channels: int = 5, size: int = 3) -> dict[str, torch.Tensor]:
    """A local crop's pooled feature (C,) and a global feature map (C, H, W), post-ReLU."""
    generator = torch.Generator().manual_seed(seed)
    feature_map = torch.randn(channels, size, size, generator=generator, dtype=torch.float64).relu()
    local = feature_map[:, 1, 2] + 0.05 * torch.rand(
        channels, generator=generator, dtype=torch.float64
    )
    return {"local": local, "map": feature_map + 1e-3}


def check_search_weights(function: Any) -> Verdict:
    """Exercise 7.3: `function(local (C,), feature_map (C, H, W))` -> cosine weights (H, W)."""
    exercise = "7.3 search weights"
    for seed in (0, 1):
        toy = toy_search(seed)
        local, feature_map = toy["local"], toy["map"]
        answer, problem = call_answer(exercise, function, local.clone(), feature_map.clone())
        if problem is not None:
            return problem
        expected = search_weights(local[None, None], feature_map[None])[0, 0].double()
        dot = torch.einsum("c,chw->hw", local, feature_map)

        verdict = compare(
            exercise,
            answer,
            expected,
            "the search weights",
            hints=(
                (
                    near(dot),
                    "plain dot products: normalise the crop and every position to unit length",
                ),
                (
                    near(dot / local.norm()),
                    "normalise every position of the map too, not just the crop",
                ),
                (
                    near(dot / feature_map.norm(dim=0)),
                    "normalise the crop's feature too, not just the map",
                ),
                (
                    near(expected.flatten().softmax(0).view_as(expected)),
                    "SCFS takes no softmax: the weights are the cosines themselves",
                ),
                (
                    lambda got: abs(float(got.sum()) - 1) < 1e-4,
                    "the weights sum to 1: SCFS takes no softmax, the weights are cosines",
                ),
            ),
        )
        if not verdict:
            return verdict
    return passed(exercise, "the cosine of the crop with each position, as `search_weights`")
