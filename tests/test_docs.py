"""Documentation is code: every ```python block of the README and of the docs site runs.

Each page's blocks run in order, in one namespace, in a temporary folder. Pages whose blocks
take more than ~2 s are marked slow. The site itself is built with ``mkdocs build --strict``
by ``make docs`` / ``make test``; ``test_site_builds`` does it here too (slow).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)

# Pages whose blocks together take more than ~2 s join the slow suite. Measured on the 2-core
# machine: every page runs in under 1.5 s (README 1.4 s, calibrate 0.9 s, blind 0.5 s), so
# none is slow today; add a page here when its examples grow.
SLOW_PAGES: frozenset[str] = frozenset()


def _pages() -> list[Path]:
    pages = [README] + sorted(
        p for p in DOCS.rglob("*.md") if "_incoming" not in p.relative_to(DOCS).parts
    )
    return [p for p in pages if PYTHON_BLOCK.search(p.read_text(encoding="utf-8"))]


def _param(page: Path):
    name = page.relative_to(ROOT).as_posix()
    marks = [pytest.mark.slow] if name in SLOW_PAGES else []
    return pytest.param(page, id=name, marks=marks)


@pytest.mark.parametrize("page", [_param(p) for p in _pages()])
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    name = page.relative_to(ROOT).as_posix()
    namespace = {"__name__": f"docs_{page.stem}"}
    blocks = PYTHON_BLOCK.findall(page.read_text(encoding="utf-8"))
    assert blocks, f"{name} has no python block"
    for index, block in enumerate(blocks):
        code = compile(block, f"{name} block {index}", "exec")
        exec(code, namespace)  # noqa: S102 - executing our own docs


def test_readme_starts_with_the_two_commands_and_fits_two_screens():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```\n(.*?)```", text, flags=re.S).group(1).split()
    assert first_block == ["make", "demo", "make", "test"]
    assert len(text.splitlines()) <= 150
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^docs:", makefile, flags=re.M)
    assert re.search(r"^test: docs", makefile, flags=re.M)  # make test builds the docs first


def test_readme_links_point_to_existing_files():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert len(targets) >= 10
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == []


def test_readme_job_table_names_resolve():
    # every Python verb of the job table is importable under the name the README gives
    import psfmap

    text = README.read_text(encoding="utf-8")
    verbs = set(re.findall(r"`(psfmap(?:\.\w+)+)\(", text))
    assert {"psfmap.deconvolve", "psfmap.deblur", "psfmap.blind.depth_map"} <= verbs
    for dotted in verbs:
        obj = psfmap
        for part in dotted.split(".")[1:]:
            obj = getattr(obj, part)
        assert callable(obj), dotted


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        if isinstance(item, str):
            pages.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def test_every_nav_page_exists_and_every_page_is_in_nav():
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = re.findall(r":\s*(\S+\.md)\s*$|^\s*-\s+(\S+\.md)\s*$", text, flags=re.M)
    listed = {a or b for a, b in nav}
    on_disk = {
        p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")
        if "_incoming" not in p.relative_to(DOCS).parts
    }
    assert listed == on_disk
    for page in ("index.md", "glossary.md", "results.md", "results-history.md",
                 "guide/restore.md", "guide/blind.md", "reference/operators.md"):
        assert page in listed


def _hooks():
    spec = importlib.util.spec_from_file_location("psfmap_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_include_hook_inlines_model_cards_and_results(tmp_path):
    hooks = _hooks()
    config = {"config_file_path": str(ROOT / "mkdocs.yml")}
    page = SimpleNamespace(file=SimpleNamespace(src_path="models/zernike3.md"))
    card = (DOCS / "models" / "zernike3.md").read_text(encoding="utf-8")
    out = hooks.on_page_markdown(card, page, config, None)
    assert out.strip() == (ROOT / "src/psfmap/pretrained/zernike3.md").read_text(
        encoding="utf-8").strip()
    results = hooks.on_page_markdown((DOCS / "results.md").read_text(encoding="utf-8"),
                                     page, config, None)
    assert results.startswith("# Benchmark results")
    with pytest.raises(FileNotFoundError, match="no/such.md"):
        hooks.on_page_markdown("<!-- include: no/such.md -->\n", page, config, None)


def test_every_shipped_model_card_has_a_page():
    cards = sorted(p.stem for p in (ROOT / "src/psfmap/pretrained").glob("*.md"))
    assert cards
    for name in cards:
        text = (DOCS / "models" / f"{name}.md").read_text(encoding="utf-8")
        assert f"<!-- include: src/psfmap/pretrained/{name}.md -->" in text


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    result = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    restore = (site / "guide/restore/index.html").read_text(encoding="utf-8")
    assert 'id="choosing-tv"' in restore
    reference = (site / "reference/operators/index.html").read_text(encoding="utf-8")
    assert "from_psf_grid" in reference and "doc-heading" in reference
    card = (site / "models/zernike3/index.html").read_text(encoding="utf-8")
    assert "Model card" in card
    assert "Benchmark results" in (site / "results/index.html").read_text(encoding="utf-8")
