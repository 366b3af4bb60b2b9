"""The circuits, in Amaranth HDL: combinational, one component per unit, built from a format.

Each component's ports are plain unsigned bit vectors (`x`, `y` the operands, `acc` an
accumulator input, `z` the result) holding the bit patterns of `mulfree.hw.reference`, which is
each circuit's specification: the tests simulate every circuit against it bit for bit.

- `LMul`: L-Mul's integer form with our IEEE special-value handling (`mulfree.lmul.reference`):
  denormals-are-zero, optional rounding of the operands to k mantissa bits, one integer add,
  flush / overflow / NaN / inf / zero as IEEE multiplication has them.
- `LMulBare`: the paper's bare form (sign xor and one add) without any of that.
- `IEEEMul`: the exact multiplier (significand product, normalize, round-to-nearest-even).
- `FP32Add`: the float32 adder the MACs accumulate with (swap, align with sticky, add/subtract,
  normalize, round-to-nearest-even).
- `MAC`: a multiplier (L-Mul or IEEE) whose product is widened to float32 and added to `acc`.
- `TernaryAcc`: int8 activation, 2-bit weight code (w = code - 1) -> skip / add / subtract into
  an int32 accumulator. `Int8MAC`: acc + a * b, int8 x int8 into int32.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mulfree.hw.reference import CIRCUITS, FP32
from mulfree.lmul.formats import FloatFormat, check_mantissa_bits, lmul_constant


def _as_signed(m: Module, value, width: int, name: str) -> Signal:
    """An unsigned value as a wider signed signal (zero-extended), so that arithmetic on it
    stays signed: Amaranth's unsigned a - b would wrap instead of going negative."""
    s = Signal(signed(width), name=name)
    m.d.comb += s.eq(value)
    return s


class _Unpacked:
    """Sign, magnitude and class flags of one operand, after denormals-are-zero."""

    def __init__(self, m: Module, bits: Signal, f: FloatFormat, name: str):
        self.sign = Signal(name=f"{name}_sign")
        self.mag = Signal(f.bits - 1, name=f"{name}_mag")
        raw = bits[: f.bits - 1]
        exp = raw[f.man_bits :]
        m.d.comb += [
            self.sign.eq(bits[f.bits - 1]),
            self.mag.eq(Mux(exp == 0, 0, raw)),  # zero or subnormal -> zero
        ]
        self.is_zero = self.mag == 0
        if f.has_inf:
            e_ones = self.mag[f.man_bits :] == f.exp_all_ones
            man_zero = self.mag[: f.man_bits] == 0
            self.is_nan = e_ones & ~man_zero
            self.is_inf = e_ones & man_zero
        else:
            self.is_nan = self.mag == (f.nan_bits & (f.sign_mask - 1))
            self.is_inf = Const(0)


def _round_operand(m: Module, op: _Unpacked, f: FloatFormat, k: int, name: str) -> Signal:
    """Magnitude rounded to k mantissa bits (round-to-nearest-even), as
    `mulfree.lmul.reference.round_magnitude` does for finite normal operands."""
    drop = f.man_bits - k
    if drop == 0:
        return op.mag
    out = Signal(f.bits - 1, name=f"{name}_rounded")
    kept = op.mag[drop:]
    rest = op.mag[:drop]
    half = 1 << (drop - 1)
    up = (rest > half) | ((rest == half) & kept[0])
    rounded = Signal(f.bits, name=f"{name}_r")  # one bit more: the carry may pass the largest
    m.d.comb += rounded.eq((kept + up) << drop)
    sat = f.inf_mag if f.has_inf else (f.max_finite_mag >> drop) << drop
    finite = ~op.is_nan & ~op.is_inf & ~op.is_zero
    m.d.comb += out.eq(
        Mux(finite, Mux(rounded > f.max_finite_mag, sat, rounded[: f.bits - 1]), op.mag)
    )
    return out


class _Binary(wiring.Component):
    """Two operands of a format in, one result out."""

    def __init__(self, fmt: FloatFormat, out_bits: int | None = None):
        self.fmt = fmt
        super().__init__({"x": In(fmt.bits), "y": In(fmt.bits), "z": Out(out_bits or fmt.bits)})


