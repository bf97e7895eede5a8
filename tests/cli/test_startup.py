"""Start-up cost of a command: it builds its own parser only, and the deblur path loads neither
scipy nor other commands' modules (each costs a command line 0.1-0.5 s before any work)."""

import subprocess
import sys

from psfmap.cli import COMMANDS, build_parser


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(*sys.modules)"],
                         check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_one_command_builds_its_parser_alone():
    parser = build_parser("deblur")
    choices = parser._subparsers._group_actions[0].choices
    assert list(choices) == ["deblur"]
    assert list(build_parser()._subparsers._group_actions[0].choices) == list(COMMANDS)


def test_deblur_path_loads_no_scipy_and_no_other_command():
    loaded = _modules_after(
        "from psfmap.cli import build_parser\n"
        "build_parser('deblur')\n"
        "import psfmap.blind.verbs, psfmap.blind.estimator, psfmap.restore, psfmap.io\n"
    )
    assert not {name for name in loaded if name == "scipy" or name.startswith("scipy.")}
    commands = {name.rsplit(".", 1)[1] for name in loaded if name.startswith("psfmap.cli.")}
    assert commands & set(COMMANDS) <= {"deblur", "estimate"}


def test_the_script_exits_quickly_with_main_s_code_and_flushed_streams(tmp_path):
    # entry() ends the process with os._exit once main() returns: the code, the summary line
    # and the written file must all be there as with a normal exit
    import numpy as np

    from psfmap.io import write_image

    image = tmp_path / "in.tif"
    write_image(image, np.random.default_rng(0).random((32, 32)).astype(np.float32))
    psf = tmp_path / "psf.tif"
    write_image(psf, np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]).astype(np.float32) / 16)
    out = tmp_path / "out.tif"
    done = subprocess.run([sys.executable, "-m", "psfmap.cli", "deconvolve", str(image),
                           "--psf", str(psf), "--iterations", "2", "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "deconvolved" in done.stdout and out.is_file()
    missing = subprocess.run([sys.executable, "-m", "psfmap.cli", "deconvolve",
                              str(tmp_path / "none.tif"), "--psf", str(psf), "-o",
                              str(tmp_path / "x.tif")], capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("psfmap deconvolve: error:")
    usage = subprocess.run([sys.executable, "-m", "psfmap.cli", "deconvolve"],
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "required" in usage.stderr
