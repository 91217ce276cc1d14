"""Contrastive losses as pure functions of L2-normalised embeddings.

Every loss here builds a logits matrix whose column 0 is the positive and takes the mean
cross-entropy against index 0, so all of them can be checked by hand on a few vectors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pair(query: Tensor, positive: Tensor) -> None:
    if query.dim() != 2 or query.shape != positive.shape:
        raise ValueError(
            f"query and positive must both be (B, D); got {tuple(query.shape)} "
            f"and {tuple(positive.shape)}"
        )


def negative_logits(query: Tensor, negatives: Tensor) -> Tensor:
    """Cosine logits (B, K) of each query against shared (K, D) or per-query (B, K, D) negatives."""
    if negatives.dim() == 2:
        if negatives.shape[1] != query.shape[1]:
            raise ValueError(
                f"negatives (K, D) must have D={query.shape[1]}; got {tuple(negatives.shape)}"
            )
        return query @ negatives.T
    if negatives.dim() == 3:
        if negatives.shape[0] != query.shape[0] or negatives.shape[2] != query.shape[1]:
            raise ValueError(
                f"per-query negatives must be (B={query.shape[0]}, K, D={query.shape[1]}); "
                f"got {tuple(negatives.shape)}"
            )
        return torch.einsum("bd,bkd->bk", query, negatives)
    raise ValueError(f"negatives must be (K, D) or (B, K, D); got {tuple(negatives.shape)}")


def contrastive_logits(query: Tensor, positive: Tensor, negatives: Tensor) -> Tensor:
    """Logits (B, 1 + K) with the positive's cosine similarity in column 0."""
    _check_pair(query, positive)
    positive_logit = (query * positive).sum(dim=1, keepdim=True)
    return torch.cat([positive_logit, negative_logits(query, negatives)], dim=1)


