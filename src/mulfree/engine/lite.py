"""The packed engine without torch: what `mulfree generate` runs on a packed model, for a fast start.

`import torch` alone takes 1-2 s on a small machine, and the transformers model code several
more, while decoding a packed model needs neither: its weights are bytes for the compiled
kernels, its state a few float32 rows. `LiteModel.load(path)` reads a packed file with
safetensors' NumPy reader (memory-mapped), puts the ternary weights in one arena on 2 MiB pages
as tq2 (`mulfree.kernels.memory`, converting tq1 on the way; re-coded in place as t81 where
the dispatcher measured that layout faster, `LiteModel.load(..., layout=)`), and `LiteDecoder` runs the very
plan of compiled calls that `mulfree.engine.decode.Decoder` runs (the same `fused_plan`, the
same buffers, the same order), on NumPy buffers: its logits equal the torch Decoder's fused
step bit for bit (tests/engine/test_lite.py). The prompt is fed token by token (the recurrent
state is all there is; its projections run as batched kernel calls over the prompt, with the
same bits), the tokenizer is the `tokenizers` library's on tokenizer.json, and the
sampler `sample` is the NumPy twin of `mulfree.engine.sampler.sample_torch` (equal tokens for equal
logits and uniform draws).

Only the exact (non-L-Mul) model with the compiled core runs here; anything else — and every
other use (training, HF generate, serve, energy counting) — runs the torch path. The spec of
every stage stays the torch Decoder (`fused=False`) and, above it, the PyTorch model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mulfree import tensorfile
from mulfree.engine import plan as P
from mulfree.engine.header import model_family, weights_file
from mulfree.errors import MulfreeError

BITLINEAR_NORM_EPS = 1e-8  # = mulfree.ternary.bitlinear.BITLINEAR_NORM_EPS (tested)
INT4_GROUP = 32


def _core():
    try:
        from mulfree import _C
    except ImportError as e:
        raise MulfreeError(f"the compiled core is not available ({e})") from None
    return _C


def _intermediate(cfg: dict) -> int:
    """The GLU width (mulfree.models.mmfree.configuration_mmfree.mlp_intermediate_size)."""
    if cfg.get("intermediate_size") is not None:
        return int(cfg["intermediate_size"])
    ratio = 4 if cfg.get("hidden_ratio") is None else cfg["hidden_ratio"]
    size = int(cfg["hidden_size"] * ratio * 2 / 3)
    return 256 * ((size + 256 - 1) // 256)


def tq2_nbytes(n: int, k: int) -> int:
    """mulfree.ternary.packing.packed_nbytes("tq2", n, k): 32-row blocks of 16 inputs, 4 per byte."""
    return -(-n // 32) * -(-k // 16) * 32 * 4


def tq1_nbytes(n: int, k: int) -> int:
    """mulfree.ternary.packing.packed_nbytes("tq1", n, k): 5 trits per byte along each row."""
    return n * -(-k // 5)


@dataclass
class Projection:
    """One ternary projection: packed bytes (in the arena), its scale and its input norm."""

    data: np.ndarray  # uint8, tq2 or t81 (`layout`)
    scale: float
    out_features: int
    in_features: int
    norm_w: np.ndarray  # float32 [in_features]: the BitLinear's RMSNorm weight
    layout: str = "tq2"  # the arena's bytes: "tq2" as in the file, or "t81" (re-coded in place)


@dataclass
class LiteLayer:
    """One block's weights as read from the file (`_layer` makes the decode plan's P.Layer)."""

    prefix: str  # "model.layers.<i>"
    attn_norm: np.ndarray  # float32 [d]
    g_norm: np.ndarray  # float32 [E]
    mlp_norm: np.ndarray  # float32 [d]
    lb: np.ndarray | None  # the layer's forget-gate lower bound [E] (None: layer 0 / unused)
    one_minus_lb: np.ndarray | None
    i_proj: Projection
    f_proj: Projection
    g_proj: Projection
    o_proj: Projection
    gate_proj: Projection
    down_proj: Projection


class LiteModel:
    """A packed hgrn_bit model as NumPy arrays (see the module docstring)."""

    def __init__(self, config: dict, tensors: dict[str, np.ndarray], ternary_format: str,
                 embedding_format: str, path: Path, isa: str | None = None,
                 layout: str = "auto"):  # fmt: skip
        self.config, self.path = config, path
        self.embedding_format = embedding_format
        d, L = int(config["hidden_size"]), int(config["num_hidden_layers"])
        E = int(d * config.get("expand_ratio", 1))
        inter, V = _intermediate(config), int(config["vocab_size"])
        self.hidden, self.expand, self.inter, self.vocab, self.n_layers = d, E, inter, V, L
        self.eps = float(config.get("rms_norm_eps", 1e-6))
        shapes = {"i_proj": (E, d), "f_proj": (E, d), "g_proj": (E, d), "o_proj": (d, E),
                  "gate_proj": (2 * inter, d), "down_proj": (d, inter)}  # fmt: skip

        def norm(key: str, n: int) -> np.ndarray:
            t = tensors.get(key)
            if t is None or t.shape != (n,) or t.dtype != np.float32:
                raise MulfreeError(f"{path}: tensor {key} missing or not float32 [{n}]")
            return np.ascontiguousarray(t)

        names = []  # (prefix, n, k) in module order: i/f/g adjacent, as place_weights_ lays them
        for i in range(L):
            for sub, proj in (("attn", "i_proj"), ("attn", "f_proj"), ("attn", "g_proj"),
                              ("attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "down_proj")):  # fmt: skip
                names.append((f"model.layers.{i}.{sub}.{proj}", *shapes[proj]))
        names.append(("lm_head", V, d))
        sizes = [tq2_nbytes(n, k) for _, n, k in names]
        from mulfree.kernels.memory import ALIGN, Arena

        offsets, total = [], 0
        for s in sizes:
            offsets.append(total)
            total += -(-s // ALIGN) * ALIGN
        self.arena = Arena(total)
        C = _core()
        self.proj: dict[str, Projection] = {}
        self.offsets = {}  # prefix -> byte offset of its tq2 weight in the arena
        for (prefix, n, k), off, size in zip(names, offsets, sizes, strict=True):
            src = tensors.get(f"{prefix}.weight_packed")
            want = tq2_nbytes(n, k) if ternary_format == "tq2" else tq1_nbytes(n, k)
            if src is None or src.dtype != np.uint8 or src.shape != (want,):
                raise MulfreeError(f"{path}: tensor {prefix}.weight_packed missing or not uint8 "
                                   f"[{want}] ({ternary_format} of {n}x{k})")  # fmt: skip
            dst = np.frombuffer(self.arena.buffer(off, size), dtype=np.uint8)
            if ternary_format == "tq2":
                dst[:] = src
            else:
                src = np.ascontiguousarray(src)
                bad = C.tq1_to_tq2(src.ctypes.data, n, k, dst.ctypes.data)
                if bad:
                    raise MulfreeError(
                        f"{path}: corrupt tq1 data in {prefix}: {bad} byte(s) >= 243"
                    )
            scale = tensors.get(f"{prefix}.weight_scale")
            if scale is None or scale.shape != () or scale.dtype != np.float32:
                raise MulfreeError(
                    f"{path}: tensor {prefix}.weight_scale missing or not a float32 scalar"
                )
            self.offsets[prefix] = off
            self.proj[prefix] = Projection(
                dst, float(scale), n, k, norm(f"{prefix}.norm.weight", k)
            )
        self.layers: list[LiteLayer] = []
        lbs = None
        if config.get("use_lower_bound", True):
            lb = tensors.get("model.lower_bounds")
            if lb is None or lb.shape != (L, d):
                raise MulfreeError(f"{path}: tensor model.lower_bounds missing or not [{L}, {d}]")
            lbs = P.lower_bounds(lb)
        for i in range(L):
            pre = f"model.layers.{i}"
            self.layers.append(LiteLayer(
                prefix=pre,
                attn_norm=norm(f"{pre}.attn_norm.weight", d),
                g_norm=norm(f"{pre}.attn.g_norm.weight", E),
                mlp_norm=norm(f"{pre}.mlp_norm.weight", d),
                lb=lbs[i] if lbs is not None and i > 0 else None,
                one_minus_lb=(np.float32(1) - lbs[i]) if lbs is not None and i > 0 else None,
                **{p: self.proj[f"{pre}.{'attn' if p in ('i_proj', 'f_proj', 'g_proj', 'o_proj') else 'mlp'}.{p}"]
                   for p in shapes},
            ))  # fmt: skip
        self.layouts = self._lay_out(C, layout, isa)
        self.final_norm = norm("model.norm.weight", d)
        self.head = self.proj["lm_head"]
        self.embed = embedding_lookup(tensors, embedding_format, V, d, path)
        self.embed_table = embedding_table(tensors, embedding_format, V, d)  # None: NumPy only

    def _lay_out(self, C, layout: str, isa: str | None) -> dict[str, int]:
        """Re-code the arena's tq2 weights as t81 in place where that layout is chosen
        (`layout`: "auto" = mulfree.kernels.dispatch.weight_layout per input width for kernels
        run at `isa`, or "tq2" / "t81" for all); the same bytes, so no memory is added. i/f/g
        stay tq2 unless E is a multiple of 64: t81 interleaves pairs of 32-row blocks, and the
        fused i|f|g call reads the three as one weight. Returns layout -> projections."""
        counts = {"tq2": 0, "t81": 0}
        items = list(self.proj.items())
        lays = P.choose_layouts([(n, p.out_features, p.in_features) for n, p in items], layout, isa)
        for (_, p), lay in zip(items, lays, strict=True):
            if lay == "t81":
                C.tq2_to_t81(p.data.ctypes.data, p.out_features, p.in_features, p.data.ctypes.data)
            p.layout = lay
            counts[lay] += 1
        return counts

    @property
    def has_t81(self) -> bool:
        return any(p.layout == "t81" for p in self.proj.values())

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True, isa: str | None = None,
             layout: str = "auto") -> LiteModel:  # fmt: skip
        """Read a packed file (or DIR/model.safetensors); one-line MulfreeError on any problem.
        `layout`: the in-memory form of the ternary weights ("auto": t81 where the dispatcher
        measured it faster for kernels at `isa`, tq2 elsewhere; or "tq2" / "t81")."""
        from mulfree._bounds import check_shape
        from mulfree._memory import check_fits_memory
        from mulfree.engine.header import check_against_config, check_identity, config_metadata

        file = weights_file(path)
        meta, specs = tensorfile.read_header(file)
        check_identity(meta, file, verify=verify)
        if model_family(meta, file) != "hgrn_bit":
            raise MulfreeError(f"{file} is a packed {meta['model_family']} model; the torch-free "
                               "engine runs hgrn_bit models (use --engine torch)")  # fmt: skip
        config = config_metadata(meta, file)
        try:
            check_shape(config)  # every shape field bounded, before anything is sized from it
        except MulfreeError as e:
            raise MulfreeError(f"{file}: bad config: {e}") from None
        check_against_config(config, {k: shape for k, (shape, _) in specs.items()}, file)
        check_fits_memory(file.stat().st_size, f"loading {file}")
        tensors = tensorfile.read_tensors(file, numpy=True)
        if verify:
            tensorfile.check_tensors_crc(tensors, meta, file)
        for name in sorted(tensors):  # NaN/inf weights would decode nothing but one token
            t = tensors[name]
            if t.dtype.kind == "f" and t.size and not bool(np.isfinite(t).all()):
                raise MulfreeError(f"{file}: tensor {name} holds non-finite values (NaN or inf)")
        tfmt, efmt = meta.get("ternary_format"), meta.get("embedding_format")
        if tfmt not in ("tq1", "tq2"):
            raise MulfreeError(f"{file}: unknown ternary_format {tfmt!r}")
        return cls(config, tensors, tfmt, efmt, file, isa=isa, layout=layout)

    @property
    def exact(self) -> bool:
        """False for the multiplication-free (L-Mul elementwise) model, which needs torch."""
        return self.config.get("elementwise_mul", "exact") == "exact"


def eos_ids(model: LiteModel, tokenizer, directory: Path) -> set[int]:
    """End-of-text ids: the config's, generation_config.json's and tokenizer_config.json's
    eos_token (what the torch path collects from the model and the HF tokenizer)."""
    ids: set[int] = set()

    def add(v):
        if isinstance(v, int) and not isinstance(v, bool):
            ids.add(v)
        elif isinstance(v, list):
            for x in v:
                add(x)

    add(model.config.get("eos_token_id"))
    for name, key in (("generation_config.json", "eos_token_id"), ("tokenizer_config.json", None)):
        try:
            data = json.loads((Path(directory) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if key:
            add(data.get(key))
        else:
            tok = data.get("eos_token")
            tok = tok.get("content") if isinstance(tok, dict) else tok
            if isinstance(tok, str) and tokenizer.token_to_id(tok) is not None:
                ids.add(tokenizer.token_to_id(tok))
    return ids


def step_energy(file: Path, table: str | None = None):
    """The estimated energy of one decode step of this packed file (Decoder.step_energy).

    The estimate depends only on the model (shapes, nonzero weights) and the table, so it is
    counted once, on the torch path, and kept in $MULFREE_CACHE/energy/ keyed by the file's
    path, size and modification time, the table and mulfree's version: later runs read it
    back instead of importing torch."""
    import hashlib

    from mulfree import __version__
    from mulfree.data.corpora import default_cache_dir
    from mulfree.engine.plan import StepEnergy

    st = file.stat()
    key = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{table or ''}|{__version__}"
    cache = default_cache_dir() / "energy" / (hashlib.sha1(key.encode()).hexdigest() + ".json")
    try:
        return StepEnergy(**json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        pass  # not counted yet (or an unreadable entry: count again)
    from mulfree.engine.model import load_packed

    model = load_packed(file)
    bos = model.config.bos_token_id
    e = model.fused_decoder().step_energy([bos if bos is not None else 0], table)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(e.__dict__), encoding="utf-8")
        tmp.replace(cache)
    except OSError:
        pass  # a read-only cache only costs the count next time
    return e


def embedding_lookup(tensors, fmt: str, V: int, d: int, path):
    """A function ids -> float32 rows [B, d], the lookup of Int8/Int4Embedding or nn.Embedding
    in NumPy (the same rows, bit for bit), from the file's tensors (NumPy arrays by name)."""
    if fmt == "int8":
        q, step = tensors["model.embeddings.weight_int8"], tensors["model.embeddings.weight_step"]
        return lambda ids: q[ids].astype(np.float32) * step[ids][:, None]
    if fmt == "int4":
        codes, step = (
            tensors["model.embeddings.weight_int4"],
            tensors["model.embeddings.weight_step"],
        )

        def rows(ids):
            c = codes[ids]  # [B, G * 16]
            q = np.stack((c & 15, c >> 4), axis=-1).reshape(len(ids), -1).astype(np.float32) - 8
            q = q.reshape(len(ids), step.shape[1], INT4_GROUP) * step[ids][..., None]
            return q.reshape(len(ids), -1)[:, :d]

        return rows
    w = tensors.get("model.embeddings.weight")
    if w is None or w.shape != (V, d):
        raise MulfreeError(f"{path}: tensor model.embeddings.weight missing or not [{V}, {d}]")
    if w.dtype == np.float32:
        return lambda ids: w[ids]
    if w.dtype == np.float16:
        return lambda ids: w[ids].astype(np.float32)
    raise MulfreeError(f"{path}: {fmt} embeddings need the torch path")


