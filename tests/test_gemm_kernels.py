"""The vector product kernel (revtrain._kernels.gemm_vec) against an exact reference, both dtypes.

Element ``out[i, j]`` is documented as the chain of fused multiply-adds
``acc = fma(A[i, k], W[k, j], acc)`` over ``k`` ascending from ``acc = 0``,
each rounded once (to float32, or float64). The reference computes every fma
exactly with fractions and rounds it to the nearest value (ties to even), so
the kernels must agree bit for bit, whatever the block an element falls in
(4x64, 4x16, scalar columns, a short last row block).
"""
from fractions import Fraction

import numpy as np
import pytest

from revtrain._kernels.gemm import matmul_rows, matmul_rows_t
from revtrain._kernels.gemm_nt import matmul_vec_t
from revtrain._kernels.gemm_vec import matmul_vec, rows_matmul_add, tn_add, add_column_sums


def round_f32(x):
    """The float32 nearest the fraction ``x`` (ties to even)."""
    f = np.float32(float(x))
    cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - x),
                                     int(np.array(c, dtype=np.float32).view(np.uint32)) & 1))


def fma_chain_reference(A, W):
    """``out[i, j]``: ``acc = round32(A[i, k] * W[k, j] + acc)`` for k ascending, from 0."""
    M, K = A.shape
    N = W.shape[1]
    Af = [[Fraction(float(v)) for v in row] for row in A]
    Wf = [[Fraction(float(v)) for v in row] for row in W]
    out = np.empty((M, N), dtype=np.float32)
    for i in range(M):
        for j in range(N):
            acc = Fraction(0)
            for k in range(K):
                acc = Fraction(float(round_f32(Af[i][k] * Wf[k][j] + acc)))
            out[i, j] = np.float32(float(acc))
    return out


def separate_rounding_chain(A, W):
    """The same chain with ``a * b`` rounded to float32 before the add (no fma)."""
    out = np.zeros((A.shape[0], W.shape[1]), dtype=np.float32)
    for k in range(A.shape[1]):
        out = (A[:, k:k + 1] * W[k:k + 1, :]).astype(np.float32) + out
    return out


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (4, 7, 64), (5, 9, 65), (3, 16, 80),
                                   (6, 33, 17), (13, 5, 130)])
def test_matmul_f32_is_the_fma_chain(M, K, N):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    A = rng.standard_normal((M, K)).astype(np.float32)
    W = rng.standard_normal((K, N)).astype(np.float32)
    out = np.full((M, N), np.nan, dtype=np.float32)
    matmul_vec(A, W, out)
    assert np.array_equal(out, fma_chain_reference(A, W))


def test_fma_chain_differs_from_separate_roundings():
    """Negative control: the reference is sensitive to the rounding of each step (rounding
    ``a * b`` first gives other bits), so agreement above is not a tautology."""
    rng = np.random.default_rng(7)
    A = rng.standard_normal((4, 33)).astype(np.float32)
    W = rng.standard_normal((33, 64)).astype(np.float32)
    ref = fma_chain_reference(A, W)
    assert not np.array_equal(ref, separate_rounding_chain(A, W))
    out = np.empty_like(ref)
    matmul_vec(A, W, out)
    assert not np.array_equal(out, separate_rounding_chain(A, W))


def test_rows_do_not_depend_on_the_other_rows():
    """Each row alone (and any row block) gives the bits it has inside a larger product."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((23, 40)).astype(np.float32)
    W = rng.standard_normal((40, 150)).astype(np.float32)
    out = np.empty((23, 150), dtype=np.float32)
    matmul_vec(A, W, out)
    for r0, r1 in [(0, 1), (5, 6), (22, 23), (3, 10), (16, 23)]:
        part = np.empty((r1 - r0, 150), dtype=np.float32)
        matmul_vec(np.ascontiguousarray(A[r0:r1]), W, part)
        assert np.array_equal(part, out[r0:r1])


def test_matmul_rows_reads_a_transposed_view_as_its_copy():
    """``matmul_rows(A, W.T)`` (a view) gives the bits of ``W.T``'s C-contiguous copy."""
    rng = np.random.default_rng(4)
    A = rng.standard_normal((16, 80)).astype(np.float32)
    W = rng.standard_normal((48, 80)).astype(np.float32)
    via_view, via_copy = np.empty((16, 48), np.float32), np.empty((16, 48), np.float32)
    matmul_rows(A, W.T, via_view)
    matmul_vec(A, np.ascontiguousarray(W.T), via_copy)
    assert np.array_equal(via_view, via_copy)
    assert np.allclose(via_view, A.astype(np.float64) @ W.T.astype(np.float64), rtol=1e-5,
                       atol=1e-4)


