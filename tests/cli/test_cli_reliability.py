"""Reliability of the CLI (issue 18): exit codes per command, unwritable outputs, temporary
files of dead writers, one-line warnings and errors, negative images and PSFs, saturation,
allocation failures, ``deconvolve --tile``."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from psfmap._container import atomic_write, deferred_writes, sweep_stale_temps
from psfmap.cli import main
from psfmap.io import read_image, write_image
from psfmap.operators import Convolution
from psfmap.psf import gaussian
from psfmap.restore import richardson_lucy


@pytest.fixture
def files(tmp_path, rng):
    """A small blurred image, its PSF, and an empty output folder."""
    truth = np.ones((48, 56), dtype=np.float32)
    truth[rng.integers(4, 44, 8), rng.integers(4, 52, 8)] = 60.0
    psf = gaussian(9, 1.3).numpy()
    blurred = Convolution(psf)(torch.from_numpy(truth)).numpy().clip(0, None)
    image = tmp_path / "image.tif"
    write_image(image, blurred)
    psf_path = tmp_path / "psf.tif"
    tifffile.imwrite(psf_path, psf)
    out = tmp_path / "out"
    out.mkdir()
    return {"image": image, "psf": psf_path, "blurred": blurred, "psf_array": psf,
            "out": out, "tmp": tmp_path}


@pytest.fixture
def read_only():
    """Make a folder or file refuse writes, for real. Root (these tests' usual user) ignores
    permission bits, so as root the immutable attribute is set (``chattr +i``: refused even
    for root, on ext4/xfs/btrfs); as another user, mode 0o555/0o444 is enough."""
    changed: list[tuple[Path, int | None]] = []

    def make(path: Path) -> Path:
        if os.geteuid() != 0:
            changed.append((path, path.stat().st_mode))
            path.chmod(0o555 if path.is_dir() else 0o444)
            return path
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot make {path} immutable here ({done.stderr.decode().strip()})")
        changed.append((path, None))
        return path

    yield make
    for path, mode in reversed(changed):
        if mode is None:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        else:
            path.chmod(mode)


def deconvolve_args(files, *extra):
    return ["deconvolve", str(files["image"]), "--psf", str(files["psf"]), "--iterations",
            "3", *extra]


# -- defect 2: read-only outputs ------------------------------------------------------------


def test_a_read_only_folder_is_refused_before_any_work(files, read_only, capsys, monkeypatch):
    import psfmap.restore as restore

    def must_not_run(*args, **kwargs):
        raise AssertionError("the restoration ran although the output cannot be written")

    monkeypatch.setattr(restore, "richardson_lucy", must_not_run)
    read_only(files["out"])
    out = files["out"] / "restored.tif"
    assert main(deconvolve_args(files, "-o", str(out))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "is not writable" in err[0] and str(files["out"]) in err[0]
    assert list(files["out"].iterdir()) == []


def test_a_read_only_existing_output_is_not_replaced(files, read_only, capsys):
    out = files["out"] / "restored.tif"
    out.write_bytes(b"precious")
    read_only(out)
    assert main(deconvolve_args(files, "-o", str(out))) == 2
    err = capsys.readouterr().err.strip()
    assert "exists and is read-only" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == b"precious"


def test_atomic_write_failure_is_one_sentence_without_a_chained_traceback(files, read_only):
    folder = read_only(files["out"])
    with pytest.raises(OSError) as caught:
        atomic_write(folder / "x.psfmap", lambda tmp: tmp.write_bytes(b"data"))
    message = str(caught.value)
    assert message.startswith(f"cannot write {str(folder / 'x.psfmap')!r}")
    assert caught.value.__suppress_context__ and caught.value.__cause__ is None
    # a failure inside write(): the temporary file is removed, the reason kept in one line
    folder_ok = files["tmp"]

    def failing(tmp: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        atomic_write(folder_ok / "y.psfmap", failing)
    assert not list(folder_ok.glob(".y.psfmap.*"))


# -- defect 3: temporary files of dead writers -----------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_stale_temp_files_of_dead_writers_are_swept_live_ones_kept(files, capsys):
    out = files["out"] / "restored.tif"
    stale = files["out"] / f".restored.tif.{_dead_pid()}.abcd1234.tmp"
    live = files["out"] / f".restored.tif.{os.getppid()}.abcd1234.tmp"  # pytest's parent
    foreign = files["out"] / ".other.tif.1.abcd1234.tmp"  # not one of this run's outputs
    for path in (stale, live, foreign):
        path.write_bytes(b"partial")
    assert main(deconvolve_args(files, "-o", str(out))) == 0
    assert not stale.exists() and live.exists() and foreign.exists()
    assert read_image(out)[0].shape == files["blurred"].shape
    # the Python writer sweeps too
    stale.write_bytes(b"partial")
    assert sweep_stale_temps(out) == [stale]


def test_deferred_writes_keep_every_file_or_none(tmp_path):
    with pytest.raises(RuntimeError), deferred_writes() as group:
        atomic_write(tmp_path / "a.bin", lambda t: t.write_bytes(b"a"))
        assert not group.committing and not (tmp_path / "a.bin").exists()
        raise RuntimeError("failed after the first write")
    assert list(tmp_path.iterdir()) == []
    with deferred_writes() as group:
        atomic_write(tmp_path / "a.bin", lambda t: t.write_bytes(b"a"))
        atomic_write(tmp_path / "b.bin", lambda t: t.write_bytes(b"b"))
    assert group.committing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


# -- exit codes: every bad option value is a usage error (2), per command ---------------------

BAD_VALUES = {
    "simulate": [["--photons", "nan"], ["--quantum-efficiency", "2"], ["--read-noise", "-1"],
                 ["--seed", "-1"], ["--offset", "inf"]],
    "deconvolve": [["--tv", "nan"], ["--background", "-1"], ["--background", "nan"],
                   ["--offset", "-1"], ["--tol", "0"], ["--tile", "8"],
                   ["--tile", "64", "--overlap", "-1"], ["--overlap", "8"], ["--iterations", "0"]],
    "calibrate": [["--threshold", "0"], ["--eigen", "0"], ["--psf-sigma", "nan"],
                  ["--smoothing", "-1"], ["--psf-size", "4"]],
    "identify": [["--threshold", "nan"]],
    "estimate": [["--median", "-1"], ["--window", "0"], ["--grid", "0x3"]],
    "deblur": [["--tv", "nan"], ["--tile", "8"], ["--energy", "2"], ["--iterations", "0"]],
    "depth": [["--z-start", "inf"]],
    "train": [["--seed", "-1"], ["--minutes", "nan"]],
    "demo": [["--seed", "-1"]],
}


def _command_line(command: str, files, bad: list[str]) -> list[str]:
    image, out = str(files["image"]), files["out"]
    base = {
        "simulate": ["simulate", image, "-o", str(out / "o.tif")],
        "deconvolve": ["deconvolve", image, "--psf", str(files["psf"]), "-o", str(out / "o.tif")],
        "calibrate": ["calibrate", image, "-o", str(out / "o.psfmap")],
        "identify": ["identify", image, "--family", str(files["tmp"] / "f.psfmap"),
                     "-o", str(out / "o.psfmap")],
        "estimate": ["estimate", image, "--save-map", str(out / "o.psfmap")],
        "deblur": ["deblur", image, "-o", str(out / "o.tif")],
        "depth": ["depth", image, "-o", str(out / "o.tif")],
        "train": ["train", "--model", "gaussian1", "-o", str(out / "o.pt")],
        "demo": ["demo", "-o", str(out / "demo")],
    }[command]
    return [*base, *bad]


@pytest.mark.parametrize(
    ("command", "bad"), [(c, b) for c, values in BAD_VALUES.items() for b in values],
    ids=[f"{c}{' '.join(b)}" for c, values in BAD_VALUES.items() for b in values],
)
def test_every_bad_option_value_is_a_usage_error(command, bad, files, capsys):
    assert main(_command_line(command, files, bad)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"psfmap {command}: usage error: "), err
    flag = bad[-2] if bad[-2].startswith("--") else bad[0]
    assert flag in err[0] or bad[0] in err[0]
    assert list(files["out"].iterdir()) == []


@pytest.mark.parametrize("command", ["simulate", "deconvolve", "estimate", "deblur", "depth"])
def test_a_missing_input_is_an_error_one_line(command, files, capsys):
    files["image"] = files["tmp"] / "missing.tif"
    assert main(_command_line(command, files, [])) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"psfmap {command}: error: "), err
    assert "missing.tif" in err[0]
    assert list(files["out"].iterdir()) == []


def test_an_unparsable_option_value_is_argparses_usage_error(files):
    with pytest.raises(SystemExit) as exit_:
        main(deconvolve_args(files, "--tv", "abc", "-o", str(files["out"] / "o.tif")))
    assert exit_.value.code == 2


def test_keyboard_interrupt_inside_a_command_exits_130(files, capsys, monkeypatch):
    import psfmap.restore as restore

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(restore, "richardson_lucy", interrupted)
    out = files["out"] / "o.tif"
    assert main(deconvolve_args(files, "-o", str(out))) == 130
    assert capsys.readouterr().err.strip() == "psfmap deconvolve: interrupted; no output written"
    assert list(files["out"].iterdir()) == []


# -- unclear behaviours ----------------------------------------------------------------------


def test_a_negative_image_hint_names_offset_which_then_works(files, capsys):
    shifted = files["tmp"] / "subtracted.tif"
    write_image(shifted, files["blurred"] - 5.0)  # an over-subtracted camera offset
    out = files["out"] / "o.tif"
    base = ["deconvolve", str(shifted), "--psf", str(files["psf"]), "--method", "rl",
            "--iterations", "4", "-o", str(out)]
    assert main(base) == 1
    err = capsys.readouterr().err.strip()
    assert "negative pixels" in err and "--offset 4" in err and "background=" not in err
    assert main([*base, "--offset", "5"]) == 0
    restored, metadata = read_image(out)
    psf = files["psf_array"].astype(np.float64)
    # y - 5 + 5 = H x + 5: the same restoration as of the unsubtracted image with background 5
    expected = richardson_lucy(files["blurred"], Convolution(psf / psf.sum()), iterations=4,
                               background=5.0)
    np.testing.assert_allclose(restored, expected, rtol=1e-4, atol=1e-4)
    assert metadata["description"]["offset"] == 5.0


def test_a_saturated_integer_image_is_warned_about(files, capsys):
    image = np.clip(files["blurred"] * 2000, 0, 65535).astype(np.uint16)
    image[:4, :] = 65535  # 4 of 48 rows saturated: 8 %
    path = files["tmp"] / "saturated.tif"
    tifffile.imwrite(path, image)
    out = files["out"] / "o.tif"
    assert main(["deconvolve", str(path), "--psf", str(files["psf"]), "--iterations", "2",
                 "-o", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "saturated: 8.3 % of its pixels" in err[0] and "65535" in err[0]
    # below 0.1 %: quiet
    image[:4, :] = 100
    tifffile.imwrite(path, image)
    assert main(["deconvolve", str(path), "--psf", str(files["psf"]), "--iterations", "2",
                 "-o", str(out)]) == 0
    assert "saturated" not in capsys.readouterr().err


def test_a_psf_with_negative_noise_is_refused_then_clipped_with_clip_psf(files, capsys):
    psf = files["psf_array"].copy()
    psf[0, :] = -1e-5  # background-subtraction noise along one border
    path = files["tmp"] / "noisy_psf.tif"
    tifffile.imwrite(path, psf)
    out = files["out"] / "o.tif"
    base = ["deconvolve", str(files["image"]), "--psf", str(path), "--iterations", "3",
            "-o", str(out)]
    assert main(base) == 1
    err = capsys.readouterr().err.strip()
    assert "--clip-psf" in err and "negative values" in err and not out.exists()
    assert main([*base, "--clip-psf"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    fraction = 9e-5 / np.abs(psf).sum()
    assert len(err) == 1 and f"({100 * fraction:.2g} % of its mass)" in err[0]
    assert "9 negative values" in err[0]
    restored, _ = read_image(out)
    clipped = psf.clip(0, None).astype(np.float64)
    expected = richardson_lucy(files["blurred"], Convolution(clipped / clipped.sum()),
                               iterations=3, tv=0.01)
    np.testing.assert_allclose(restored, expected, rtol=1e-5, atol=1e-5)


def test_python_warnings_of_a_verb_are_one_line(files, capsys, monkeypatch):
    import psfmap.restore as restore

    original = restore.richardson_lucy

    def warning_solver(*args, **kwargs):
        warnings.warn("the PSF map lies outside its family's range\nsecond line", UserWarning,
                      stacklevel=2)
        return original(*args, **kwargs)

    monkeypatch.setattr(restore, "richardson_lucy", warning_solver)
    assert main(deconvolve_args(files, "-o", str(files["out"] / "o.tif"))) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["psfmap deconvolve: warning: the PSF map lies outside its family's range"]


@pytest.mark.parametrize(
    ("error", "needs"),
    [
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                      "allocate memory: you tried to allocate 80000000000 bytes. Error code 12 "
                      "(Cannot allocate memory)"), " (needs 80 GB more)"),
        (MemoryError("Unable to allocate 74.5 GiB for an array with shape (100000, 100000, 2) "
                     "and data type float32"), " (needs 80 GB more)"),
        (MemoryError(), ""),
    ],
)
def test_an_allocation_failure_is_one_line_with_the_tile_hint(files, capsys, monkeypatch,
                                                              error, needs):
    import psfmap.restore as restore

    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(restore, "richardson_lucy", out_of_memory)
    assert main(deconvolve_args(files, "-o", str(files["out"] / "o.tif"))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"psfmap deconvolve: error: not enough memory{needs}; try --tile 1024 "
                   "(restores the image in pieces, memory bounded by the tile)"]
    assert list(files["out"].iterdir()) == []


def test_deconvolve_tile_equals_one_piece_for_plain_rl(files, capsys):
    one, tiled = files["out"] / "one.tif", files["out"] / "tiled.tif"
    common = ["--method", "rl", "--iterations", "5"]
    assert main(deconvolve_args(files, *common, "-o", str(one))) == 0
    assert main(deconvolve_args(files, *common, "--tile", "32", "--overlap", "12",
                                "-o", str(tiled))) == 0
    a, _ = read_image(one)
    b, metadata = read_image(tiled)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    assert metadata["description"]["tile"] == 32 and metadata["description"]["overlap"] == 12
    # sparse-smooth components need one piece
    assert main(deconvolve_args(files, "--method", "sparse-smooth", "--tile", "32",
                                "--sparse-out", str(files["out"] / "s.tif"),
                                "-o", str(tiled))) == 2
    assert "--tile" in capsys.readouterr().err
