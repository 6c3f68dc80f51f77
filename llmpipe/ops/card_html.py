"""The HTML of the model card (llmpipe/ops/card.py): tables whose every number names its file, line
charts drawn as inline SVG, and the page around them. Nothing here loads anything from the network, and
the same inputs give the same bytes (fixed number formats, no clock, no random ids)."""

from __future__ import annotations

import math
from html import escape

# Series colours, in order (colour-blind safe: Okabe-Ito).
COLOURS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;max-width:1080px;
margin:24px auto;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin-bottom:4px}.wide{overflow-x:auto}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
caption,figcaption,.src{caption-side:bottom;text-align:left;font-size:12px;color:#666}
figure{margin:8px 0}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.missing{background:#fff4e5;border-left:4px solid #e69f00;padding:6px 12px}
.sample{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;
border:1px solid #ddd;padding:8px;background:#fafafa}
mark{background:#ffe08a}.prompt{font-weight:bold}
svg text{font:11px system-ui,sans-serif;fill:#333}
"""


def fmt(value) -> str:
    """A number as the card prints it (the same value, the same text, on every machine)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:.4f}"


def cell(value, source: str) -> str:
    """A table cell holding a value read from a file; `source` names the file (and key)."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    cls = ' class="n"' if numeric else ""
    return f'<td{cls} title="source: {escape(source)}">{escape(fmt(value))}</td>'


def table(header: list[str], rows: list[list[str]], sources: list[str]) -> str:
    """rows: lists of already rendered cells (plain strings are escaped into a <td>)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    caption = "source: " + ", ".join(escape(s) for s in sources)
    return (f'<div class="wide"><table><caption>{caption}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def key_values(values: dict, source: str) -> str:
    """Every key of a metrics file, sorted: files gain keys over time (baselines, intervals), and the
    card shows whatever is there."""
    rows = [[escape(k), cell(v, f"{source}: {k}")] for k, v in sorted(values.items()) if not isinstance(v, (dict, list))]
    return table(["key", "value"], rows, [source])


def missing_note(items: list[str]) -> str:
    if not items:
        return ""
    return '<div class="missing">missing: ' + "; ".join(escape(i) for i in items) + "</div>"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:.4g}"


def line_chart(series: list[tuple[str, list[float], list[float]]], xlabel: str, ylabel: str,
               baselines: list[tuple[str, float]] = (), width: int = 900, height: int = 300) -> str:
    """An SVG line chart: series (label, xs, ys) as paths with their points, baselines as dashed lines."""
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy] + [b for _, b in baselines]
    if not xs:
        return ""
    left, right, top, bottom = 64, 300, 12, 40
    xt, yt = _nice_ticks(min(xs), max(xs)), _nice_ticks(min(ys), max(ys))
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - xt[0]) / ((xt[-1] - xt[0]) or 1) * pw

    def py(y: float) -> float:
        return top + ph - (y - yt[0]) / ((yt[-1] - yt[0]) or 1) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(ylabel)} against {escape(xlabel)}">']
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" stroke="#eee"/>'
                   f'<text x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{_tick_label(t)}</text>')
    for t in yt:
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_tick_label(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'{escape(ylabel)}</text>')
    legend_y = top + 8
    for i, (label, value) in enumerate(baselines):
        colour = "#777"
        out.append(f'<line class="baseline" x1="{left}" y1="{py(value):.1f}" x2="{left + pw}" y2="{py(value):.1f}" '
                   f'stroke="{colour}" stroke-dasharray="5 4"><title>{escape(label)}: {fmt(value)}</title></line>')
    items = [(label, COLOURS[i % len(COLOURS)], "") for i, (label, _, _) in enumerate(series)]
    items += [(f"{label}: {fmt(value)}", "#777", ' stroke-dasharray="5 4"') for label, value in baselines]
    for i, (label, sx, sy) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        d = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(zip(sx, sy)))
        out.append(f'<path class="series" data-series="{escape(label)}" data-points="{len(sx)}" d="{d}" '
                   f'fill="none" stroke="{colour}" stroke-width="1.6"/>')
        if len(sx) <= 40:  # few points (validation, benchmarks): mark each one
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in zip(sx, sy)]
    for k, (label, colour, dash) in enumerate(items):
        y = legend_y + 16 * k
        out.append(f'<line x1="{left + pw + 10}" y1="{y}" x2="{left + pw + 30}" y2="{y}" stroke="{colour}" '
                   f'stroke-width="2"{dash}/><text x="{left + pw + 34}" y="{y + 4}">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


def marked(text: str, spans: list[dict]) -> str:
    """`text` escaped, with each traced span in a <mark> whose title names the documents it occurs in.
    Spans may overlap (each is maximal from its own start): a later one is marked from where the
    earlier one ends."""
    out, pos = [], 0
    for span in sorted(spans, key=lambda s: s["start"]):
        start, end = max(span["start"], pos), span["end"]
        if end <= start:
            continue
        docs = "; ".join(f"{d['id']} ({d['source']} {d['location']}, token {d['token_offset']})".replace("  ", " ")
                         for d in span["docs"])
        title = (f"{span['tokens']} tokens found verbatim {span['count']} time(s) in the training documents: "
                 f"{docs} (source: data/trace)")
        out.append(escape(text[pos:start]))
        out.append(f'<mark title="{escape(title)}" data-count="{span["count"]}">{escape(text[start:end])}</mark>')
        pos = end
    out.append(escape(text[pos:]))
    return "".join(out)


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]], missing: list[str]) -> str:
    """sections: (anchor, heading, body html)."""
    nav = " · ".join(f'<a href="#{a}">{escape(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{escape(h)}</h2>{html}</section>' for a, h, html in sections)
    gaps = ""
    if missing:
        gaps = ('<section id="missing" class="missing"><h2>Missing</h2><ul>'
                + "".join(f"<li>{escape(m)}</li>" for m in missing) + "</ul></section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            # the page may load nothing: no script, no font, no image from anywhere
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1><p>{escape(subtitle)}</p><nav>{nav}</nav>{gaps}{body}</body></html>\n")
