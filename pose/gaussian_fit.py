"""Batched MINPACK-style Levenberg-Marquardt fit of isotropic 2-D Gaussians, one per heatmap window.

The authors refine each absorbed joint with ``scipy.optimize.curve_fit`` (MINPACK ``lmdif``: forward-
difference Jacobian, trust region on the diagonally scaled step, at most 300 function evaluations; a fit
that ends without convergence raises and the joint stays as it was). Noisy windows make the optimizer's
*path* matter, so this follows ``lmdif``/``lmpar`` step for step (same scaling, trust-region updates,
Newton iterations on the damping parameter and convergence tests), vectorized over all windows of a
batch in float64. The linear algebra uses normal equations (``J^T J``, also for the predicted reduction
``|J p|^2 = p^T J^T J p``) instead of ``lmdif``'s pivoted QR: the same steps up to rounding, which on an
ill-conditioned window is larger (the condition number enters squared) and can move its path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["fit_gaussians"]

FTOL = 1.49012e-08  # scipy's leastsq defaults
XTOL = 1.49012e-08
FACTOR = 100.0  # initial trust radius = FACTOR * |D x0|
EPSMCH = float(torch.finfo(torch.float64).eps)
DWARF = float(torch.finfo(torch.float64).tiny)
FD_STEP = EPSMCH**0.5  # forward-difference step relative to |x_j|


def _residuals(theta: Tensor, data: Tensor, valid_a: Tensor, valid_b: Tensor, grid: Tensor) -> Tensor:
    """Model minus data over each fit's (Ga, Gb) sample grid, flattened; zero outside the real samples.

    ``theta`` is (M, 4), or (M, S, 4) for S parameter sets per fit (the Jacobian's columns), giving
    (M, L) or (M, S, L). The Gaussian is separable, so the model is the outer product of two per-axis
    tables (the amplitude and the validity folded in): two small exponentials per fit instead of one per
    sample, and two passes over the grid. It differs from the joint exponential only by rounding.
    """
    amp, y0, x0, sigma = (theta[..., i : i + 1] for i in range(4))
    if theta.dim() == 3:
        data, valid_a, valid_b = data.unsqueeze(1), valid_a.unsqueeze(1), valid_b.unsqueeze(1)
    scale = -0.5 / (sigma * sigma)
    dy, dx = grid[:, : valid_a.shape[-1]] - y0, grid[:, : valid_b.shape[-1]] - x0
    ey = torch.where(valid_a, amp * torch.exp(dy * dy * scale), 0.0)  # (..., Ga)
    ex = torch.where(valid_b, torch.exp(dx * dx * scale), 0.0)  # (..., Gb)
    return (ey.unsqueeze(-1) * ex.unsqueeze(-2)).flatten(-2) - data


def _norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=-1)


def _lmpar(jtj: Tensor, jtf: Tensor, diag: Tensor, delta: Tensor, par: Tensor) -> tuple[Tensor, Tensor]:
    """MINPACK ``lmpar``: damping ``par`` so that ``|D x| ~ delta`` (10% band), and the step ``-x``.

    In scaled coordinates ``u = D x`` every Newton step on ``par`` solves ``(B + par I) u = D^-1 J^T f``
    with ``B = D^-1 J^T J D^-1``. On CPU by a Cholesky factorization (4x4 matrices: a few microseconds
    each, an order of magnitude less than an eigendecomposition); fits whose ``B`` is singular to working
    precision, and every fit on other devices (no host syncs), take :func:`_lmpar_eigen`, which gives
    rank-deficient directions a zero Gauss-Newton component. A fit with non-finite inputs gets a NaN step,
    which fails it (``eigh`` would raise).
    """
    finite = torch.isfinite(jtj).flatten(1).all(1) & torch.isfinite(jtf).all(1) & torch.isfinite(diag).all(1)
    eye = torch.eye(jtj.shape[-1], dtype=jtj.dtype, device=jtj.device)
    jtj = torch.where(finite.view(-1, 1, 1), jtj, eye)
    jtf = torch.where(finite.unsqueeze(-1), jtf, 0.0)
    diag = torch.where(finite.unsqueeze(-1), diag, 1.0)
    if jtj.device.type == "cpu":
        step, new_par = _lmpar_cpu(jtj, jtf, diag, delta, par)
    else:
        step, new_par = _lmpar_eigen(jtj, jtf, diag, delta, par)
    return torch.where(finite.unsqueeze(-1), step, torch.nan), torch.where(finite, new_par, par)


def _lmpar_cpu(jtj: Tensor, jtf: Tensor, diag: Tensor, delta: Tensor, par: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky where ``B`` is nonsingular, the eigendecomposition for the rest."""
    b = jtj / (diag.unsqueeze(-1) * diag.unsqueeze(-2))
    g = jtf / diag
    n = b.shape[-1]
    chol, info = torch.linalg.cholesky_ex(b)
    pivots = chol.diagonal(dim1=-2, dim2=-1)
    scale = b.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True)
    singular = (info != 0) | (pivots * pivots <= scale * (EPSMCH * n)).any(-1) | ~torch.isfinite(pivots).all(-1)
    if bool(singular.any()):
        step, new_par = torch.empty_like(jtf), torch.empty_like(par)
        rows, regular = singular.nonzero().squeeze(1), (~singular).nonzero().squeeze(1)
        step[rows], new_par[rows] = _lmpar_eigen(jtj[rows], jtf[rows], diag[rows], delta[rows], par[rows])
        if regular.numel():
            u, new_par[regular] = _lmpar_cholesky(b[regular], chol[regular], g[regular], delta[regular], par[regular])
            step[regular] = -u / diag[regular]
        return step, new_par
    u, par = _lmpar_cholesky(b, chol, g, delta, par)
    return -u / diag, par


