"""Solvers keep large freed buffers for reuse while they run (glibc), and give them back after."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from psfmap import _memory


def _faults_of_a_fresh_buffer(megabytes: int) -> int:
    """Page faults of making a buffer over glibc's 32 MB mmap ceiling (torch's: NumPy asks
    for huge pages, fewer faults) and freeing it."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.ones(megabytes * 2**18, dtype=torch.float32)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del buffer
    return faults


def _resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as stream:
        return int(stream.read().split()[1]) * resource.getpagesize()


@pytest.mark.skipif(_memory._glibc() is None, reason="needs glibc's mallopt")
def test_freed_buffers_are_reused_inside_the_block_only():
    with _memory.reuse_freed_memory() as active:
        assert active
        with _memory.reuse_freed_memory() as nested:  # nesting keeps the outer block's state
            assert nested
        _faults_of_a_fresh_buffer(64)
        inside = _faults_of_a_fresh_buffer(48)  # fits in the freed 64 MB
        kept = _resident_bytes()
    assert _memory._reuse_depth == 0
    given_back = kept - _resident_bytes()
    assert inside < 1000  # the freed 64 MB came back from the heap: no new pages
    # the block's end hands the freed 64 MB to the kernel (page faults after it are not a
    # measure: later buffers may be carved from the heap's free chunk, by heap layout)
    assert given_back > 48 * 2**20


def test_elsewhere_the_block_changes_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with _memory.reuse_freed_memory() as active:
        assert active is False


def test_the_choice_follows_the_environment_then_the_memory(monkeypatch):
    gb = 2**30
    monkeypatch.setattr(_memory, "available_memory", lambda: 20 * gb)
    monkeypatch.delenv("PSFMAP_REUSE_MEMORY", raising=False)
    assert _memory.worth_reusing(400 * 2**20, 3 * gb)  # 3 GB of 20: reuse
    assert not _memory.worth_reusing(400 * 2**20, 4 * gb)  # more than a sixth: lower peak
    assert not _memory.worth_reusing(16 * 2**20, 1 * gb)  # glibc reuses buffers this small
    assert _memory.worth_reusing(None, 3 * gb)  # a network's activations: no size test
    assert not _memory.worth_reusing(None, 4 * gb)
    monkeypatch.setenv("PSFMAP_REUSE_MEMORY", "0")
    assert not _memory.worth_reusing(400 * 2**20, 3 * gb)
    monkeypatch.setenv("PSFMAP_REUSE_MEMORY", "1")
    assert _memory.worth_reusing(16 * 2**20, 10 * gb)
    monkeypatch.setenv("PSFMAP_REUSE_MEMORY", "yes")
    with pytest.raises(ValueError, match="PSFMAP_REUSE_MEMORY must be 0, 1 or auto"):
        _memory.worth_reusing(400 * 2**20, 3 * gb)


def test_volume_rl_gives_the_same_result_with_reuse(monkeypatch):
    from psfmap.restore import richardson_lucy

    generator = torch.Generator().manual_seed(0)
    volume = torch.rand(6, 12, 12, generator=generator)
    psf = torch.rand(3, 5, 5, generator=generator)
    monkeypatch.setenv("PSFMAP_REUSE_MEMORY", "0")
    plain = richardson_lucy(volume, psf / psf.sum(), iterations=3)
    monkeypatch.setenv("PSFMAP_REUSE_MEMORY", "1")
    reused = richardson_lucy(volume, psf / psf.sum(), iterations=3)
    torch.testing.assert_close(reused, plain, rtol=0, atol=0)
    assert _memory._reuse_depth == 0


def test_deepblur_gives_the_same_result_with_reuse(monkeypatch):
    from psfmap.deepblur import deblur, load_model

    model = load_model("zernike7")
    image = torch.rand(70, 66, generator=torch.Generator().manual_seed(2)).numpy()
    results = []
    for choice in ("0", "1"):
        monkeypatch.setenv("PSFMAP_REUSE_MEMORY", choice)
        results.append(deblur(image, model, model.family.centre))
    assert _memory._reuse_depth == 0  # the block ended with the call
    assert (results[0] == results[1]).all()
