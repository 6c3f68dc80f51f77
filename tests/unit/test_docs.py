"""The documentation: the site builds offline in strict mode (broken links and anchors fail it), loads
nothing from another host, its generated reference matches the code, and the README's links land."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _reference_module():
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "scripts" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(root / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=root, capture_output=True, text=True, timeout=120)


def test_site_builds_strict_and_loads_nothing_from_other_hosts(tmp_path):
    proc = _build(REPO, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    pages = list((tmp_path / "site").rglob("*.html"))
    assert len(pages) >= 14
    remote = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=[\"'](?:https?:)?//", re.I)
    offenders = [str(p.relative_to(tmp_path)) for p in pages if remote.search(p.read_text(encoding="utf-8"))]
    assert not offenders, f"pages loading a script, style or image from another host: {offenders}"


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    shutil.copytree(REPO / "docs", root / "docs")
    page = root / "docs" / "sources.md"
    text = page.read_text(encoding="utf-8")
    page.write_text(text + "\n[gone](no-such-page.md)\n", encoding="utf-8")
    proc = _build(root, tmp_path / "site")
    assert proc.returncode != 0 and "no-such-page.md" in proc.stderr
    page.write_text(text + "\n[gone](stages.md#no-such-heading)\n", encoding="utf-8")
    proc = _build(root, tmp_path / "site2")
    assert proc.returncode != 0 and "no-such-heading" in proc.stderr


def test_reference_page_matches_the_code():
    ref = _reference_module()
    assert not ref.rows_without_meaning(), ("params without a meaning (add a comment beside the field in its "
                                            f"model, or to MEANINGS): {ref.rows_without_meaning()}")
    assert not ref.stale_meanings(), f"MEANINGS names fields that no longer exist: {ref.stale_meanings()}"
    committed = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == ref.render(), "docs/reference.md is out of date: run python scripts/docs_reference.py"


def test_reference_lists_every_command_and_params_leaf():
    from llmpipe.cli import COMMANDS
    from llmpipe.stages.registry import STAGES

    text = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    for command in [s.name for s in STAGES] + list(COMMANDS):
        assert f"| `llmpipe {command}` |" in text, command
    written = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))

    def keys(node, prefix):
        if isinstance(node, dict) and node and all(isinstance(k, str) for k in node):
            for key, child in node.items():
                yield f"{prefix}.{key}"
                if key != "sources":  # list items are documented per kind, as scrape.sources[].<key>
                    yield from keys(child, f"{prefix}.{key}")

    missing = [k for section, body in written.items() for k in keys(body, section)
               if f"| `{k}` |" not in text and not k.startswith("tasks.builtin.")]
    assert not missing, f"params.yaml keys missing from docs/reference.md: {missing}"


def test_params_examples_in_the_docs_are_valid():
    from llmpipe.config.sections import SECTIONS, validate_section

    checked = 0
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and data and set(data) <= set(SECTIONS):
                for section in data:
                    validate_section(section, data, f"{page.name} example")  # raises, naming the key
                    checked += 1
    assert checked >= 5


def test_readme_is_a_short_front_door_whose_links_land():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    targets = re.findall(r"\]\(((?:docs/)[^)#\s]+)(?:#[^)]*)?\)", readme)
    assert targets, "the README links to the docs"
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
