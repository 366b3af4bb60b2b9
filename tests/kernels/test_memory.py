"""The huge-page weight arena (mulfree.kernels.memory)."""

from __future__ import annotations

import gc

import pytest
import torch
from safetensors.torch import load_file, save_file

from mulfree.kernels import memory


def test_arena_ranges_alignment_and_bounds():
    arena = memory.Arena(5000)
    a, b = arena.tensor(0, 100), arena.tensor(128, 4872)
    assert a.dtype == torch.uint8 and a.numel() == 100 and b.numel() == 4872
    assert a.data_ptr() % memory.HUGE_PAGE == 0  # the arena starts on a 2 MiB page
    assert b.data_ptr() - a.data_ptr() == 128
    a.fill_(7)
    b.fill_(9)
    assert int(arena.tensor(99, 30)[0]) == 7 and int(arena.tensor(99, 30)[29]) == 9
    assert arena.tensor(5000, 0).numel() == 0
    for off, n in [(-1, 4), (4990, 11), (0, 5001)]:
        with pytest.raises(ValueError, match="outside an arena"):
            arena.tensor(off, n)
    with pytest.raises(ValueError, match=">= 0"):
        memory.Arena(-1)


def test_copy_to_arena_keeps_values_dtypes_shapes_and_outlives_the_arena(tmp_path):
    src = [
        torch.randint(0, 256, (1000,), dtype=torch.uint8),
        torch.randn(3, 5),
        torch.zeros(0, 4),
        torch.randn(7).to(torch.bfloat16),
    ]
    arena, copies = memory.copy_to_arena(src)
    for s, c in zip(src, copies, strict=True):
        assert c.dtype == s.dtype and c.shape == s.shape
        torch.testing.assert_close(c, s, atol=0, rtol=0)
        assert c.numel() == 0 or c.data_ptr() % memory.ALIGN == 0
    # back to back, each start aligned: 1000 -> 1024, then 60 bytes -> 64
    assert copies[1].data_ptr() - copies[0].data_ptr() == 1024
    assert copies[3].data_ptr() - copies[1].data_ptr() == 64
    # each its own storage: safetensors does not refuse them as shared tensors
    save_file({"a": copies[0], "b": copies[1], "d": copies[3]}, str(tmp_path / "w.safetensors"))
    back = load_file(str(tmp_path / "w.safetensors"))
    torch.testing.assert_close(back["b"], src[1], atol=0, rtol=0)
    del arena
    gc.collect()
    torch.testing.assert_close(copies[1] + 0, src[1], atol=0, rtol=0)  # memory still mapped
    with pytest.raises(ValueError, match="contiguous CPU"):
        memory.copy_to_arena([torch.randn(4, 4).t()])


@pytest.mark.parametrize(
    "text, mode",
    [
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never\n", "always"),
        ("always madvise [never]\n", "never"),
        ("garbage\n", "unavailable"),
        (None, "unavailable"),
    ],
)
def test_thp_mode_parses_the_kernel_setting(tmp_path, monkeypatch, text, mode):
    f = tmp_path / "enabled"
    if text is not None:
        f.write_text(text)
    monkeypatch.setattr(memory, "_THP", f)
    assert memory.thp_mode() == mode
    if mode in ("never", "unavailable"):
        assert not memory.Arena(10).huge  # ordinary pages, same behaviour
