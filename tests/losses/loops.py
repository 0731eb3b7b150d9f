"""An independent, deliberately plain re-implementation of METHODS.md for the tests.

Pure Python/numpy, one request and one item at a time, straight from the spec text, with
padding handled the way section 7 defines it: each request is reduced to its valid slots
first (NeuralSort over the valid slots only), pointwise terms are pooled over the valid
slots of the batch. Slow on purpose - used only with N of 4-6.

Arguments: ``z`` a list (one per stage) of [B][N] arrays, ``y`` [B][N], ``mask`` [B][N],
``st`` a lcron Setting (only its plain fields are read). Quantities behind a stopped
gradient can be passed in frozen (``teacher``, ``norms``) so that finite differences of
these functions are the gradients autograd should produce.
"""

from __future__ import annotations

import math

import numpy as np


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def bce(x: float, t: float) -> float:
    """BCE with logits: -t log sigmoid(x) - (1 - t) log(1 - sigmoid(x))."""
    return t * softplus(-x) + (1.0 - t) * softplus(x)


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    return math.exp(x) / (1.0 + math.exp(x))


def valid_index(mask_row) -> list[int]:
    return [i for i in range(len(mask_row)) if mask_row[i] != 0]


def neural_sort(s, tau: float) -> np.ndarray:
    """NeuralSort of a 1-D list (valid items only), rows = ranks."""
    n = len(s)
    P = np.zeros((n, n))
    for r in range(n):
        logits = []
        for i in range(n):
            b = 0.0
            for j in range(n):
                b += abs(s[i] - s[j])
            logits.append(((n + 1 - 2 * (r + 1)) * s[i] - b) / tau)
        top = max(logits)
        e = [math.exp(v - top) for v in logits]
        tot = sum(e)
        for i in range(n):
            P[r, i] = e[i] / tot
    return P


def neural_sort_padded(s_row, mask_row, tau: float) -> np.ndarray:
    """The N x N matrix of section 7: NeuralSort of the valid slots, zero elsewhere."""
    idx = valid_index(mask_row)
    N = len(s_row)
    out = np.zeros((N, N))
    if not idx:
        return out
    P = neural_sort([s_row[i] for i in idx], tau)
    for r in range(len(idx)):
        for a, i in enumerate(idx):
            out[r, i] = P[r, a]
    return out


def label_perm(y_valid, hard: bool = False, tau: float = 1e-4) -> np.ndarray:
    L = neural_sort([float(v) for v in y_valid], tau)
    if hard:
        L = (L > 1e-3).astype(float)
    return L


# ------------------------------------------------------------------------ BCE
def bce_loss(z, y, mask, st) -> float:
    total = 0.0
    for s in range(st.num_stages):
        used = st.bce_groups[s] * st.group_size
        num = den = 0.0
        for b in range(len(y)):
            for i in range(used):
                if mask[b][i]:
                    t = 1.0 if i < st.group_size else 0.0
                    num += bce(z[s][b][i], t)
                    den += 1
        total += num / den if den else 0.0
    return total


# ------------------------------------------------------------------------ FS-RankNet
def fs_ranknet_loss(z, y, mask, st) -> float:
    total = 0.0
    gs = st.group_size
    N = len(y[0])
    for s in range(st.num_stages):
        for g in range(len(st.groups) - 1):
            num = den = 0.0
            for b in range(len(y)):
                for i in range(g * gs, (g + 1) * gs):
                    for j in range((g + 1) * gs, N):
                        if mask[b][i] and mask[b][j]:
                            num += softplus(-(z[s][b][i] - z[s][b][j]))
                            den += 1
            total += num / den if den else 0.0
    return total


# ------------------------------------------------------------------------ FS-LambdaLoss
def lambda_loss(z, y, mask, st, mu: float = 0.8, topn: int = 30) -> float:
    total = 0.0
    for s in range(st.num_stages):
        acc = 0.0
        count = 0
        for b in range(len(y)):
            idx = valid_index(mask[b])
            if len(idx) < 2:
                continue
            count += 1
            zs = [z[s][b][i] for i in idx]
            ys = [float(y[b][i]) for i in idx]
            order = sorted(range(len(idx)), key=lambda a: -zs[a])
            rank = [0] * len(idx)
            for pos, a in enumerate(order):
                rank[a] = pos + 1
            ideal = sorted(ys, reverse=True)
            idcg = sum(ideal[r - 1] / math.log(1 + r) for r in range(1, len(ideal) + 1))
            g = [v / idcg for v in ys]
            D = [1 / math.log(1 + r) if r <= topn else 0.0 for r in rank]
            for i in range(len(idx)):
                for j in range(len(idx)):
                    d = abs(rank[i] - rank[j])
                    u = 0.0
                    if d > 0 and (rank[i] <= topn or rank[j] <= topn):
                        u = abs(1 / math.log(1 + d) - 1 / math.log(2 + d))
                    v = abs(D[i] - D[j])
                    w = abs(g[i] - g[j]) * ((1 - mu) * u + mu * v)
                    acc += w * bce(zs[i] - zs[j], 1.0 if ys[i] > ys[j] else 0.0)
        total += acc / count if count else 0.0
    return total


