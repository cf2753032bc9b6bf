"""Late fusion of per-modality ranked segment lists into one list.

Each modality (visual, speech, subtitles) is searched on its own: an ANN query returns its
segments best first, ``[(segment_id, score), ...]``, where ``score`` is the inner product of
unit vectors. This module turns those lists into one ranked list of :class:`FusedHit`, each
carrying what every modality contributed so a response can explain a result.

Two methods:

``rrf`` — weighted reciprocal-rank fusion (Cormack, Clarke and Büttcher, "Reciprocal rank
fusion outperforms Condorcet and individual rank learning methods", SIGIR 2009; weighted per
modality as in MMMORRF, "Multimodal Multilingual MOdularized Reciprocal Rank Fusion", SIGIR
2025)::

    score(s) = sum over modalities m holding s of  w_m / (k + rank_m(s))     rank 1-based

Only ranks enter, so scores of different modalities never have to be comparable; ``k``
(60 in both papers) damps the head so one modality's first hit cannot outweigh agreement.

``sum`` — weighted sum of normalised scores. Raw cosines of different modalities live on
different scales (CLIP text-to-image similarities cluster around 0.2-0.3, MiniLM
text-to-text ones spread over 0-0.9), so summing them raw would let the text encoder decide
every ranking. Each list is therefore min-max normalised to [0, 1] first::

    score(s) = sum_m w_m * norm_m(s) / sum_m w_m      norm_m(s) = 0 where m did not return s

Both methods leave the order of a single searched modality unchanged, and both break ties
the same deterministic way: best single-modality rank, then the smaller segment id.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

RANKED = "rrf"
WEIGHTED_SUM = "sum"
METHODS = (RANKED, WEIGHTED_SUM)
DEFAULT_RRF_K = 60.0

RankedList = Sequence[tuple[int, float]]


@dataclass(frozen=True)
class Contribution:
    """One modality's part in a fused hit: its 0-based rank in that modality's list and the
    raw ANN score it had there."""

    modality: str
    rank: int
    score: float


@dataclass(frozen=True)
class FusedHit:
    """A segment after fusion; ``contributions`` are sorted by modality name and hold only the
    modalities that returned the segment and were searched (weight > 0)."""

    segment_id: int
    score: float
    contributions: tuple[Contribution, ...]

    @property
    def best_rank(self) -> int:
        """The best (smallest) 0-based rank any modality gave this segment."""
        return min(c.rank for c in self.contributions)


def fuse(
    method: str,
    lists: Mapping[str, RankedList],
    weights: Mapping[str, float],
    k: float = DEFAULT_RRF_K,
    groups: Mapping[str, str] | None = None,
) -> list[FusedHit]:
    """Fuse ``lists`` (modality -> hits best first) with ``method`` (``"rrf"`` or ``"sum"``,
    a :class:`spr.config.FusionMethod` works too). ``k`` is used by RRF only, but is checked
    either way so a bad configuration fails on first use.

    ``groups`` (modality -> group name) puts modalities whose scores share one scale (speech
    and subtitles, embedded by the same sentence encoder) together: they are ranked (RRF) or
    normalised (sum) as one list, so the best subtitle hit of an unrelated video does not count
    as much as the best spoken hit of the right one just for heading its own list."""
    name = str(method).casefold()
    if name not in METHODS:
        raise ValueError(f"unknown fusion method {method!r}; use one of {', '.join(METHODS)} (fusion.method)")
    _check_k(k)
    if name == RANKED:
        return fuse_rrf(lists, weights, k, groups)
    return fuse_weighted_sum(lists, weights, groups)


def fuse_rrf(
    lists: Mapping[str, RankedList],
    weights: Mapping[str, float],
    k: float = DEFAULT_RRF_K,
    groups: Mapping[str, str] | None = None,
) -> list[FusedHit]:
    """Weighted reciprocal-rank fusion: ``sum_m w_m / (k + rank_m + 1)`` with 0-based
    ``rank_m`` (within its group's joint ranking when ``groups`` joins it to others).
    Modalities with weight 0 or no weight are ignored."""
    _check_k(k)
    searched = _searched(lists, weights)
    contributions = _contributions(lists, searched)
    joint = _joint_ranks(lists, searched, groups or {})
    scores = {
        segment_id: sum(weights[c.modality] / (k + joint.get((c.modality, c.rank), c.rank) + 1) for c in parts)
        for segment_id, parts in contributions.items()
    }
    return _ranked(scores, contributions)


def fuse_weighted_sum(
    lists: Mapping[str, RankedList], weights: Mapping[str, float], groups: Mapping[str, str] | None = None
) -> list[FusedHit]:
    """Weighted mean of per-modality min-max normalised scores (a single-hit or constant list
    normalises to 1.0; a segment a modality did not return gets 0 from it), divided by the
    sum of the weights of the searched modalities. Modalities of one group share one min and
    max."""
    searched = _searched(lists, weights)
    total_weight = sum(weights[m] for m in searched)
    normalised = _normalised(lists, searched, groups or {})
    contributions = _contributions(lists, searched)
    scores = {
        segment_id: sum(weights[c.modality] * normalised[c.modality][c.rank] for c in parts) / total_weight
        for segment_id, parts in contributions.items()
    }
    return _ranked(scores, contributions)


def _check_k(k: float) -> None:
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"RRF k must be a finite number > 0 (fusion.rrf_k), got {k!r}")


def _searched(lists: Mapping[str, RankedList], weights: Mapping[str, float]) -> list[str]:
    """The modalities to fuse, sorted: in ``lists`` and with a weight > 0. Every weight is
    checked, also those of modalities not searched, so a typo'd weight fails loudly."""
    for modality, weight in weights.items():
        if not (isinstance(weight, numbers.Real) and math.isfinite(weight) and weight >= 0):
            raise ValueError(
                f"fusion weight of {modality!r} must be a finite number >= 0 (0 turns it off), got {weight!r}"
            )
    return sorted(m for m in lists if weights.get(m, 0) > 0)


def _contributions(lists: Mapping[str, RankedList], searched: Sequence[str]) -> dict[int, list[Contribution]]:
    """segment id -> its contributions, in modality-name order (``searched`` is sorted). A
    segment listed twice by one modality keeps its first (best) place."""
    out: dict[int, list[Contribution]] = {}
    for modality in searched:
        seen: set[int] = set()
        for rank, (segment_id, score) in enumerate(lists[modality]):
            if not math.isfinite(score):
                raise ValueError(f"{modality} hit {segment_id} has a non-finite score {score!r}")
            if segment_id in seen:
                continue
            seen.add(segment_id)
            out.setdefault(int(segment_id), []).append(Contribution(modality, rank, float(score)))
    return out


def _group_members(searched: Sequence[str], groups: Mapping[str, str]) -> list[list[str]]:
    """The searched modalities in groups of two or more (each in modality-name order)."""
    by_group: dict[str, list[str]] = {}
    for m in searched:
        if m in groups:
            by_group.setdefault(groups[m], []).append(m)
    return [members for members in by_group.values() if len(members) > 1]


def _joint_ranks(
    lists: Mapping[str, RankedList], searched: Sequence[str], groups: Mapping[str, str]
) -> dict[tuple[str, int], int]:
    """``(modality, own rank) -> rank in its group's joint list`` (hits of all the group's
    lists by score, best first; ties in modality-name order), for grouped modalities only."""
    joint: dict[tuple[str, int], int] = {}
    for members in _group_members(searched, groups):
        entries = [(-float(score), m, rank) for m in members for rank, (_, score) in enumerate(lists[m])]
        for position, (_, m, rank) in enumerate(sorted(entries)):
            joint[(m, rank)] = position
    return joint


def _normalised(
    lists: Mapping[str, RankedList], searched: Sequence[str], groups: Mapping[str, str]
) -> dict[str, list[float]]:
    """Per modality, its scores min-max normalised; a group's modalities over their joint range."""
    out = {m: _min_max(lists[m]) for m in searched}
    for members in _group_members(searched, groups):
        scores = [float(score) for m in members for _, score in lists[m]]
        if not scores:
            continue
        low, high = min(scores), max(scores)
        for m in members:
            out[m] = [1.0 if high == low else (float(s) - low) / (high - low) for _, s in lists[m]]
    return out


def _min_max(hits: RankedList) -> list[float]:
    """Scores of ``hits`` mapped onto [0, 1] by rank position; a list whose scores are all
    equal (one hit included) maps to 1.0: its hits are as good as that modality gets."""
    scores = [float(score) for _, score in hits]
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def _ranked(scores: Mapping[int, float], contributions: Mapping[int, list[Contribution]]) -> list[FusedHit]:
    hits = [FusedHit(sid, scores[sid], tuple(contributions[sid])) for sid in scores]
    hits.sort(key=lambda h: (-h.score, h.best_rank, h.segment_id))
    return hits