def _lmpar_cholesky(b: Tensor, chol: Tensor, g: Tensor, delta: Tensor, par: Tensor) -> tuple[Tensor, Tensor]:
    """``lmpar`` for nonsingular ``B`` (its Cholesky factor ``chol``); returns ``u = D x`` and ``par``."""
    eye = torch.eye(b.shape[-1], dtype=b.dtype, device=b.device)
    factor = chol  # of B + par I for the latest par asked for

    def step(p: Tensor) -> Tensor:  # u(p) = (B + p I)^-1 g
        nonlocal factor
        factor = chol if not bool(p.any()) else torch.linalg.cholesky_ex(b + p.view(-1, 1, 1) * eye)[0]
        return torch.cholesky_solve(g.unsqueeze(-1), factor).squeeze(-1)

    def curvature(u: Tensor, dxnorm: Tensor, p: Tensor) -> Tensor:  # z^T (B + p I)^-1 z, z = u / |u|
        z = (u / dxnorm.clamp(min=DWARF).unsqueeze(-1)).unsqueeze(-1)
        w = torch.linalg.solve_triangular(factor, z, upper=False).squeeze(-1)
        return (w * w).sum(-1)

    full_rank = torch.ones_like(delta, dtype=torch.bool)
    return _search_damping(step, curvature, full_rank, _norm(g), delta, par)


def _lmpar_eigen(jtj: Tensor, jtf: Tensor, diag: Tensor, delta: Tensor, par: Tensor) -> tuple[Tensor, Tensor]:
    """``lmpar`` through an eigendecomposition, which also handles a singular ``B``.

    With ``B = D^-1 J^T J D^-1 = V diag(lam) V^T`` (one eigendecomposition per call), every quantity of
    the Newton iteration on ``par`` is elementwise: ``D x(par) = V (c / (lam + par))`` with
    ``c = V^T D^-1 J^T f``, and ``q^T (J^T J + par D^2)^-1 q = sum (V^T z)^2 / (lam + par)`` for
    ``q = D z``. Rank-deficient directions get a zero Gauss-Newton component, like ``lmpar``.
    """
    lam, vec = torch.linalg.eigh(jtj / (diag.unsqueeze(-1) * diag.unsqueeze(-2)))
    lam = lam.clamp(min=0)
    rank_ok = lam > lam.amax(-1, keepdim=True) * (EPSMCH * jtj.shape[-1])
    c = (vec.transpose(1, 2) @ (jtf / diag).unsqueeze(-1)).squeeze(-1)  # (M, n)

    def step(p: Tensor) -> Tensor:  # V^T D x(p), in eigen coordinates
        denom = lam + p.unsqueeze(-1)
        return torch.where(rank_ok | (p.unsqueeze(-1) > 0), c / denom.clamp(min=DWARF), torch.zeros_like(c))

    def curvature(y: Tensor, dxnorm: Tensor, p: Tensor) -> Tensor:  # q^T M(p)^-1 q with q = D (D x) / |D x|
        z = y / dxnorm.clamp(min=DWARF).unsqueeze(-1)
        return (z**2 / (lam + p.unsqueeze(-1)).clamp(min=DWARF)).sum(-1)

    y, par = _search_damping(step, curvature, rank_ok.all(-1), _norm(jtf / diag), delta, par)
    x = (vec @ y.unsqueeze(-1)).squeeze(-1) / diag
    return -x, par