def fma_chain_reference_f64(A, W):
    """As :func:`fma_chain_reference`, rounding each fma to float64 (``float(Fraction)`` is
    correctly rounded)."""
    M, K = A.shape
    N = W.shape[1]
    out = np.empty((M, N))
    for i in range(M):
        for j in range(N):
            acc = Fraction(0)
            for k in range(K):
                acc = Fraction(float(Fraction(float(A[i, k])) * Fraction(float(W[k, j])) + acc))
            out[i, j] = float(acc)
    return out


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (4, 7, 32), (5, 9, 41), (3, 16, 8), (13, 5, 70)])
def test_matmul_f64_is_the_fma_chain(M, K, N):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    A, W = rng.standard_normal((M, K)), rng.standard_normal((K, N))
    out = np.full((M, N), np.nan)
    matmul_vec(A, W, out)
    assert np.array_equal(out, fma_chain_reference_f64(A, W))
    via_rows = np.empty_like(out)
    matmul_rows(A, np.ascontiguousarray(W.T).T, via_rows)       # a transposed view: copied
    assert np.array_equal(via_rows, out)


def test_empty_and_complex_fallback():
    out = np.empty((0, 5), dtype=np.float32)
    matmul_vec(np.empty((0, 3), np.float32), np.ones((3, 5), np.float32), out)
    A = np.arange(6.0).reshape(2, 3) * (1 + 1j)
    W = np.arange(12.0).reshape(3, 4) + 0j
    o = np.empty((2, 4), dtype=complex)
    matmul_rows(A, W, o)                                         # complex: BLAS
    assert np.array_equal(o, A @ W)


