"""The expression basis's linear system (engine.training.basis): which scores are inert and which
are tied into one regressor, the regional, smooth, ridge-regularised sparse solve, and a tied
group's shape shared out among its names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from engine.head.regions import MASK_FLOOR, is_sided, symmetrise

INERT_STD = 0.02  # a score that varies less than this in the training frames cannot be learned
TIE_CORRELATION = 0.9  # scores more correlated than this are fitted as one


def mesh_laplacian(faces: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """Uniform graph Laplacian (V, V) of the mesh edges: D - A."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    a = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(num_vertices, num_vertices))
    a = ((a + a.T) > 0).astype(np.float64)
    return (sp.diags(np.asarray(a.sum(axis=1)).ravel()) - a).tocsr()


@dataclass(frozen=True)
class TiePlan:
    """How the learned columns map to expression names.

    active  names that get a shape; columns  groups of active-name indices fitted as one regressor
    (mean of their scores); inert  names held at zero, with the reason for each."""

    active: tuple[str, ...]
    columns: tuple[tuple[int, ...], ...]
    inert: dict[str, str]


def plan_ties(
    scores: np.ndarray, names: tuple[str, ...], implausible: dict[str, str] | None = None
) -> TiePlan:
    """Decide inert names and tied groups from the training scores (N, K) over `names`;
    `implausible` names (with reasons) are held inert too."""
    inert: dict[str, str] = dict(implausible or {})
    for k, name in enumerate(names):
        if name in inert:
            continue
        if name.startswith("eyeLook"):
            inert[name] = "gaze: the face mesh has no eyeballs"
        elif scores[:, k].std() < INERT_STD:
            inert[name] = (
                f"not exercised by the clip (score std {scores[:, k].std():.3f} < {INERT_STD})"
            )
    active = tuple(n for n in names if n not in inert)
    idx = [names.index(n) for n in active]
    corr = np.corrcoef(scores[:, idx].T)
    # Union-find over strongly correlated pairs.
    parent = list(range(len(active)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(active)):
        for j in range(i + 1, len(active)):
            if corr[i, j] > TIE_CORRELATION:
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(active)):
        groups.setdefault(find(i), []).append(i)
    return TiePlan(active=active, columns=tuple(tuple(g) for g in groups.values()), inert=inert)


def tied_scores(scores: np.ndarray, names: tuple[str, ...], plan: TiePlan) -> np.ndarray:
    """(N, K) scores over `names` -> (N, C) regressors, one per tied column (the group mean)."""
    cols = [
        scores[:, [names.index(plan.active[i]) for i in group]].mean(axis=1)
        for group in plan.columns
    ]
    return np.stack(cols, axis=1)


def solve_basis(
    residuals: np.ndarray,
    regressors: np.ndarray,
    regions: np.ndarray,
    data_weight: np.ndarray,
    laplacian: sp.csr_matrix,
    ridge: float,
    smooth: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Regional, smooth, ridge-regularised linear fit, solved as one sparse system.

    residuals (N, V, 3) canonical-frame offsets from the template; regressors (N, C);
    regions (C, V) soft masks (a shape is zero where its mask is < 0.05, and its ridge penalty grows
    as the mask fades, so it decays towards the edge); data_weight (V,) 0 for vertices whose
    observations are not trusted (the outline). Returns intercept (V, 3) and shapes (V, 3, C).
    The intercept (this person's neutral offset) is smoothed but not shrunk; ridge and smooth are
    per-frame weights, multiplied by N.
    """
    n, v, _ = residuals.shape
    c = regressors.shape[1]
    # Work in units of each regressor's spread, so that the penalties mean the same for a score
    # that swings 0..1 and one that barely leaves 0.1.
    spread = np.clip(regressors.std(axis=0), 1e-6, None)  # (C,)
    design = np.concatenate([np.ones((n, 1)), regressors / spread], axis=1)  # (N, C + 1)
    gram = design.T @ design  # (C + 1, C + 1)
    rhs = np.einsum("nk,nvc->kvc", design, residuals) * data_weight[None, :, None]  # (C + 1, V, 3)
    lap2 = (laplacian.T @ laplacian).tocsr()
    mask = np.concatenate([np.ones((1, v)), regions], axis=0)  # (C + 1, V)
    shrink = np.zeros((c + 1, v))
    shrink[1:] = ridge * n / np.clip(regions, MASK_FLOOR, 1.0) ** 2
    system = (
        sp.kron(sp.csr_matrix(gram), sp.diags(data_weight))
        + sp.kron(sp.identity(c + 1), lap2) * (smooth * n)
        + sp.diags(shrink.ravel() + 1e-9 * n)
    ).tocsc()
    free = np.flatnonzero(mask.ravel() >= MASK_FLOOR)
    sub = system[free][:, free]
    solution = np.zeros(((c + 1) * v, 3))
    solution[free] = spla.splu(sub).solve(rhs.reshape(-1, 3)[free])
    solution = solution.reshape(c + 1, v, 3)
    shapes = solution[1:].transpose(1, 2, 0) / spread  # (V, 3, C) per unit score
    return solution[0], np.ascontiguousarray(shapes)


def split_tied(
    shapes: np.ndarray, plan: TiePlan, region_masks: dict[str, np.ndarray], mirror: np.ndarray
) -> dict[str, np.ndarray]:
    """Give each name of a tied group its share of the group's shape (V, 3): shares are the
    members' region weights normalised to sum to one at every vertex."""
    out: dict[str, np.ndarray] = {}
    for col, group in enumerate(plan.columns):
        members = [plan.active[i] for i in group]
        group_shape = shapes[:, :, col]
        bases = {m.removesuffix("Left").removesuffix("Right") for m in members}
        # A lone unsided shape, or a tied Left/Right pair of one base name, is symmetric by nature.
        if not any(is_sided(m) for m in members) or (len(members) == 2 and len(bases) == 1):
            group_shape = symmetrise(group_shape, mirror)
        weights = np.stack([region_masks[m] for m in members])  # (M, V)
        weights = np.where(weights >= MASK_FLOOR, weights, 0.0)  # a share never leaves its region
        share = weights / np.clip(weights.sum(axis=0, keepdims=True), 1e-6, None)
        for m, s in zip(members, share, strict=True):
            # With the mean score as regressor, a one-sided score moves its own side by the full
            # group shape, and equal scores add up to exactly the group shape.
            out[m] = group_shape * s[:, None]
    return out