def _search_damping(
    step: Callable[[Tensor], Tensor],
    curvature: Callable[[Tensor, Tensor, Tensor], Tensor],
    full_rank: Tensor,
    gnorm: Tensor,
    delta: Tensor,
    par: Tensor,
) -> tuple[Tensor, Tensor]:
    """``lmpar``'s safeguarded Newton iteration on ``par``, over the solver's ``step(par)`` (any vector
    whose norm is ``|D x(par)|``) and ``curvature(step, |step|, par)``; returns the last step and ``par``."""
    zero = torch.zeros_like(par)
    y = step(zero)  # Gauss-Newton
    dxnorm = _norm(y)
    fp = dxnorm - delta
    gauss_newton = fp <= 0.1 * delta
    parl = torch.where(full_rank, (fp / delta) / curvature(y, dxnorm, zero), zero).clamp(min=0)
    parl = torch.where(torch.isfinite(parl), parl, zero)
    paru = gnorm / delta
    paru = torch.where(paru == 0, DWARF / delta.clamp(max=0.1), paru)
    par = torch.minimum(torch.maximum(par, parl), paru)
    par = torch.where(par == 0, gnorm / dxnorm.clamp(min=DWARF), par)
    active = ~gauss_newton
    for it in range(1, 11):
        if not bool(active.any()):  # one host sync per Newton step saves the remaining no-op iterations
            break
        par = torch.where(active & (par == 0), torch.clamp(0.001 * paru, min=DWARF), par)
        y = torch.where(active.unsqueeze(-1), step(par), y)
        dxnorm = _norm(y)
        prev_fp, fp = fp, torch.where(active, dxnorm - delta, fp)
        stop = (fp.abs() <= 0.1 * delta) | ((parl == 0) & (fp <= prev_fp) & (prev_fp < 0)) | (it == 10)
        newton = active & ~stop
        parc = (fp / delta) / curvature(y, dxnorm, par)
        parl = torch.where(newton & (fp > 0), torch.maximum(parl, par), parl)
        paru = torch.where(newton & (fp < 0), torch.minimum(paru, par), paru)
        par = torch.where(newton, torch.maximum(parl, par + parc), par)
        active = newton
    return y, torch.where(gauss_newton, zero, par)


FITS_PER_CHUNK = 1024  # CPU: bounds the working set (the Jacobian is 5 kB per fit) for large batches


def fit_gaussians(data: Tensor, extent: Tensor, start: Tensor, max_evals: int = 300) -> tuple[Tensor, Tensor]:
    """Least-squares fit of ``A exp(-((b - x0)^2 + (a - y0)^2) / (2 sigma^2))`` to samples on integer grids.

    Args:
        data: Tensor[M, Ga, Gb] float64; ``data[m, a, b]`` is the sample at ``(a, b)`` for
            ``a < extent[m, 0]`` and ``b < extent[m, 1]``, and 0 elsewhere (ignored).
        extent: Tensor[M, 2] int64 number of real sample rows and columns of each fit.
        start: Tensor[M, 4] initial ``(A, y0, x0, sigma)``.
        max_evals: function-evaluation budget per fit (``maxfev``).

    Returns:
        ``(params, ok)``: Tensor[M, 4] and Tensor[M] bool; ``ok`` is False where ``curve_fit`` would raise
        (budget exhausted, tolerances unreachable, non-finite values).
    """
    step = FITS_PER_CHUNK if data.device.type == "cpu" else data.shape[0]
    if data.shape[0] <= step:
        return _fit(data, extent, start, max_evals)
    chunks = [slice(i, i + step) for i in range(0, data.shape[0], step)]
    parts = [_fit(data[c], extent[c], start[c], max_evals) for c in chunks]
    return torch.cat([p for p, _ in parts]), torch.cat([ok for _, ok in parts])


