"""Start-up of `mulfree generate` on a packed model: launch to first token, `import mulfree`, RSS.

Targets (issue 13, at idle): first token of the packed 370M <= 1.0 s after launch (wall clock,
`--max-tokens 1`), `import mulfree` <= 0.5 s, peak RSS <= file size + 200 MB.

Method: a packed 370M with random weights (as benchmarks/bench_decode.py makes it: tq1 ternary,
int4 embeddings) and a 32,000-token word-level tokenizer.json are written to a temporary
directory; then each command runs `--runs` times as a fresh process, alternating, and the
median / min / max wall time from launch to exit is printed with the child's peak RSS
(`wait4`). The commands:
- `import mulfree` now, and `import mulfree` followed by `import mulfree.models.mmfree` (the model code) — what
  `import mulfree` used to do (it registered hgrn_bit with transformers at import);
- `mulfree generate --max-tokens 1 --no-energy` on the torch-free engine (`--engine lite`, the
  default for packed models) and on the torch Decoder (`--engine torch`, the path every packed
  model took before: torch and transformers' model code imported, weights copied);
- the default command (energy estimate on, its cached value after the first run), whose own
  "first token" figure (from the call's start) shows the estimate comes after the token.
The load average is printed before and after: on a shared machine absolute numbers move with it.

    python benchmarks/bench_startup.py [--runs 5] [--shape 370M]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_FIRST_TOKEN_S = 1.0
TARGET_IMPORT_S = 0.5
TARGET_RSS_OVER_FILE_MB = 200


def make_model(shape: str, directory: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_decode import random_packed_tensors
    from mulfree.engine.format import WEIGHTS_FILE, write_packed
    from mulfree.models.mmfree import HGRNBitConfig, HGRNBitForCausalLM
    from mulfree.ternary.bitlinear import BitLinear

    config = HGRNBitConfig.from_name(shape)
    with torch.device("meta"):
        meta_model = HGRNBitForCausalLM(config)
    modules = {n: m for n, m in meta_model.named_modules() if isinstance(m, BitLinear)}
    tensors = random_packed_tensors(config, modules, torch.Generator().manual_seed(0), "int4")
    file = directory / WEIGHTS_FILE
    write_packed(file, tensors, config.to_json_string(use_diff=False), "tq1", "int4")
    vocab = {f"w{i}": i for i in range(config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))


def run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds from launch to exit, peak RSS MiB, stderr) of one fresh process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = p.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shape", default="370M")
    ap.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)  # internal: write the model
    args = ap.parse_args()
    if args.make:
        make_model(args.shape, Path(args.make))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # in a child: this process stays small, and a child's peak RSS (wait4) starts from the
        # size of the process it was forked from
        subprocess.run([sys.executable, __file__, "--make", tmp, "--shape", args.shape], check=True)
        file = d / "model.safetensors"
        size_mb = file.stat().st_size / 2**20
        env = dict(os.environ, MULFREE_CACHE=str(d / "cache"))
        script = shutil.which("mulfree")  # the console script users run
        py, exe = sys.executable, [script] if script else [sys.executable, "-m", "mulfree.cli"]
        gen = [*exe, "generate", "--model", str(d), "w1 w2 w3 w4", "--seed", "1"]
        cases = {
            "import mulfree": [py, "-c", "import mulfree"],
            "import mulfree + models (what it used to do)": [py, "-c", "import mulfree, mulfree.models.mmfree"],
            "generate --max-tokens 1, lite engine": [*gen, "--max-tokens", "1", "--no-energy", "--engine", "lite"],
            "generate --max-tokens 1, torch engine (before)": [*gen, "--max-tokens", "1", "--no-energy", "--engine", "torch"],
            "generate --max-tokens 1 (default, energy on)": [*gen, "--max-tokens", "1"],
        }  # fmt: skip
        run(cases["generate --max-tokens 1 (default, energy on)"], env)  # counts + caches energy
        res: dict[str, list] = {k: [] for k in cases}
        for _ in range(args.runs):  # alternating, so drift hits every command alike
            for name, cmd in cases.items():
                res[name].append(run(cmd, env))
    print(f"packed {args.shape}: {size_mb:.1f} MiB file; {args.runs} runs each, alternating\n")
    print("| command | wall median (min-max) s | peak RSS MiB | first token in-process s |")
    print("|---|---|---|---|")
    for name, rows in res.items():
        walls = [w for w, _, _ in rows]
        rss = statistics.median(r for _, r, _ in rows)
        firsts = [
            float(m.group(1)) for *_, e in rows if (m := re.search(r"first token ([\d.]+) s", e))
        ]
        first = f"{statistics.median(firsts):.3f}" if firsts else "-"
        print(f"| {name} | {statistics.median(walls):.3f} ({min(walls):.3f}-{max(walls):.3f}) "
              f"| {rss:.0f} | {first} |")  # fmt: skip
    med = {k: statistics.median(w for w, _, _ in v) for k, v in res.items()}
    lite_rss = statistics.median(r for _, r, _ in res["generate --max-tokens 1, lite engine"])
    ft = med["generate --max-tokens 1, lite engine"]
    print()
    print(f"first token (lite, launch to exit): {ft:.3f} s, target <= {TARGET_FIRST_TOKEN_S} s: "
          f"{'met' if ft <= TARGET_FIRST_TOKEN_S else 'MISSED'}; "
          f"{med['generate --max-tokens 1, torch engine (before)'] / ft:.1f}x faster than the torch engine")  # fmt: skip
    imp = med["import mulfree"]
    print(f"import mulfree: {imp:.3f} s, target <= {TARGET_IMPORT_S} s: "
          f"{'met' if imp <= TARGET_IMPORT_S else 'MISSED'}; "
          f"{med['import mulfree + models (what it used to do)'] / imp:.1f}x faster than importing the models")  # fmt: skip
    over = lite_rss - size_mb
    print(
        f"peak RSS (lite): {lite_rss:.0f} MiB = file + {over:.0f} MiB, target <= file + "
        f"{TARGET_RSS_OVER_FILE_MB} MiB: {'met' if over <= TARGET_RSS_OVER_FILE_MB else 'MISSED'}"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