def test_mismatched_shapes_are_an_error():
    """float32 products check shapes as BLAS does for float64 (no silent or out-of-bounds use)."""
    f = np.float32
    with pytest.raises(ValueError, match="do not match"):
        matmul_rows(np.ones((2, 3), f), np.ones((4, 5), f), np.empty((2, 5), f))
    with pytest.raises(ValueError, match="do not match"):
        matmul_rows(np.ones((4, 3), f), np.ones((3, 64), f), np.empty((2, 64), f))
    with pytest.raises(ValueError, match="do not match"):
        matmul_vec(np.ones((4, 3), f), np.ones((3, 64), f), np.empty((4, 65), f))
    with pytest.raises(ValueError, match="do not match"):
        matmul_rows(np.ones((2, 3)), np.ones((4, 5)), np.empty((2, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_matmul_add_accumulates_the_chain_from_the_old_value(dtype):
    """``from_zero=False`` continues each element's chain from its old value (the MDRNN's
    ``C += A @ W``), in place on a row range, also with ``C`` and ``A`` the same array."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((7, 9)).astype(dtype)
    W = rng.standard_normal((9, 70)).astype(dtype)
    C0 = rng.standard_normal((10, 70)).astype(dtype)
    C = C0.copy()
    rows_matmul_add(C, 2, A, 1, 5, W, False)
    assert np.array_equal(C[:2], C0[:2]) and np.array_equal(C[7:], C0[7:])
    ref = fma_chain_reference if dtype == np.float32 else fma_chain_reference_f64
    # the chain from C0's value: prepend a column of ones in A and C0's rows in W
    A1 = np.concatenate([np.ones((5, 1), dtype), A[1:6]], axis=1)
    for i in range(5):
        Wi = np.concatenate([C0[2 + i:3 + i], W], axis=0)
        assert np.array_equal(C[2 + i], ref(A1[i:i + 1], Wi)[0])
    both = np.zeros((10, 9), dtype)
    both[:4] = A[:4]
    W2 = rng.standard_normal((9, 9)).astype(dtype)
    rows_matmul_add(both, 5, both, 0, 4, W2, True)
    expect = np.empty((4, 9), dtype)
    matmul_vec(np.ascontiguousarray(A[:4]), W2, expect)
    assert np.array_equal(both[5:9], expect)


def tn_chain_reference(C0, A, W, n, w0):
    """``C[i, j]``: ``acc = round(A[k, i] * W[k, w0 + j] + acc)`` for ``k < n`` ascending,
    from ``acc = C0[i, j]``, each fma rounded once to ``C0``'s dtype (exact fractions)."""
    M, N = C0.shape
    f32 = C0.dtype == np.float32
    out = np.empty_like(C0)
    for i in range(M):
        for j in range(N):
            acc = Fraction(float(C0[i, j]))
            for k in range(n):
                exact = Fraction(float(A[k, i])) * Fraction(float(W[k, w0 + j])) + acc
                acc = Fraction(float(round_f32(exact) if f32 else float(exact)))
            out[i, j] = float(acc)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,N,R,n,w0", [(1, 1, 1, 1, 0), (4, 64, 9, 9, 0), (5, 37, 7, 5, 3),
                                         (6, 70, 4, 4, 10), (3, 17, 6, 0, 2)])
def test_tn_add_is_the_fma_chain_from_the_old_value(dtype, M, N, R, n, w0):
    """A chunk's weight gradient ``C += A[:n].T @ W[:n, w0:w0+N]``: in place, each element
    the fma chain over the rows from its old value, whatever block it falls in."""
    rng = np.random.default_rng(M * 100 + N + n)
    C0 = rng.standard_normal((M, N)).astype(dtype)
    A = rng.standard_normal((R, M)).astype(dtype)
    W = rng.standard_normal((R, w0 + N + 2)).astype(dtype)
    C = C0.copy()
    tn_add(C, A, W, n, w0)
    assert np.array_equal(C, tn_chain_reference(C0, A, W, n, w0))
    if n and dtype == np.float32:          # and it is the product (float64 rounded once: close)
        plain = (C0.astype(np.float64) + A[:n].astype(np.float64).T @ W[:n, w0:w0 + N]).astype(dtype)
        assert np.allclose(C, plain, rtol=1e-5, atol=1e-5)


def test_add_column_sums_adds_rows_in_order():
    rng = np.random.default_rng(8)
    A = rng.standard_normal((9, 12)).astype(np.float32)
    c0 = rng.standard_normal(5).astype(np.float32)
    c = c0.copy()
    add_column_sums(c, A, 7, 4)
    ref = c0.copy()
    for k in range(7):
        ref = (ref + A[k, 4:9]).astype(np.float32)
    assert np.array_equal(c, ref)


def test_tn_add_and_column_sums_check_their_shapes():
    f = np.float32
    with pytest.raises(ValueError, match="do not match"):
        tn_add(np.zeros((3, 4), f), np.zeros((5, 2), f), np.zeros((5, 4), f), 5, 0)
    with pytest.raises(ValueError, match="do not match"):
        tn_add(np.zeros((3, 4), f), np.zeros((5, 3), f), np.zeros((5, 4), f), 5, 1)
    with pytest.raises(ValueError, match="do not match"):
        tn_add(np.zeros((3, 4), f), np.zeros((5, 3), f), np.zeros((5, 4), f), 6, 0)
    with pytest.raises(ValueError, match="do not match"):
        add_column_sums(np.zeros(4, f), np.zeros((5, 4), f), 5, 1)


# ------------------------------------------------- A @ W.T with W read in place (gemm_nt)

def dot_lanes_reference(A, W):
    """``out[r, i]`` in the order of :mod:`revtrain._kernels.gemm_nt`: lane ``j`` of ``L``
    (16 float32, 8 float64) chains ``fma(A[r, k], W[i, k], .)`` over ``k = j, j+L, ..`` below
    ``K - K % L``; the lanes are added in the tree (lane ``j + n/2`` onto lane ``j``); the
    last ``K % L`` columns chain onto that sum. Every operation exact, then rounded."""
    f32 = A.dtype == np.float32
    L = 16 if f32 else 8

    def rnd(x):
        return Fraction(float(round_f32(x))) if f32 else Fraction(float(x))
    M, K = A.shape
    N = W.shape[0]
    Kv = K - K % L
    Af = [[Fraction(float(v)) for v in row] for row in A]
    Wf = [[Fraction(float(v)) for v in row] for row in W]
    out = np.empty((M, N), dtype=A.dtype)
    for r in range(M):
        for i in range(N):
            acc = [Fraction(0)] * L
            for k in range(Kv):
                acc[k % L] = rnd(Af[r][k] * Wf[i][k] + acc[k % L])
            while len(acc) > 1:
                h = len(acc) // 2
                acc = [rnd(acc[j] + acc[j + h]) for j in range(h)]
            s = acc[0]
            for k in range(Kv, K):
                s = rnd(Af[r][k] * Wf[i][k] + s)
            out[r, i] = float(s)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 70, 11), (4, 40, 13), (5, 19, 9),
                                   (9, 33, 17), (8, 64, 8)])