def embedding_table(tensors, fmt: str, V: int, d: int) -> P.Embedding | None:
    """The table of `embedding_lookup` as the decode plan's compiled lookup reads it (the same
    rows, bit for bit: tests/kernels/test_plan.py), or None for a format or memory layout it
    does not read (float16, bfloat16, a non-contiguous array): those steps look up in NumPy."""
    step = tensors.get("model.embeddings.weight_step")
    if fmt == "int8":
        table, code, shapes = tensors.get("model.embeddings.weight_int8"), P.EMBED_INT8, ((V, d), (V,))
    elif fmt == "int4":
        g = -(-d // INT4_GROUP)
        table, code = tensors.get("model.embeddings.weight_int4"), P.EMBED_INT4
        shapes = ((V, 16 * g), (V, g))
    else:
        table, step, code = tensors.get("model.embeddings.weight"), None, P.EMBED_F32
        shapes = ((V, d), None)
    dtypes = {P.EMBED_F32: np.float32, P.EMBED_INT8: np.int8, P.EMBED_INT4: np.uint8}
    if not isinstance(table, np.ndarray) or table.dtype != dtypes[code] or table.shape != shapes[0]:
        return None
    if step is not None and (not isinstance(step, np.ndarray) or step.dtype != np.float32
                             or step.shape != shapes[1] or not step.flags.c_contiguous):  # fmt: skip
        return None
    if not table.flags.c_contiguous:
        return None
    return P.Embedding(code, table, step, V, d)


class LiteDecoder:
    """Batch-1 decoding of a LiteModel: `prefill(ids)` then `step(token)` -> logits [vocab].

    A thin face over the torch-free core (`mulfree.engine.core`): one slot of a SlotDecoder
    whose family plan is the hgrn_bit fused step, the same core the torch Decoder runs."""

    def __init__(self, model: LiteModel, threads: int | None = None, isa: str | None = None):
        from mulfree.engine.core import HGRNFusedPlan, HGRNWeights, SlotDecoder

        self.m = model
        # the levels the torch Decoder would run: isa= > MULFREE_ISA > the dispatcher's measured
        # choice per family (cached on disk; measuring, once per CPU and build, imports torch)
        from mulfree import kernels

        if threads is None:  # torch's default too: one per core this process may run on
            threads = kernels.dispatch.usable_cores()
        self.threads = int(threads) or os.cpu_count() or 1

        self.isas = {f: kernels.resolve_isa(isa, f)
                     for f in (kernels.TERNARY_B1, kernels.TERNARY_BATCH, kernels.DECODE_STAGES)}  # fmt: skip
        m = model
        self.layers = [_layer(m, L) for L in m.layers]
        self.head = _linear(m.head)
        self._tq2_copies = None
        route = P.t81_route(kernels.resolve_isa(isa), m.has_t81)
        if route == "kernel":  # calls on t81 weights run at the level `isa` resolves to
            self.isas["t81"] = kernels.resolve_isa(isa)
        elif route == "copies":
            self.layers, self.head, self._tq2_copies = P.tq2_layers(_core(), self.layers, self.head)
        w = HGRNWeights(self.layers, m.final_norm, self.head, m.embed, m.hidden, m.expand,
                        m.inter, m.vocab, m.eps, BITLINEAR_NORM_EPS, m.embed_table)  # fmt: skip
        self.plan = HGRNFusedPlan(_core(), w, self.threads, self.isas)
        self.core = SlotDecoder(self.plan)
        self.slot = self.core.alloc()

    @property
    def fused_ifg(self) -> bool:
        """True when every layer runs its i/f/g projections as one kernel call."""
        return all(layer.ifg is not None for layer in self.layers)

    @property
    def states(self) -> list[np.ndarray]:
        """Per layer the recurrent state [1, E] (views of the core's arena)."""
        return [s[self.slot : self.slot + 1] for s in self.plan.states]

    def reset(self) -> None:
        self.plan.clear(self.slot)

    def step(self, token: int) -> np.ndarray:
        """Feed one token; logits [vocab] (a buffer the next step overwrites)."""
        return self.core.step([self.slot], [token])[0]

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Run a prompt from a zero state (batched kernels; the same bits as stepping it one
        token at a time); logits of its last token [vocab] (a buffer)."""
        return self.core.prefill(self.slot, ids)


def _linear(p: Projection) -> P.Linear:
    return P.Linear(p.norm_w, p.data, p.out_features, p.in_features, p.scale, None, p.layout)


def _layer(m: LiteModel, L: LiteLayer) -> P.Layer:
    """One block's typed decode weights; i/f/g as one call when their norms are equal and the
    arena holds them back to back (a view, as the torch Decoder's `adjacent_weights`)."""
    ifg = (L.i_proj, L.f_proj, L.g_proj)
    at = [m.offsets[f"{L.prefix}.attn.{p}"] for p in ("i_proj", "f_proj", "g_proj")]
    ifg_ok = (all(np.array_equal(p.norm_w, L.i_proj.norm_w) for p in ifg)
              and all(p.out_features % 32 == 0 for p in ifg)  # whole row blocks
              and all(p.layout == L.i_proj.layout for p in ifg)  # (t81: whole block pairs)
              and at[1] == at[0] + L.i_proj.data.size
              and at[2] == at[1] + L.f_proj.data.size)  # fmt: skip
    fused = None
    if ifg_ok:
        i = L.i_proj
        n = 3 * i.out_features
        data = np.frombuffer(m.arena.buffer(at[0], tq2_nbytes(n, i.in_features)), np.uint8)
        rs = np.concatenate([np.full(p.out_features, p.scale, np.float32) for p in ifg])
        fused = P.Linear(i.norm_w, data, n, i.in_features, 1.0, rs, i.layout)
    return P.Layer(attn_norm=L.attn_norm, ifg=fused, i=_linear(L.i_proj), f=_linear(L.f_proj),
                   g=_linear(L.g_proj), lb=L.lb, one_minus_lb=L.one_minus_lb, g_norm=L.g_norm,
                   g_eps=m.eps, o=_linear(L.o_proj), mlp_norm=L.mlp_norm,
                   gate=_linear(L.gate_proj), down=_linear(L.down_proj))  # fmt: skip