# ------------------------------------------------------------------------ ICC
def icc_ensemble(zb, n_valid_idx, cutoffs, coefs, ctau):
    """zb: per stage list of the valid scores of one request."""
    S = len(zb)
    n = len(n_valid_idx)
    gates = []
    for s in range(S):
        ordered = sorted(zb[s], reverse=True)
        kappa = ordered[min(cutoffs[s], n) - 1]
        gates.append([sigmoid((zb[s][a] - kappa) / ctau) for a in range(n)])
    e = []
    for a in range(n):
        val = 0.0
        passed = 1.0
        for s in range(S):
            if s < S - 1:
                val += coefs[s] * passed * (1 - gates[s][a]) * zb[s][a]
                passed *= gates[s][a]
            else:
                val += coefs[s] * passed * gates[s][a] * zb[s][a]
        e.append(val)
    return e


def reference_padding_label(st, slot: int) -> int:
    """The reference loader's label for an empty slot: its group's default position, which is
    position 0 (label top_label_base) in the top group."""
    group = slot // st.group_size
    return st.top_label_base if group == 0 else st.group_labels[st.groups[group]]


def icc_loss(z, y, mask, st, reference_quirks=False, cutoff_tau=1e-3) -> float:
    """In reference mode every slot takes part, padding with its own logit and the loader's label."""
    cutoffs = st.icc_reference_cutoffs if reference_quirks else st.quotas
    num = den = 0.0
    B, N = len(y), len(y[0])
    for b in range(B):
        idx = list(range(N)) if reference_quirks else valid_index(mask[b])
        if not idx:
            continue
        yb = [y[b][i] if mask[b][i] else reference_padding_label(st, i) for i in range(N)]
        zb = [[z[s][b][i] for i in idx] for s in range(st.num_stages)]
        e = icc_ensemble(zb, idx, cutoffs, st.icc_coefficients, cutoff_tau)
        for a in range(len(idx)):
            for c in range(a + 1, len(idx)):
                t = 1.0 if yb[idx[a]] > yb[idx[c]] else 0.0
                num += bce(e[a] - e[c], t)
                den += 1
    if reference_quirks:
        return num / (B * N * N)
    return num / den if den else 0.0


# ------------------------------------------------------------------------ RankFlow
def rankflow_loss(z, y, mask, st, ranking_terms=None, teacher=None) -> float:
    """``teacher`` = frozen copy of z for the sg() targets (defaults to z itself)."""
    teacher = z if teacher is None else teacher
    if ranking_terms is None:
        ranking_terms = st.rankflow_ranking_terms
    S = st.num_stages
    B = len(y)
    bce_num = [0.0] * S
    bce_den = [0] * S
    mse_num = [0.0] * S
    mse_den = [0] * S
    rank_sum = [0.0] * S
    rank_cnt = [0] * S
    for b in range(B):
        reach = valid_index(mask[b])
        for s in range(S):
            for i in reach:
                t = 1.0 if i < st.group_size else 0.0
                bce_num[s] += bce(z[s][b][i], t)
                bce_den[s] += 1
                if s > 0:
                    mse_num[s] += (z[s - 1][b][i] - teacher[s][b][i]) ** 2
                    mse_den[s] += 1
            keep = sorted(reach, key=lambda i: -z[s][b][i])[: st.quotas[s]]
            if s > 0 and ranking_terms:
                dropped = [i for i in reach if i not in keep]
                if keep and dropped:
                    hi = sum(z[s - 1][b][i] for i in keep) / len(keep)
                    lo = sum(z[s - 1][b][i] for i in dropped) / len(dropped)
                    rank_sum[s] += softplus(-(hi - lo))
                    rank_cnt[s] += 1
            reach = keep
    total = 0.0
    for s in range(S):
        total += bce_num[s] / bce_den[s] if bce_den[s] else 0.0
        total += mse_num[s] / mse_den[s] if mse_den[s] else 0.0
        total += rank_sum[s] / rank_cnt[s] if rank_cnt[s] else 0.0
    return total


# ------------------------------------------------------------------------ ARF / ARF-v2 / LCRON
def _memberships(P, m, norm_col):
    n = P.shape[0]
    inside = [sum(P[r, a] for r in range(min(m, n))) / norm_col[a] for a in range(n)]
    outside = [sum(P[r, a] for r in range(m, n)) / norm_col[a] for a in range(n)]
    return inside, outside


