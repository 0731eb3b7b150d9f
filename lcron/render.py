"""Tables and pages rendered three ways - self-contained HTML, Markdown, JSON - from one model.

Why three files: the HTML page is for people (plots embedded as base64 PNG, CSS inline, so
it can be mailed or attached as a KFP artifact and opens anywhere offline), the Markdown is
for reviews and READMEs, and the JSON holds exactly the numbers of the tables for
machines. All three are rendered from one list of :class:`Section` objects, so they cannot
disagree. Used by the run report (:mod:`lcron.report`) and the comparison
(:mod:`lcron.compare`); cell formatting (:func:`format_cell`) is the one place that decides
how a number prints.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import atomic, outputs
from .step_output import StepOutput

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #1b1b1b; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #1f4e79; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; color: #1f4e79; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .9em; }
th, td { border: 1px solid #c8c8c8; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #eef3f8; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: bold; background: #e3f1e3 !important; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
p.note { color: #555; font-size: .9em; }
caption { caption-side: top; text-align: left; font-weight: bold; padding: .2em 0; }
"""


@dataclass
class Table:
    """A table whose cells are raw values; :func:`format_cell` renders every view of it.

    ``best`` lists (row, column) positions to emphasise (bold in Markdown, highlighted in HTML).
    """

    id: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    best: list[tuple[int, int]] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows,
                "best": [list(b) for b in self.best], "note": self.note}


@dataclass
class Section:
    id: str
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, str, bytes]] = field(default_factory=list)  # (file name, alt text, PNG bytes)


def mean_decimals(std: float | None) -> int:
    """Decimals a mean deserves given its spread: two significant digits of the std (0.0141 -> 3,
    0.35 -> 2), at most 4; 4 without a spread (one seed) or with none (std 0)."""
    if std is None or not math.isfinite(std) or std <= 0:
        return 4
    return max(0, min(4, 1 - math.floor(math.log10(std))))


def count_value(value: Any) -> Any:
    """A count measured as a mean (items scored, GT per request): the integer when it is one
    (40.0 -> 40), so it prints as "40", not "40.0000"."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def format_cell(value: Any) -> str:
    """The text of a cell: mean ± std for an aggregate ({"mean", "std"}; decimals from the spread,
    :func:`mean_decimals`), "[low, high]" for an interval ({"low", "high"}), 4 decimals for
    floats below 10 (2 below 100, else 1), integers as integers, n/a for None."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "n/a"
        # 4 decimals for fractions (metrics), fewer for larger numbers (mean counts, rates)
        return f"{value:.{4 if abs(value) < 10 else 2 if abs(value) < 100 else 1}f}"
    if isinstance(value, Mapping) and "mean" in value:
        if value["mean"] is None:
            return "n/a"
        std = value.get("std")
        places = mean_decimals(std)
        text = f"{value['mean']:.{places}f}"
        if std is not None:
            text += f" ± {std:.{places}f}"
        return text
    if isinstance(value, Mapping) and "low" in value and "high" in value:
        return f"[{value['low']:+.4f}, {value['high']:+.4f}]"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_cell(v) for v in value)
    return str(value)


def _is_numeric(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
        isinstance(value, Mapping) and ("mean" in value or "low" in value))


def _numeric_column(table: Table, j: int) -> bool:
    """Right-align a column whose filled cells are all numbers."""
    cells = [r[j] for r in table.rows if r[j] is not None]
    return bool(cells) and all(_is_numeric(v) for v in cells)


