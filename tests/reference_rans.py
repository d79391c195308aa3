"""Slow, obvious pure-Python references for the rANS buffer and the exact multiply.

Python integers, one stream, written straight from DESIGN §1 (with the two-digit
split of large non-power-of-two bases); the kernels must agree bit for bit.
"""
M = 1 << 16
SPLIT = 1 << 12


class RefStream:
    def __init__(self):
        self.x = 1 << 32
        self.words = []

    # one rANS symbol, 2 <= b <= 2**16
    def _freq(self, r, b):
        q, e = divmod(M, b)
        return (q + 1, r * (q + 1)) if r < e else (q, r * q + e)

    def _push1(self, r, b):
        f, c = self._freq(r, b)
        if self.x >= (M * f) << 32:
            w = self.x & 0xFFFFFFFF
            if self.words or w:
                self.words.append(w)
            self.x >>= 32
        self.x = (self.x // f) * M + self.x % f + c
        assert (1 << 32) <= self.x < (1 << 64)

    def _pop1(self, b):
        s = self.x % M
        r = next(r for r in range(b) if self._freq(r, b)[1] <= s < sum(self._freq(r, b)))
        f, c = self._freq(r, b)
        self.x = f * (self.x >> 16) + s - c
        if self.x < (1 << 32):
            self.x = (self.x << 32) | (self.words.pop() if self.words else 0)
        return r

    @staticmethod
    def _digits(b):
        k = (b - 1).bit_length() - 12
        nh = -(-b // (1 << k))
        return k, nh

    def push(self, r, b):
        if b == 1:
            return
        if b <= SPLIT or b & (b - 1) == 0:
            return self._push1(r, b)
        k, nh = self._digits(b)
        hi, lo = divmod(r, 1 << k)
        blo = (1 << k) if hi < nh - 1 else b - (nh - 1) * (1 << k)
        if blo > 1:
            self._push1(lo, blo)
        self._push1(hi, nh)

    def pop(self, b):
        if b == 1:
            return 0
        if b <= SPLIT or b & (b - 1) == 0:
            return self._pop1(b)
        k, nh = self._digits(b)
        hi = self._pop1(nh)
        blo = (1 << k) if hi < nh - 1 else b - (nh - 1) * (1 << k)
        lo = self._pop1(blo) if blo > 1 else 0
        return hi * (1 << k) + lo


def ref_exact_mul(q, n, d, stream):
    """q * n / d with Python ints (floor semantics), digits kept in `stream`."""
    r = q % d
    stream.push(r, d)
    return (q - r) // d * n + stream.pop(n)