class LMul(_Binary):
    """L-Mul, integer form, with IEEE special values (spec: mulfree.lmul.reference.lmul_bits)."""

    def __init__(self, fmt: FloatFormat, mantissa_bits: int | None = None):
        self.k = check_mantissa_bits(fmt, mantissa_bits)
        super().__init__(fmt)

    def elaborate(self, platform) -> Module:
        m, f = Module(), self.fmt
        x, y = _Unpacked(m, self.x, f, "x"), _Unpacked(m, self.y, f, "y")
        ax = _round_operand(m, x, f, self.k, "x")
        ay = _round_operand(m, y, f, self.k, "y")
        # After rounding an operand can have become inf (never NaN or zero).
        x_inf = x.is_inf | (ax == f.inf_mag) if f.has_inf else x.is_inf
        y_inf = y.is_inf | (ay == f.inf_mag) if f.has_inf else y.is_inf
        sign = x.sign ^ y.sign
        c = lmul_constant(f, self.k)
        s = Signal(f.bits, name="sum")  # |x| + |y|: one bit wider than a magnitude
        m.d.comb += s.eq(ax + ay)
        # r = s - c; r < 2^M is below the smallest normal, r > max finite overflows.
        underflow = s < c + (1 << f.man_bits)
        overflow = s > c + f.max_finite_mag
        r = Signal(f.bits - 1, name="r")
        m.d.comb += r.eq(s - c)
        big = f.inf_mag if f.has_inf else f.max_finite_mag
        is_nan = x.is_nan | y.is_nan | (x_inf & y.is_zero) | (y_inf & x.is_zero)
        with m.If(is_nan):
            m.d.comb += self.z.eq(f.nan_bits)
        with m.Elif(x_inf | y_inf):
            m.d.comb += self.z.eq(Cat(Const(f.inf_mag, f.bits - 1), sign))
        with m.Elif(x.is_zero | y.is_zero | underflow):
            m.d.comb += self.z.eq(Cat(Const(0, f.bits - 1), sign))
        with m.Elif(overflow):
            m.d.comb += self.z.eq(Cat(Const(big, f.bits - 1), sign))
        with m.Else():
            m.d.comb += self.z.eq(Cat(r, sign))
        return m


class LMulBare(_Binary):
    """The paper's L-Mul alone: z = sign(x) ^ sign(y) | (|x| + |y| - constant) mod 2^(n-1)."""

    def elaborate(self, platform) -> Module:
        m, f = Module(), self.fmt
        mag = f.bits - 1
        r = Signal(mag, name="r")
        m.d.comb += [
            r.eq(self.x[:mag] + self.y[:mag] + ((1 << mag) - lmul_constant(f))),  # - c, wrapped
            self.z.eq(Cat(r, self.x[mag] ^ self.y[mag])),
        ]
        return m


def _pack(m: Module, f: FloatFormat, sign, exp: Signal, man: Signal, name: str) -> Signal:
    """A rounded result (signed biased exponent `exp`, M-bit mantissa) -> bits of `f`, with the
    flush (exponent <= 0) and overflow (inf, or e4m3fn's saturation) rules."""
    out = Signal(f.bits - 1, name=f"{name}_mag")
    cand = Signal(len(exp) + f.man_bits, name=f"{name}_cand")
    m.d.comb += cand.eq(Cat(man, exp[: len(exp) - 1]))  # the exponent is > 0 where used
    big = f.inf_mag if f.has_inf else f.max_finite_mag
    m.d.comb += out.eq(Mux(exp <= 0, 0, Mux(cand > f.max_finite_mag, big, cand[: f.bits - 1])))
    z = Signal(f.bits, name=f"{name}_bits")
    m.d.comb += z.eq(Cat(out, sign))
    return z


class IEEEMul(_Binary):
    """The exact multiplier, rounded once (spec: mulfree.hw.reference.ieee_mul_bits)."""

    def elaborate(self, platform) -> Module:
        m, f = Module(), self.fmt
        mb = f.man_bits
        x, y = _Unpacked(m, self.x, f, "x"), _Unpacked(m, self.y, f, "y")
        sign = x.sign ^ y.sign
        p = Signal(2 * mb + 2, name="p")  # (1.m)(1.m) in [1, 4) * 2^(2M)
        m.d.comb += p.eq(Cat(x.mag[:mb], 1) * Cat(y.mag[:mb], 1))
        top = p[2 * mb + 1]
        # Keep M+1 significant bits, a guard bit and a sticky bit.
        kept = Signal(mb + 1, name="kept")
        guard = Signal(name="guard")
        sticky = Signal(name="sticky")
        with m.If(top):
            m.d.comb += [kept.eq(p[mb + 1 :]), guard.eq(p[mb]), sticky.eq(p[:mb] != 0)]
        with m.Else():
            m.d.comb += [
                kept.eq(p[mb:]),
                guard.eq(p[mb - 1]) if mb >= 1 else guard.eq(0),
                sticky.eq(p[: mb - 1] != 0) if mb >= 2 else sticky.eq(0),
            ]
        up = guard & (sticky | kept[0])
        rk = Signal(mb + 2, name="rounded")
        m.d.comb += rk.eq(kept + up)
        carry = rk[mb + 1]
        man = Signal(mb, name="man")
        m.d.comb += man.eq(Mux(carry, 0, rk[:mb]))
        ew = f.exp_bits + 3
        ex, ey = _as_signed(m, x.mag[mb:], ew, "ex"), _as_signed(m, y.mag[mb:], ew, "ey")
        exp = Signal(signed(ew), name="exp")
        m.d.comb += exp.eq(ex + ey - f.bias + top + carry)
        packed = _pack(m, f, sign, exp, man, "res")
        is_nan = x.is_nan | y.is_nan | (x.is_inf & y.is_zero) | (y.is_inf & x.is_zero)
        with m.If(is_nan):
            m.d.comb += self.z.eq(f.nan_bits)
        with m.Elif(x.is_inf | y.is_inf):
            m.d.comb += self.z.eq(Cat(Const(f.inf_mag, f.bits - 1), sign))
        with m.Elif(x.is_zero | y.is_zero):
            m.d.comb += self.z.eq(Cat(Const(0, f.bits - 1), sign))
        with m.Else():
            m.d.comb += self.z.eq(packed)
        return m