def markdown_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table; '|' in cells is escaped, best cells are bold."""
    def cell(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    best = set(map(tuple, table.best))
    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "|".join("---:" if _numeric_column(table, j) else "---"
                            for j in range(len(table.columns))) + "|"]
    for i, row in enumerate(table.rows):
        texts = [cell(format_cell(v)) for v in row]
        texts = [f"**{t}**" if (i, j) in best else t for j, t in enumerate(texts)]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)


def html_table(table: Table) -> str:
    best = set(map(tuple, table.best))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, v in enumerate(row):
            cls = " ".join(c for c in ("num" if _is_numeric(v) else "", "best" if (i, j) in best else "") if c)
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{html.escape(format_cell(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="table-{html.escape(table.id)}"><caption>{html.escape(table.title)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def render_html(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """A self-contained page: CSS inline, images as data: URIs, every text escaped."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="note">{html.escape(subtitle)}</p>')
    for sec in sections:
        parts.append(f'<section id="{html.escape(sec.id)}"><h2>{html.escape(sec.title)}</h2>')
        for t in sec.text:
            parts.append(f"<p>{html.escape(t)}</p>")
        for tab in sec.tables:
            parts.append(html_table(tab))
            if tab.note:
                parts.append(f'<p class="note">{html.escape(tab.note)}</p>')
        for name, alt, png in sec.images:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img id="img-{html.escape(Path(name).stem)}" alt="{html.escape(alt)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(title: str, sections: Sequence[Section], subtitle: str = "", embed_images: bool = False) -> str:
    """The Markdown view; images are referenced as files written beside it, or with
    ``embed_images`` carried inside as base64 PNG data (a single file that shows its plots
    wherever it is opened alone, e.g. the KFP UI's Markdown artifact)."""
    out = [f"# {title}", ""]
    if subtitle:
        out += [subtitle, ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for t in sec.text:
            out += [t, ""]
        for tab in sec.tables:
            out += [f"**{tab.title}**", "", markdown_table(tab), ""]
            if tab.note:
                out += [f"_{tab.note}_", ""]
        for name, alt, png in sec.images:
            src = f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}" if embed_images else name
            out += [f"![{alt}]({src})", ""]
    return "\n".join(out).rstrip() + "\n"


def guard_page(out: Path, stem: str, inputs: Mapping[str, Any], overwrite: bool, what: str) -> None:
    """Refuse (unless ``overwrite``) to replace ``out/<stem>.json`` written from other ``inputs``
    (another run, other evaluations): like every step, an earlier output is never lost silently.
    The same inputs may be rendered again (e.g. after a re-evaluation). The check is the output
    protocol's (lcron.step_output); a page is not locked or marked, one file at a time is atomic."""
    def is_page(kind: Any) -> bool:
        return isinstance(kind, str) and kind.startswith("lcron-")

    step = StepOutput(out, "", None, lambda folder: is_page(outputs.json_kind(folder / f"{stem}.json"))
                      or outputs.has_marker(folder), f"an lcron {what} folder")
    step.claim(f"{stem}.json", inputs, None, overwrite, held=f"a {what} of other inputs", record_noun=what,
               record_kind_ok=is_page, read_always=False, describe=lambda old: f"{old.get('inputs')} -> {dict(inputs)}")


def write_page(out: Path, stem: str, title: str, sections: Sequence[Section], doc: dict[str, Any],
               subtitle: str = "") -> dict[str, Path]:
    """Write <stem>.html, <stem>.md, <stem>.json and the PNG files; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for sec in sections:
        for name, _, png in sec.images:
            atomic.write_bytes(out / name, png)
            paths[Path(name).stem] = out / name
    doc = {**doc, "tables": {t.id: t.to_json() for s in sections for t in s.tables},
           "images": [name for s in sections for name, _, _ in s.images]}
    atomic.write_json(out / f"{stem}.json", doc)
    atomic.write_text(out / f"{stem}.md", render_markdown(title, sections, subtitle))
    atomic.write_text(out / f"{stem}.standalone.md", render_markdown(title, sections, subtitle, embed_images=True))
    atomic.write_text(out / f"{stem}.html", render_html(title, sections, subtitle))
    paths.update({"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "html": out / f"{stem}.html",
                  "markdown_standalone": out / f"{stem}.standalone.md"})
    return paths
