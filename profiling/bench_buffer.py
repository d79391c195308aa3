"""Throughput and compression of the exact multiply on the rANS information buffer.

Measures exact_mul followed by exact_div (one element-operation = one element
multiplied or divided) on S streams x K elements:

* from Python: ``rt.exact_mul`` / ``rt.exact_div`` calls (validation included);
* inside a kernel: an ``@njit`` loop calling the same element routine inline,
  the way the reversible cells use it;

and the compression: held bits (4 bytes per stored word, states excluded)
over information bits (sum of log2(d/n)) after a long run.

Usage: python profiling/bench_buffer.py [--streams 32] [--elements 256] [--reps 200]
"""
import argparse
import time

import numpy as np
from numba import njit

import revtrain as rt
from revtrain._kernels.exact import mul_ratio_elem


@njit(cache=True, _nrt=False)
def _mul_then_div_in_kernel(q, n, d, states, counts, words, reps):
    """reps x (multiply every element by n/d, then undo it in reverse order)."""
    S, K = q.shape
    for _ in range(reps):
        for k in range(K):
            for s in range(S):
                q[s, k] = mul_ratio_elem(q[s, k], n[s, k], d, states, counts, words, s)
        for k in range(K - 1, -1, -1):
            for s in range(S):
                q[s, k] = mul_ratio_elem(q[s, k], d, n[s, k], states, counts, words, s)


def _best_of(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(S, K, reps, d, scalar, rng):
    q = rng.integers(-2**40, 2**40, size=(S, K))
    q0 = q.copy()
    lo = d // 8
    n_arr = rng.integers(max(lo, 1), d + 1, size=(S, K))
    n_scalar = int(rng.integers(max(lo, 1), d + 1))
    buf = rt.InfoBuffer(S)
    ops = 2 * S * K * reps

    n_py = n_scalar if scalar else n_arr

    def python_calls():
        for _ in range(reps):
            rt.exact_mul(q, n_py, d, buf)
            rt.exact_div(q, n_py, d, buf)

    python_calls()  # compile
    t_py = _best_of(python_calls)
    assert (q == q0).all() and buf.is_empty()

    n_k = np.full((S, K), n_scalar, dtype=np.int64) if scalar else n_arr
    buf.reserve(K + 2)

    def in_kernel():
        _mul_then_div_in_kernel(q, n_k, d, buf.states, buf.counts, buf.words, reps)

    in_kernel()
    t_k = _best_of(in_kernel)
    assert (q == q0).all() and buf.is_empty()
    return ops / t_py, ops / t_k


def compression(S, K, steps, d, rng):
    """Held bits vs information after `steps` rounds of ``q = q * n/d + noise``.

    Each round multiplies the S x K fixed-point values by random factors n/d
    in [1/8, 1] and adds fresh N(0, 1) increments (as a recurrent or SGD step
    does), so the remainders pushed are not a degenerate fixed point.
    Returns (multiplies per stream, held bits, information bits).
    """
    q = rt.to_fixed(rng.standard_normal((S, K)))
    buf = rt.InfoBuffer(S)
    lo = max(d // 8, 1)
    for _ in range(steps):
        rt.exact_mul(q, rng.integers(lo, d + 1, size=(S, K)), d, buf)
        q += rt.to_fixed(rng.standard_normal((S, K)))
    held = 32 * int(buf.counts.sum())
    return steps * K, held, buf.info_bits


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--elements", type=int, default=256)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--steps", type=int, default=1000, help="rounds of 100 multiplies per stream (compression)")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    S, K = a.streams, a.elements
    print(f"exact_mul + exact_div, {S} streams x {K} elements, {a.reps} round trips, best of 5\n")
    print("| ratio n/d | n | from Python (M elem-ops/s) | inside a kernel (M elem-ops/s) |")
    print("|---|---|---:|---:|")
    for d, scalar, label in [(1 << 16, True, "n/2^16"), (1 << 16, False, "n/2^16"),
                             (40000, True, "n/40000"), (40000, False, "n/40000")]:
        py, kern = bench(S, K, a.reps, d, scalar, rng)
        print(f"| {label} | {'scalar' if scalar else 'per element'} | {py/1e6:.1f} | {kern/1e6:.1f} |")
    print(f"\ncompression: q = q * n/d + N(0,1) noise, n/d random in [1/8, 1], {S} streams x 100 "
          f"values, {a.steps} rounds; held bits = 32 x stored words (the 64-bit states excluded)")
    print("| d | multiplies per stream | held bits | info bits | held / info | (held - 64 S) / info |")
    print("|---|---:|---:|---:|---:|---:|")
    for d in (1 << 16, 1 << 12, 40000, 1000, 8):
        m, held, info = compression(S, 100, a.steps, d, rng)
        print(f"| {d} | {m} | {held} | {info:.0f} | {held/info:.4f} | {(held-64*S)/info:.4f} |")


if __name__ == "__main__":
    main()