class FP32Add(wiring.Component):
    """float32 a + b, rounded once (spec: mulfree.hw.reference.fp32_add_bits)."""

    def __init__(self):
        super().__init__({"a": In(32), "b": In(32), "z": Out(32)})

    def elaborate(self, platform) -> Module:
        m, f = Module(), FP32
        a, b = _Unpacked(m, self.a, f, "a"), _Unpacked(m, self.b, f, "b")
        swap = b.mag > a.mag  # the larger magnitude first
        big, small = Signal(31, name="big"), Signal(31, name="small")
        s_big, s_small = Signal(name="s_big"), Signal(name="s_small")
        m.d.comb += [
            big.eq(Mux(swap, b.mag, a.mag)),
            small.eq(Mux(swap, a.mag, b.mag)),
            s_big.eq(Mux(swap, b.sign, a.sign)),
            s_small.eq(Mux(swap, a.sign, b.sign)),
        ]
        e_big, e_small = big[23:], small[23:]
        sig_big = Cat(big[:23], e_big != 0)  # 24 bits, zero for a zero operand
        sig_small = Cat(small[:23], e_small != 0)
        d = Signal(8, name="d")
        m.d.comb += d.eq(Mux(e_big - e_small > 27, 27, e_big - e_small))
        # Align: small's significand with 3 extra low bits (guard, round, sticky); the bits
        # shifted past them are ORed into the sticky bit.
        wide = Signal(51, name="wide")
        m.d.comb += wide.eq(Cat(Const(0, 27), sig_small) >> d)
        aligned = Signal(27, name="aligned")
        m.d.comb += aligned.eq(wide[24:] | (wide[:24] != 0))
        lhs = Cat(Const(0, 3), sig_big)  # 27 bits
        s = Signal(28, name="s")
        with m.If(s_big ^ s_small):
            m.d.comb += s.eq(lhs - aligned)
        with m.Else():
            m.d.comb += s.eq(lhs + aligned)
        # Normalize to a leading one at bit 26 (27 bits), keeping the sticky bit.
        lz = Signal(5, name="lz")
        for i in range(27):  # count leading zeros of s[0:27] (priority: highest bit wins)
            with m.If(s[i]):
                m.d.comb += lz.eq(26 - i)
        norm = Signal(27, name="norm")
        exp = Signal(signed(11), name="exp")
        eb = _as_signed(m, e_big, 11, "eb")
        with m.If(s[27]):
            m.d.comb += [norm.eq(Cat(s[0] | s[1], s[2:28])), exp.eq(eb + 1)]
        with m.Else():
            m.d.comb += [norm.eq(s[:27] << lz), exp.eq(eb - lz)]
        sig = norm[3:]  # 24 bits, leading one at bit 23
        up = norm[2] & ((norm[1] | norm[0]) | sig[0])
        rs = Signal(25, name="rounded")
        m.d.comb += rs.eq(sig + up)
        carry = rs[24]
        man = Signal(23, name="man")
        m.d.comb += man.eq(Mux(carry, 0, rs[:23]))
        exp_r = Signal(signed(11), name="exp_r")
        m.d.comb += exp_r.eq(exp + carry)
        packed = _pack(m, f, s_big, exp_r, man, "res")
        with m.If(a.is_nan | b.is_nan | (a.is_inf & b.is_inf & (a.sign ^ b.sign))):
            m.d.comb += self.z.eq(f.nan_bits)
        with m.Elif(a.is_inf | b.is_inf):
            m.d.comb += self.z.eq(Cat(Const(f.inf_mag, 31), Mux(a.is_inf, a.sign, b.sign)))
        with m.Elif(a.is_zero & b.is_zero):
            m.d.comb += self.z.eq(Cat(Const(0, 31), a.sign & b.sign))
        with m.Elif(s == 0):
            m.d.comb += self.z.eq(0)  # x + (-x) = +0
        with m.Else():
            m.d.comb += self.z.eq(packed)
        return m


