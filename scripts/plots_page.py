"""Write DVC's plots page with Vega inlined, so `dvc plots show` renders without a network.

usage: python scripts/plots_page.py TEMPLATE JS_DIR OUT
Inlines JS_DIR/vega.min.js, vega-lite.min.js and vega-embed.min.js (in that order: each needs the one
before) in place of the marker line of TEMPLATE (.dvc/plots-page.html). The scripts are inlined, not
linked, so the page works wherever `dvc plots show -o` writes it, and can be mailed as one file.
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "<!-- llmpipe:vega-scripts -->"
SCRIPTS = ["vega.min.js", "vega-lite.min.js", "vega-embed.min.js"]
# DVC fills these into the page; a script holding one would be mangled, and "</script" would end it.
FORBIDDEN = ["</script", "{plot_divs}", "{scripts}", "{refresh_tag}"]


def build(template: Path, js_dir: Path, out: Path) -> None:
    page = template.read_text(encoding="utf-8")
    if page.count(MARKER) != 1 or "{scripts}" in page:  # DVC would put its CDN scripts there
        sys.exit(f"{template}: needs the line {MARKER} exactly once and no {{scripts}}")
    blocks = []
    for name in SCRIPTS:
        code = (js_dir / name).read_text(encoding="utf-8")
        if bad := [f for f in FORBIDDEN if f in code.lower()]:
            sys.exit(f"{js_dir / name}: contains {bad}; it cannot be inlined in DVC's page")
        blocks.append(f"<script>/* {name} */\n{code}\n</script>")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page.replace(MARKER, "\n".join(blocks)), encoding="utf-8")
    tmp.replace(out)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    build(*(Path(a) for a in sys.argv[1:]))