def column_norms(z, mask, tau):
    """The stopped-gradient normalisers sum_r P[r, i], per stage and request (valid items)."""
    out = []
    for s in range(len(z)):
        per_req = []
        for b in range(len(mask)):
            idx = valid_index(mask[b])
            P = neural_sort([z[s][b][i] for i in idx], tau) if idx else np.zeros((0, 0))
            per_req.append([P[:, a].sum() for a in range(len(idx))])
        out.append(per_req)
    return out


def arf_loss(z, y, mask, st, two_sided=False, tau=200.0, k=None, weights=None, norms=None) -> float:
    k = st.gt_size if k is None else k
    S = st.num_stages
    weights = [1.0] * S if weights is None else weights
    total = 0.0
    for s in range(S):
        m = st.quotas[s]
        g_num = g_den = 0.0
        r_num = r_den = 0.0
        for b in range(len(y)):
            idx = valid_index(mask[b])
            n = len(idx)
            if n == 0:
                continue
            P = neural_sort([z[s][b][i] for i in idx], tau)
            L = label_perm([y[b][i] for i in idx])
            for r in range(n):
                for a in range(n):
                    g_num += -math.log(P[r, a] + 1e-6) * L[r, a]
            g_den += n * n
            if n <= m:
                continue
            t_in = [sum(L[r, a] for r in range(min(k, n))) for a in range(n)]
            t_out = [sum(L[r, a] for r in range(k, n)) for a in range(n)]
            col = norms[s][b] if norms is not None else [P[:, a].sum() for a in range(n)]
            inside, outside = _memberships(P, m, col)
            for a in range(n):
                if two_sided:
                    r_num += -math.log(inside[a] + 1e-6) * t_in[a] - math.log(outside[a] + 1e-6) * t_out[a]
                else:
                    top = sum(P[r, a] for r in range(m)) / m
                    r_num += -math.log(top + 1e-6) * t_in[a]
                r_den += 1
        glob = g_num / g_den if g_den else 0.0
        relax = r_num / r_den if r_den else 0.0
        w = weights[s]
        total += 0.5 / w**2 * glob + relax + math.log(w)
    return total


def lcron_loss(z, y, mask, st, k=None, hard=None, tau=50.0, weights=None, norms=None) -> float:
    S = st.num_stages
    k = [10] * S if k is None else list(k)
    hard = st.lcron_hard_labels if hard is None else hard
    weights = [1.0] * S if weights is None else weights
    G = st.gt_size
    e_num = e_den = 0.0
    s_num = [0.0] * S
    s_den = [0] * S
    for b in range(len(y)):
        idx = valid_index(mask[b])
        n = len(idx)
        if n == 0:
            continue
        L = label_perm([y[b][i] for i in idx], hard=hard)
        t_in = [sum(L[r, a] for r in range(min(G, n))) for a in range(n)]
        t_out = [sum(L[r, a] for r in range(G, n)) for a in range(n)]
        p_joint = [1.0] * n
        q_joint = [1.0] * n
        for s in range(S):
            P = neural_sort([z[s][b][i] for i in idx], tau)
            col = norms[s][b] if norms is not None else [P[:, a].sum() for a in range(n)]
            inside, outside = _memberships(P, k[s], col)
            for a in range(n):
                p_joint[a] *= inside[a]
                q_joint[a] *= 1 - outside[a]
            if n > k[s]:
                for a in range(n):
                    s_num[s] += -math.log(inside[a] + 1e-6) * t_in[a] - math.log(outside[a] + 1e-6) * t_out[a]
                    s_den[s] += 1
        for a in range(n):
            e_num += -math.log(p_joint[a] + 1e-6) * t_in[a] - math.log(1 - q_joint[a] + 1e-6) * (1 - t_in[a])
            e_den += 1
    total = e_num / e_den
    for s in range(S):
        single = s_num[s] / s_den[s] if s_den[s] else 0.0
        total += 0.5 / weights[s] ** 2 * single + math.log(weights[s])
    return total


LOOP_LOSSES = {
    "bce": bce_loss,
    "icc": icc_loss,
    "rankflow": rankflow_loss,
    "fs_ranknet": fs_ranknet_loss,
    "fs_lambdaloss": lambda_loss,
    "arf": lambda z, y, mask, st, **kw: arf_loss(z, y, mask, st, two_sided=False, **kw),
    "arf_v2": lambda z, y, mask, st, **kw: arf_loss(z, y, mask, st, two_sided=True, **kw),
    "lcron": lcron_loss,
}