def info_nce(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor,
    temperature: float,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """InfoNCE: mean cross-entropy of (1 + K)-way classification with the positive at index 0.

    Inputs are L2-normalised: query and positive (B, D), negatives (K, D) shared by all
    queries (a MoCo queue) or (B, K, D) drawn per query (a memory-bank sampler).
    `negative_mask` (B, K), True where a negative must not count (it is the query's own
    video, say), drops those columns per query.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    logits = contrastive_logits(query, positive, negatives).float() / temperature
    if negative_mask is not None:
        logits = _drop_negatives(logits, negative_mask)
    targets = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, targets)


def _drop_negatives(logits: Tensor, negative_mask: Tensor) -> Tensor:
    if negative_mask.shape != (logits.shape[0], logits.shape[1] - 1):
        raise ValueError(
            f"negative_mask must be (B, K) = {(logits.shape[0], logits.shape[1] - 1)}; "
            f"got {tuple(negative_mask.shape)}"
        )
    keep_positive = torch.zeros_like(negative_mask[:, :1])
    return logits.masked_fill(torch.cat([keep_positive, negative_mask], dim=1), float("-inf"))


def soft_nearest_neighbour(
    query: Tensor, support: Tensor, temperature: float, support_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(L2-normalised soft neighbour (B, D), weights (B, S)) of each query within `support`.

    weights = softmax(query . support / temperature) over the support entries not masked
    (`support_mask` (B, S), True = excluded, e.g. the query's own video); the neighbour is
    the weighted mean of the support, renormalised (CycleContrast's forward step).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    logits = negative_logits(query, support).float() / temperature
    if support_mask is not None:
        if support_mask.shape != logits.shape:
            raise ValueError(
                f"support_mask must be (B, S) = {tuple(logits.shape)}; got {tuple(support_mask.shape)}"
            )
        logits = logits.masked_fill(support_mask, float("-inf"))
    weights = logits.softmax(dim=1)
    return F.normalize(weights @ support.float(), dim=1), weights


def cycle_loss(
    query: Tensor,
    support: Tensor,
    positive: Tensor,
    negatives: Tensor,
    temperature: float,
    nn_temperature: float | None = None,
    support_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """CycleContrast's cross-video cycle loss and the soft-neighbour weights.

    Forward: the query's soft nearest neighbour among `support` (other videos). Back: that
    neighbour must pick out `positive` (another frame of the query's own video) against
    `negatives`, a set disjoint from the support, by InfoNCE. With support, positive and
    negatives detached, the gradient reaches the query only through the weights.
    """
    neighbour, weights = soft_nearest_neighbour(
        query, support, nn_temperature or temperature, support_mask
    )
    return info_nce(
        neighbour, positive.float(), negatives.float(), temperature, negative_mask
    ), weights


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent: each of the 2B views must find its partner among the other 2B - 1.

    z1[i] and z2[i] are two L2-normalised views of image i; all other views in the batch are
    negatives. Mean over all 2B anchors.
    """
    _check_pair(z1, z2)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    batch = len(z1)
    z = torch.cat([z1, z2], dim=0)
    logits = (z @ z.T).float() / temperature
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    partner = torch.arange(2 * batch, device=z.device).roll(batch)
    return F.cross_entropy(logits, partner)


MARGIN_KINDS = ("cos", "arc")


def apply_margin(cosine: Tensor, margin: float, kind: str) -> Tensor:
    """The positive logit under a decision margin (MarginNCE).

    `cos`: cos(theta) - m (additive cosine margin; m < 0 loosens the boundary).
    `arc`: cos(theta + m) (angular margin). Where theta + m would leave [0, pi] the usual
    ArcFace fallbacks keep the logit monotonic in theta: cos(theta) + |m| sin|m| when m < 0
    and theta <= |m|, cos(theta) - m sin(m) when m > 0 and theta >= pi - m.
    """
    if kind not in MARGIN_KINDS:
        raise ValueError(f"unknown margin kind {kind!r}; valid: {', '.join(MARGIN_KINDS)}")
    if margin == 0:
        return cosine
    if kind == "cos":
        return cosine - margin
    cosine = cosine.float()
    theta = torch.acos(cosine.clamp(-1 + 1e-7, 1 - 1e-7))
    shifted = torch.cos(theta + margin)
    if margin < 0:
        fallback = cosine + abs(margin) * math.sin(abs(margin))
        return torch.where(theta <= abs(margin), fallback, shifted)
    fallback = cosine - margin * math.sin(margin)
    return torch.where(theta >= math.pi - margin, fallback, shifted)


def margin_nce(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor,
    temperature: float,
    margin: float = 0.0,
    kind: str = "cos",
) -> Tensor:
    """InfoNCE with a margin on the positive logit only (InterCLR's MarginNCE).

    A negative margin makes the boundary less stringent; margin 0 is exactly `info_nce`.
    """
    if kind not in MARGIN_KINDS:
        raise ValueError(f"unknown margin kind {kind!r}; valid: {', '.join(MARGIN_KINDS)}")
    if margin == 0:
        return info_nce(query, positive, negatives, temperature)
    cosines = contrastive_logits(query, positive, negatives).float()
    logits = margin_logits(cosines[:, 0], cosines[:, 1:], temperature, margin, kind)
    targets = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, targets)


def margin_logits(
    positive: Tensor, negatives: Tensor, temperature: float, margin: float, kind: str
) -> Tensor:
    """(B, 1 + K) MarginNCE logits from cosines: the positive (B,) shifted by the margin in
    column 0, then the negatives (B, K), all divided by the temperature."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if positive.dim() != 1 or negatives.dim() != 2 or len(negatives) != len(positive):
        raise ValueError(
            f"expected positive (B,) and negatives (B, K); got {tuple(positive.shape)} "
            f"and {tuple(negatives.shape)}"
        )
    shifted = apply_margin(positive.float().unsqueeze(1), margin, kind)
    return torch.cat([shifted, negatives.float()], dim=1) / temperature


def positive_probability(
    positive: Tensor,
    negatives: Tensor,
    temperature: float,
    margin: float = 0.0,
    kind: str = "cos",
) -> Tensor:
    """The softmax probability (B,) that MarginNCE gives each query's positive.

    `positive` (B,) and `negatives` (B, K) are cosines. A value near 1 means the loss is
    saturated: its gradient vanishes, so the margin under study no longer shapes training.
    """
    return margin_logits(positive, negatives, temperature, margin, kind).softmax(dim=1)[:, 0]