def _fit(data: Tensor, extent: Tensor, start: Tensor, max_evals: int) -> tuple[Tensor, Tensor]:
    m, n = start.shape
    dev, dt = data.device, data.dtype
    out_x, out_ok = start.clone(), torch.zeros(m, dtype=torch.bool, device=dev)
    idx = torch.arange(m, device=dev)  # fits still in the working set
    ga, gb = data.shape[1:]
    grid = torch.arange(max(ga, gb), dtype=dt, device=dev).view(1, -1)
    valid_a = grid[:, :ga] < extent[:, :1]
    valid_b = grid[:, :gb] < extent[:, 1:]
    data = data.flatten(1)
    x = start.clone()
    fvec = _residuals(x, data, valid_a, valid_b, grid)
    fnorm = _norm(fvec)
    st: dict[str, Tensor] = {
        "x": x,
        "fvec": fvec,
        "fnorm": fnorm,
        "nfev": torch.ones(m, dtype=torch.long, device=dev),
        "first": torch.ones(m, dtype=torch.bool, device=dev),  # before the first Jacobian
        "need_jac": torch.ones(m, dtype=torch.bool, device=dev),
        "iter_one": torch.ones(m, dtype=torch.bool, device=dev),  # lmdif's iter == 1
        "success": torch.zeros(m, dtype=torch.bool, device=dev),
        "failed": ~torch.isfinite(fnorm),
        "diag": torch.ones(m, n, dtype=dt, device=dev),
        "delta": torch.zeros(m, dtype=dt, device=dev),
        "xnorm": torch.zeros(m, dtype=dt, device=dev),
        "par": torch.zeros(m, dtype=dt, device=dev),
        "gnorm": torch.zeros(m, dtype=dt, device=dev),
        "jtj": torch.zeros(m, n, n, dtype=dt, device=dev),
        "jtf": torch.zeros(m, n, dtype=dt, device=dev),
        "data": data,
        "valid_a": valid_a,
        "valid_b": valid_b,
    }
    check_every = 1 if dev.type == "cpu" else 4  # host syncs are free on CPU, not on an accelerator
    for step in range(max_evals):
        if step % check_every == 0:  # stop early, shrink the working set
            active = ~st["success"] & ~st["failed"]
            n_active = int(active.sum())
            if n_active == 0:
                break
            if n_active <= idx.numel() // 2:
                done = ~active
                out_x[idx[done]] = st["x"][done]
                out_ok[idx[done]] = st["success"][done] & ~st["failed"][done]
                idx = idx[active]
                st = {key: value[active] for key, value in st.items()}
        _lmdif_step(st, grid, n, max_evals)
    out_x[idx] = st["x"]
    out_ok[idx] = st["success"] & ~st["failed"]
    return out_x, out_ok & torch.isfinite(out_x).all(-1)


