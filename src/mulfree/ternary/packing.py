"""Packed formats for ternary weights (one float scale per tensor, w ≈ q / scale).

A weight q in {-1, 0, +1} is stored as the code c = q + 1 in {0, 1, 2}.

"tq2" — 2 bits per weight, the format the kernels run on. Rows are padded to a multiple of 32
and in-features to a multiple of 16 with code 1 (weight 0). Blocks of 32 rows x 16 inputs
(128 bytes, `mf_tq2_block` in csrc/mf_common.h), ordered [row block][k block]; inside a block,
byte q[u][r] holds inputs 4u..4u+3 of row r as c0 | c1 << 2 | c2 << 4 | c3 << 6. A SIMD byte
lane is therefore one row, and each nibble indexes a 16-entry table of an input pair.

"t81" — an in-memory layout of tq2 for CPUs with AVX-512 VBMI: tq2's padding and one byte per
(row, 4 inputs), but each byte holds its 4 codes as one base-3 number c0 + 3 c1 + 9 c2 + 27 c3
(< 81), so it indexes one 81-entry table of its 4 inputs (vpermi2b; csrc/mf_ternary.c section 5),
and row blocks 2j, 2j + 1 are interleaved into one stream of 64-row blocks (256 bytes: unit u
holds rows 0-31 of block 2j, then rows 0-31 of block 2j + 1), so one 512-bit load is the index
vector of 64 rows; an odd last row block keeps tq2's order. Same size as tq2: `tq2_to_t81` /
`t81_to_tq2` convert (in place when out is the input).

"tq1" — 1.6 bits per weight (5 trits per byte, 3^5 = 243 <= 256): row-major
[N][ceil(K / 5)], byte = sum_i c(5j + i) * 3^i, trailing codes 1. A storage format (files,
transfers); `to_tq2` converts it for the kernels.

The `*_ref` functions are the pure-torch spec; `pack`/`unpack`/`to_tq2` use the compiled core
when it is loaded and the spec otherwise (tests check both give the same bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mulfree import kernels
from mulfree.errors import MulfreeError
from mulfree.kernels import ternary as K_
from mulfree.ternary.quant import weight_quant_ternary

FORMATS = ("tq2", "tq1")  # storage formats (files: engine.format.TERNARY_FORMATS)
LAYOUTS = FORMATS + ("t81",)  # what a PackedTernary may hold in memory; t81 is never stored
TQ2_ROWS = 32  # rows per block (one byte lane per row in a 256-bit register)
TQ2_K = 16  # inputs per block (4 units of 4 inputs)
TQ1_TRITS = 5
_TQ2_CODE_TO_Q = torch.tensor([-1, 0, 1, 0], dtype=torch.int8)  # code 3 is never written


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def packed_nbytes(fmt: str, out_features: int, in_features: int) -> int:
    """Bytes of an [out_features, in_features] weight in format `fmt`."""
    if fmt in ("tq2", "t81"):  # t81: tq2's blocks, bytes re-coded
        return (
            _ceil_div(out_features, TQ2_ROWS)
            * TQ2_ROWS
            * _ceil_div(in_features, TQ2_K)
            * TQ2_K
            // 4
        )
    if fmt == "tq1":
        return out_features * _ceil_div(in_features, TQ1_TRITS)
    raise MulfreeError(f"unknown packed format {fmt!r}; expected one of {LAYOUTS}")


def _check_q(q: torch.Tensor) -> torch.Tensor:
    if q.dim() != 2:
        raise MulfreeError(f"ternary weight must be 2-D [out, in], got shape {tuple(q.shape)}")
    q = q.to(torch.int8).contiguous()
    if q.numel() and (q.min() < -1 or q.max() > 1):
        raise MulfreeError("ternary weight codes must be in {-1, 0, 1}")
    return q


# ---------------------------------------------------------------------------------------------
# Spec (pure torch)
# ---------------------------------------------------------------------------------------------
def pack_tq2_ref(q: torch.Tensor) -> torch.Tensor:
    """q: [N, K] int8 in {-1, 0, 1} -> tq2 bytes [packed_nbytes("tq2", N, K)] uint8."""
    q = _check_q(q)
    N, K = q.shape
    NB, KB = _ceil_div(N, TQ2_ROWS), _ceil_div(K, TQ2_K)
    codes = torch.ones(NB * TQ2_ROWS, KB * TQ2_K, dtype=torch.uint8)  # [Np, Kp], pad = code 1
    codes[:N, :K] = (q + 1).to(torch.uint8)
    codes = codes.view(NB, TQ2_ROWS, KB, TQ2_K // 4, 4)  # [nb, r, kb, u, i]
    codes = codes.permute(0, 2, 3, 1, 4)  # [nb, kb, u, r, i]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    byte = (codes << shifts).sum(dim=-1, dtype=torch.uint8)  # bit fields are disjoint
    return byte.reshape(-1).contiguous()  # [nb * kb * u * r]


def unpack_tq2_ref(data: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """tq2 bytes -> q [out_features, in_features] int8."""
    N, K = out_features, in_features
    NB, KB = _ceil_div(N, TQ2_ROWS), _ceil_div(K, TQ2_K)
    byte = data.view(NB, KB, TQ2_K // 4, TQ2_ROWS, 1)  # [nb, kb, u, r, 1]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    codes = (byte >> shifts) & 3  # [nb, kb, u, r, i]
    codes = codes.permute(0, 3, 1, 2, 4).reshape(NB * TQ2_ROWS, KB * TQ2_K)  # [Np, Kp]
    return _TQ2_CODE_TO_Q[codes[:N, :K].long()]


def _tq2_to_t81_map() -> torch.Tensor:
    """[256] uint8: tq2 byte -> t81 byte (code 3, never packed, read as weight 0 = code 1)."""
    b = torch.arange(256)
    codes = torch.stack([(b >> (2 * i)) & 3 for i in range(4)], dim=-1)  # [256, i]
    codes = torch.where(codes == 3, 1, codes)
    return (codes * torch.tensor([1, 3, 9, 27])).sum(-1).to(torch.uint8)


def _t81_pairs(data: torch.Tensor, n: int, k: int, to_t81: bool) -> torch.Tensor:
    """Interleave (to_t81) or split the pairs of row blocks (2j, 2j + 1) of packed bytes."""
    NB, KB = _ceil_div(n, TQ2_ROWS), _ceil_div(k, TQ2_K)
    P = NB // 2
    head = data[: P * 2 * KB * TQ2_K * TQ2_ROWS // 4]
    units = TQ2_K // 4
    if to_t81:  # tq2 [j, h, kb, u, r] -> t81 [j, kb, u, h, r]
        head = head.view(P, 2, KB, units, TQ2_ROWS).permute(0, 2, 3, 1, 4)
    else:
        head = head.view(P, KB, units, 2, TQ2_ROWS).permute(0, 3, 1, 2, 4)
    return torch.cat([head.reshape(-1), data[head.numel() :]])


def tq2_to_t81_ref(data: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """tq2 bytes of an [n, k] weight -> its t81 bytes (same length)."""
    return _t81_pairs(_tq2_to_t81_map()[data.long()], n, k, to_t81=True)


def t81_to_tq2_ref(data: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """t81 bytes of an [n, k] weight -> tq2 bytes (bytes >= 81, never written, read as four
    zero weights)."""
    v = torch.where(data.long() < 81, data.long(), 40)  # 40 = four codes 1
    codes = torch.stack([(v // 3**i) % 3 for i in range(4)], dim=-1)  # [bytes, i]
    tq2 = (codes << torch.tensor([0, 2, 4, 6])).sum(-1).to(torch.uint8)
    return _t81_pairs(tq2, n, k, to_t81=False)


def pack_tq1_ref(q: torch.Tensor) -> torch.Tensor:
    """q: [N, K] int8 in {-1, 0, 1} -> tq1 bytes [N * ceil(K / 5)] uint8."""
    q = _check_q(q)
    N, K = q.shape
    KB = _ceil_div(K, TQ1_TRITS)
    codes = torch.ones(N, KB * TQ1_TRITS, dtype=torch.int32)  # pad = code 1
    codes[:, :K] = q.to(torch.int32) + 1
    codes = codes.view(N, KB, TQ1_TRITS)  # [n, j, i]
    pow3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)
    return (codes * pow3).sum(dim=-1).to(torch.uint8).reshape(-1)  # [n * j], values < 243


def unpack_tq1_ref(data: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """tq1 bytes -> q [out_features, in_features] int8. Raises on a byte >= 243."""
    N, K = out_features, in_features
    KB = _ceil_div(K, TQ1_TRITS)
    b = data.view(N, KB, 1).to(torch.int32)  # [n, j, 1]
    if b.numel() and int(b.max()) >= 243:
        raise MulfreeError("corrupt tq1 data: byte value >= 243")
    pow3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)
    codes = (b // pow3) % 3  # [n, j, i]
    return (codes.view(N, KB * TQ1_TRITS)[:, :K] - 1).to(torch.int8)


# ---------------------------------------------------------------------------------------------
# Fast paths (compiled core when loaded, else the spec)
# ---------------------------------------------------------------------------------------------
def _use_c() -> bool:
    return kernels.resolve_isa() != kernels.TORCH


def pack(q: torch.Tensor, fmt: str = "tq2") -> torch.Tensor:
    """q: [N, K] int8 in {-1, 0, 1} -> packed bytes of format `fmt`."""
    q = _check_q(q)
    if fmt == "t81":
        tq2 = pack(q, "tq2")
        return K_.tq2_to_t81(tq2, *q.shape, out=tq2) if _use_c() else tq2_to_t81_ref(tq2, *q.shape)
    nbytes = packed_nbytes(fmt, *q.shape)
    if not _use_c():
        return pack_tq2_ref(q) if fmt == "tq2" else pack_tq1_ref(q)
    return K_.tq2_pack(q, nbytes) if fmt == "tq2" else K_.tq1_pack(q, nbytes)


def _check_data(data: torch.Tensor, fmt: str, n: int, k: int) -> torch.Tensor:
    want = packed_nbytes(fmt, n, k)
    if data.dtype != torch.uint8 or data.numel() != want:
        raise MulfreeError(
            f"{fmt} data for a [{n}, {k}] weight must be {want} uint8 bytes, "
            f"got {data.numel()} {data.dtype}"
        )
    return data.reshape(-1).contiguous()


def unpack(data: torch.Tensor, fmt: str, out_features: int, in_features: int) -> torch.Tensor:
    """Packed bytes of format `fmt` -> q [out_features, in_features] int8."""
    data = _check_data(data, fmt, out_features, in_features)
    if fmt == "t81":
        return unpack(t81_to_tq2(data, out_features, in_features), "tq2", out_features, in_features)
    if not _use_c():
        ref = unpack_tq2_ref if fmt == "tq2" else unpack_tq1_ref
        return ref(data, out_features, in_features)
    if fmt == "tq2":
        return K_.tq2_unpack(data, out_features, in_features)
    q, bad = K_.tq1_unpack(data, out_features, in_features)
    if bad:
        raise MulfreeError(f"corrupt tq1 data: {bad} byte(s) >= 243")
    return q


def tq1_to_tq2(data: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """tq1 bytes -> tq2 bytes of the same weight."""
    data = _check_data(data, "tq1", out_features, in_features)
    if not _use_c():
        return pack_tq2_ref(unpack_tq1_ref(data, out_features, in_features))
    nbytes = packed_nbytes("tq2", out_features, in_features)
    out, bad = K_.tq1_to_tq2(data, out_features, in_features, nbytes)
    if bad:
        raise MulfreeError(f"corrupt tq1 data: {bad} byte(s) >= 243")
    return out


def recode_(data: torch.Tensor, src: str, dst: str, out_features: int, in_features: int) -> torch.Tensor:
    """Re-code packed bytes in place between the in-memory layouts tq2 and t81 (same size,
    same weight); returns `data`. A noop when src == dst."""
    if src == dst:
        return data
    if (src, dst) == ("tq2", "t81"):
        _check_data(data, "tq2", out_features, in_features)
        if _use_c():
            K_.tq2_to_t81(data, out_features, in_features, out=data)
        else:
            data.copy_(tq2_to_t81_ref(data, out_features, in_features))
        return data
    if (src, dst) == ("t81", "tq2"):
        return data.copy_(t81_to_tq2(data, out_features, in_features))
    raise MulfreeError(f"cannot re-code {src} as {dst} in place (tq2 <-> t81 only)")


def t81_to_tq2(data: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """t81 bytes -> tq2 bytes of the same weight (raises on bytes >= 81, which no packer
    writes)."""
    data = _check_data(data, "t81", out_features, in_features)
    if not _use_c():
        if data.numel() and int(data.max()) >= 81:
            raise MulfreeError("corrupt t81 data: byte(s) >= 81")
        return t81_to_tq2_ref(data, out_features, in_features)
    out, bad = K_.t81_to_tq2(data, out_features, in_features)
    if bad:
        raise MulfreeError(f"corrupt t81 data: {bad} byte(s) >= 81")
    return out


@dataclass
class PackedTernary:
    """A packed ternary weight [out_features, in_features]: w ≈ unpack(data) / scale."""

    data: torch.Tensor  # uint8 [packed_nbytes(format, out_features, in_features)]
    scale: torch.Tensor  # float32 0-d
    out_features: int
    in_features: int
    format: str = "tq2"
    _q_cache: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.format not in LAYOUTS:
            raise MulfreeError(f"unknown packed format {self.format!r}; expected one of {LAYOUTS}")
        self.data = _check_data(self.data, self.format, self.out_features, self.in_features)
        self.scale = torch.as_tensor(self.scale, dtype=torch.float32).reshape(())
        # read once: a PackedTernary is immutable (PackedTernaryLinear rebuilds its view when
        # its buffers change)
        self.scale_value = float(self.scale)

    @classmethod
    def from_float(cls, weight: torch.Tensor, fmt: str = "tq2") -> PackedTernary:
        """Quantize a float weight [N, K] with BitLinear's rule (quant.weight_quant_ternary)."""
        if weight.dim() != 2:
            raise MulfreeError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
        q, scale = weight_quant_ternary(weight.detach())
        return cls.from_int(q, scale, fmt)

    @classmethod
    def from_int(
        cls, q: torch.Tensor, scale: torch.Tensor | float, fmt: str = "tq2"
    ) -> PackedTernary:
        """Pack integer codes q [N, K] in {-1, 0, 1} with their scale (w ≈ q / scale)."""
        q = _check_q(q)
        return cls(pack(q, fmt), torch.as_tensor(scale), q.shape[0], q.shape[1], fmt)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / max(1, self.out_features * self.in_features)

    def unpack(self) -> torch.Tensor:
        """q [out_features, in_features] int8."""
        return unpack(self.data, self.format, self.out_features, self.in_features)

    def to_format(self, fmt: str) -> PackedTernary:
        """The same weight in another format."""
        if fmt == self.format:
            return self
        n, k = self.out_features, self.in_features
        if self.format == "tq1" and fmt == "tq2":
            return PackedTernary(tq1_to_tq2(self.data, n, k), self.scale, n, k, "tq2")
        if (self.format, fmt) == ("tq2", "t81"):  # kernels.ternary.tq2_to_t81
            data = K_.tq2_to_t81(self.data, n, k) if _use_c() else tq2_to_t81_ref(self.data, n, k)
            return PackedTernary(data, self.scale, n, k, "t81")
        if (self.format, fmt) == ("t81", "tq2"):
            return PackedTernary(t81_to_tq2(self.data, n, k), self.scale, n, k, "tq2")
        return PackedTernary.from_int(self.unpack(), self.scale, fmt)

    def dequantize(self) -> torch.Tensor:
        """w [out_features, in_features] float32 = q / scale (BitLinear's weight_fake_quant)."""
        return self.unpack().float() / self.scale

    def q_float(self) -> torch.Tensor:
        """q as float32 [N, K], cached (used by the pure-torch path)."""
        if self._q_cache is None:
            self._q_cache = self.unpack().float()
        return self._q_cache