def test_matmul_t_is_the_lane_order(dtype, M, K, N):
    """Every block (4x4, 1x8, single elements, the tail columns) gives the documented bits."""
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    A = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((N, K)).astype(dtype)
    out = np.full((M, N), np.nan, dtype=dtype)
    matmul_vec_t(A, W, out)
    assert np.array_equal(out, dot_lanes_reference(A, W))
    via_rows = np.full_like(out, np.nan)
    matmul_rows_t(A, W, via_rows)
    assert np.array_equal(via_rows, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_t_rows_do_not_depend_on_the_other_rows(dtype):
    """A row alone, or any block of rows, gives the bits it has in a larger product (the
    window kernels' row groups and the per-step reference agree)."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((23, 150)).astype(dtype)
    W = rng.standard_normal((37, 150)).astype(dtype)
    out = np.empty((23, 37), dtype=dtype)
    matmul_rows_t(A, W, out)
    for r0, r1 in [(0, 1), (5, 6), (22, 23), (3, 10), (16, 23)]:
        part = np.empty((r1 - r0, 37), dtype=dtype)
        matmul_rows_t(np.ascontiguousarray(A[r0:r1]), W, part)
        assert np.array_equal(part, out[r0:r1])
    assert np.allclose(out, A.astype(np.float64) @ W.T.astype(np.float64),
                       rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)


def test_matmul_t_order_is_not_the_single_chain():
    """Negative control: the lane order gives other bits than one chain over ``k`` (the
    order of a transposed copy through ``matmul_vec``), so the test above can fail."""
    rng = np.random.default_rng(9)
    A = rng.standard_normal((4, 64)).astype(np.float32)
    W = rng.standard_normal((16, 64)).astype(np.float32)
    lanes_out = np.empty((4, 16), np.float32)
    matmul_vec_t(A, W, lanes_out)
    chain = np.empty((4, 16), np.float32)
    matmul_vec(A, np.ascontiguousarray(W.T), chain)
    assert not np.array_equal(lanes_out, chain)
    assert np.array_equal(chain, fma_chain_reference(A, np.ascontiguousarray(W.T)))


def test_matmul_t_complex_and_shape_errors():
    """complex128 runs through BLAS on ``W.T`` (the complex step); mismatched shapes raise."""
    rng = np.random.default_rng(2)
    A = rng.standard_normal((20, 6)) + 1j * rng.standard_normal((20, 6))
    W = rng.standard_normal((5, 6)) + 1j * rng.standard_normal((5, 6))
    out = np.empty((20, 5), dtype=np.complex128)
    matmul_rows_t(A, W, out)
    assert np.allclose(out, A @ W.T)
    with pytest.raises(ValueError, match="matmul_t"):
        matmul_vec_t(np.ones((2, 3)), np.ones((4, 5)), np.empty((2, 4)))
