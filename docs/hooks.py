"""MkDocs hook: include files from outside docs/ at build time (one source of truth).

A line ``<!-- include: PATH -->`` (PATH relative to the repository root, where mkdocs.yml
lives) is replaced by that file's text. The model cards (``src/psfmap/pretrained/*.md``) and
the current benchmark figures (``benchmarks/RESULTS.md``) are shown this way, never copied.
"""

from __future__ import annotations

import re
from pathlib import Path

INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->$", flags=re.M)


def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - MkDocs hook signature
    root = _root(config)

    def replace(match: re.Match) -> str:
        path = (root / match["path"]).resolve()
        if not path.is_file():
            # an error, not a warning: a missing model card must fail the build
            raise FileNotFoundError(
                f"{page.file.src_path}: included file {match['path']!r} does not exist"
            )
        return path.read_text(encoding="utf-8")

    return INCLUDE.sub(replace, markdown)


def on_serve(server, config, builder):  # noqa: ARG001 - MkDocs hook signature
    # `mkdocs serve` rebuilds when an included file changes
    root = _root(config)
    for pattern in ("src/psfmap/pretrained/*.md", "benchmarks/RESULTS.md"):
        for path in root.glob(pattern):
            server.watch(str(path))
    return server