def fuse_rows(parts: list[PackedTernary]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tq2 (or t81) weights that share an input (q/k/v, gate/up) into one weight.

    Returns (data, row_scales): the bytes of the [sum N_i, K] weight in the parts' layout and
    float32 [sum N_i] with each part's tensor scale on its rows, for
    `mulfree.kernels.ternary.tq2_linear(..., row_scales=row_scales)` (t81_linear for t81): one
    pass (one table build, one thread fork) for all parts, whose outputs are the column slices
    of y. Row-block aligned: every N_i must be a multiple of 32 (tq2: row blocks are contiguous,
    [nb][kb] order) or of 64 (t81: whole pairs of row blocks, [pair][kb] order).
    """
    if not parts:
        raise MulfreeError("fuse_rows: no weights given")
    k, lay = parts[0].in_features, parts[0].format
    rows = TQ2_ROWS if lay == "tq2" else 2 * TQ2_ROWS
    for p in parts:
        if p.format not in ("tq2", "t81") or p.format != lay:
            raise MulfreeError(f"fuse_rows: expected tq2 or t81 weights in one layout, got {p.format}")
        if p.in_features != k:
            raise MulfreeError(f"fuse_rows: in_features differ ({p.in_features} != {k})")
        if p.out_features % rows:
            raise MulfreeError(
                f"fuse_rows: out_features {p.out_features} is not a multiple of {rows} ({lay})"
            )
    data = torch.cat([p.data for p in parts])
    return data, stacked_row_scales(parts)


def stacked_row_scales(parts: list[PackedTernary]) -> torch.Tensor:
    """float32 [sum N_i]: each part's tensor scale on its rows (the `row_scales` of the stacked
    weight of `fuse_rows`, or of parts that already lie back to back in memory)."""
    return torch.cat([p.scale.expand(p.out_features) for p in parts]).contiguous()