def widen(m: Module, bits: Signal, f: FloatFormat, name: str = "wide") -> Signal:
    """float32 bits of a value of `f` (spec: mulfree.hw.reference.widen_bits)."""
    if f.name == "float32":
        return bits
    op = _Unpacked(m, bits, f, name)
    out = Signal(32, name=name)
    exp32 = Signal(8, name=f"{name}_exp")
    m.d.comb += exp32.eq(op.mag[f.man_bits :] + (FP32.bias - f.bias))
    normal = Cat(Const(0, 23 - f.man_bits), op.mag[: f.man_bits], exp32, op.sign)
    with m.If(op.is_nan):
        m.d.comb += out.eq(FP32.nan_bits)
    with m.Elif(op.is_inf):
        m.d.comb += out.eq(Cat(Const(FP32.inf_mag, 31), op.sign))
    with m.Elif(op.is_zero):
        m.d.comb += out.eq(Cat(Const(0, 31), op.sign))
    with m.Else():
        m.d.comb += out.eq(normal)
    return out


class MAC(wiring.Component):
    """One dot-product step: z = float32(mul(x, y)) + acc (spec: reference.mac_bits)."""

    def __init__(self, fmt: FloatFormat, multiplier: str, mantissa_bits: int | None = None):
        if multiplier not in ("lmul", "ieee_mul"):
            raise ValueError(f"multiplier must be 'lmul' or 'ieee_mul', got {multiplier!r}")
        self.fmt, self.multiplier, self.mantissa_bits = fmt, multiplier, mantissa_bits
        super().__init__({"x": In(fmt.bits), "y": In(fmt.bits), "acc": In(32), "z": Out(32)})

    def elaborate(self, platform) -> Module:
        m = Module()
        if self.multiplier == "lmul":
            mul = LMul(self.fmt, self.mantissa_bits)
        else:
            mul = IEEEMul(self.fmt)
        add = FP32Add()
        m.submodules.mul, m.submodules.add = mul, add
        m.d.comb += [mul.x.eq(self.x), mul.y.eq(self.y)]
        m.d.comb += [add.a.eq(widen(m, mul.z, self.fmt)), add.b.eq(self.acc), self.z.eq(add.z)]
        return m


class TernaryAcc(wiring.Component):
    """z = acc + w * act, w = code - 1 in {-1, 0, +1} (code 3 skips), int32 wrapping."""

    def __init__(self):
        super().__init__({"act": In(8), "code": In(2), "acc": In(32), "z": Out(32)})

    def elaborate(self, platform) -> Module:
        m = Module()
        a = self.act.as_signed()
        neg = self.code == 0
        pos = self.code == 2
        # Skip, add or subtract: the operand is act, ~act (with a carry-in of 1) or 0.
        operand = Signal(signed(32), name="operand")
        m.d.comb += operand.eq(Mux(neg, ~a, Mux(pos, a, 0)))
        m.d.comb += self.z.eq(self.acc + operand + neg)
        return m


class Int8MAC(wiring.Component):
    """z = acc + a * b, int8 x int8 into an int32 accumulator (wrapping)."""

    def __init__(self):
        super().__init__({"a": In(8), "b": In(8), "acc": In(32), "z": Out(32)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.d.comb += self.z.eq(self.acc + self.a.as_signed() * self.b.as_signed())
        return m


def build(circuit: str, fmt: FloatFormat | None, mantissa_bits: int | None = None) -> Elaboratable:
    """The component for `circuit` (one of CIRCUITS) in float format `fmt`."""
    if circuit == "lmul":
        return LMul(fmt, mantissa_bits)
    if circuit == "lmul_bare":
        return LMulBare(fmt)
    if circuit == "ieee_mul":
        return IEEEMul(fmt)
    if circuit == "lmul_mac":
        return MAC(fmt, "lmul", mantissa_bits)
    if circuit == "ieee_mac":
        return MAC(fmt, "ieee_mul")
    if circuit == "ternary_acc":
        return TernaryAcc()
    if circuit == "int8_mac":
        return Int8MAC()
    raise ValueError(f"unknown circuit {circuit!r}; known: {', '.join(CIRCUITS)}")


def ports(circuit: str) -> tuple[tuple[str, ...], str]:
    """(input port names in order, output port name) of a circuit."""
    if circuit in ("lmul", "lmul_bare", "ieee_mul"):
        return ("x", "y"), "z"
    if circuit in ("lmul_mac", "ieee_mac"):
        return ("x", "y", "acc"), "z"
    if circuit == "ternary_acc":
        return ("acc", "act", "code"), "z"
    if circuit == "int8_mac":
        return ("acc", "a", "b"), "z"
    raise ValueError(f"unknown circuit {circuit!r}")