def _lmdif_step(st: dict[str, Tensor], grid: Tensor, n: int, max_evals: int) -> None:
    """One ``lmdif`` inner iteration (preceded by the outer one where a new Jacobian is due), in place."""
    data, valid_a, valid_b = st["data"], st["valid_a"], st["valid_b"]
    x, fvec, fnorm = st["x"], st["fvec"], st["fnorm"]
    m = x.shape[0]
    active = ~st["success"] & ~st["failed"]
    # Outer iteration: forward-difference Jacobian, column norms, scaling, gradient test.
    outer = active & st["need_jac"]
    h = FD_STEP * x.abs()
    h = torch.where(h == 0, FD_STEP, h)
    xp = x.unsqueeze(1).repeat(1, n, 1)  # (M, n, n): row j is x with x_j + h_j
    xp.diagonal(dim1=1, dim2=2).add_(h)
    jac = (_residuals(xp, data, valid_a, valid_b, grid) - fvec.unsqueeze(1)) / h.unsqueeze(-1)  # (M, n, L)
    # Only J^T J and J^T f are kept (a rejected step reuses them): |J p|^2 = p^T J^T J p.
    jtj = torch.where(outer.view(m, 1, 1), jac @ jac.transpose(1, 2), st["jtj"])
    jtf = torch.where(outer.unsqueeze(-1), (jac * fvec.unsqueeze(1)).sum(-1), st["jtf"])
    nfev = st["nfev"] + outer.long() * n
    acnorm = _norm(jac)  # (M, n), used for outer rows only
    init = outer & st["first"]
    diag = torch.where(init.unsqueeze(-1), torch.where(acnorm == 0, torch.ones_like(acnorm), acnorm), st["diag"])
    xnorm = torch.where(init, _norm(diag * x), st["xnorm"])
    delta = torch.where(init, torch.where(xnorm == 0, torch.full_like(xnorm, FACTOR), FACTOR * xnorm), st["delta"])
    g = torch.where(acnorm > 0, (jtf / fnorm.clamp(min=DWARF).unsqueeze(-1)).abs() / acnorm.clamp(min=DWARF), 0.0)
    gnorm = torch.where(outer, torch.where(fnorm > 0, g.amax(-1), torch.zeros_like(fnorm)), st["gnorm"])
    success = st["success"] | (outer & (gnorm <= 0))  # gtol = 0: an exact stationary point
    diag = torch.where(outer.unsqueeze(-1), torch.maximum(diag, acnorm), diag)
    active = active & ~success
    # Inner iteration: trust-region step, trial evaluation, radius update, tests.
    p, new_par = _lmpar(jtj, jtf, diag, delta, st["par"])
    par = torch.where(active, new_par, st["par"])
    pnorm = _norm(diag * p)
    delta = torch.where(active & st["iter_one"], torch.minimum(delta, pnorm), delta)
    trial = x + p
    f1 = _residuals(trial, data, valid_a, valid_b, grid)
    fnorm1 = _norm(f1)
    nfev = nfev + active.long()
    actred = torch.where(0.1 * fnorm1 < fnorm, 1 - (fnorm1 / fnorm) ** 2, torch.full_like(fnorm, -1.0))
    temp1 = (p.unsqueeze(1) @ jtj @ p.unsqueeze(-1)).view(m).clamp(min=0).sqrt() / fnorm
    temp2 = par.sqrt() * pnorm / fnorm
    prered = temp1**2 + temp2**2 / 0.5
    dirder = -(temp1**2 + temp2**2)
    ratio = torch.where(prered != 0, actred / prered, torch.zeros_like(prered))
    shrink = torch.where(actred >= 0, torch.full_like(actred, 0.5), 0.5 * dirder / (dirder + 0.5 * actred))
    shrink = torch.where((0.1 * fnorm1 >= fnorm) | (shrink < 0.1), torch.full_like(shrink, 0.1), shrink)
    low = active & (ratio <= 0.25)
    high = active & ~low & ((par == 0) | (ratio >= 0.75))
    delta = torch.where(low, shrink * torch.minimum(delta, pnorm / 0.1), torch.where(high, pnorm / 0.5, delta))
    par = torch.where(low, par / shrink, torch.where(high, 0.5 * par, par))
    accept = active & (ratio >= 1e-4)
    x = torch.where(accept.unsqueeze(-1), trial, x)
    xnorm = torch.where(accept, _norm(diag * x), xnorm)
    converged = ((actred.abs() <= FTOL) & (prered <= FTOL) & (0.5 * ratio <= 1)) | (delta <= XTOL * xnorm)
    stuck = (
        (nfev >= max_evals)
        | ((actred.abs() <= EPSMCH) & (prered <= EPSMCH) & (0.5 * ratio <= 1))
        | (delta <= EPSMCH * xnorm)
        | (gnorm <= EPSMCH)
        | ~torch.isfinite(fnorm1)
    )
    st.update(
        x=x,
        fvec=torch.where(accept.unsqueeze(-1), f1, fvec),
        fnorm=torch.where(accept, fnorm1, fnorm),
        nfev=nfev,
        first=st["first"] & ~outer,
        need_jac=(st["need_jac"] & ~outer) | accept,
        iter_one=st["iter_one"] & ~accept,
        success=success | (active & converged),
        failed=st["failed"] | (active & ~converged & stuck),
        diag=diag,
        delta=delta,
        xnorm=xnorm,
        par=par,
        gnorm=gnorm,
        jtj=jtj,
        jtf=jtf,
    )
