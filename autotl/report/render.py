"""Sections -> ``report.md`` (figures as files beside it) and ``report.html`` (one self-contained file).

The HTML embeds each figure as a base64 PNG and its style inline: it opens offline, from a mail
attachment or a CI artifact, with nothing fetched from a network.
"""
from __future__ import annotations

import base64
import html
from typing import Any, Dict, List, Mapping

from .plots import PLOTS
from .sections import Section, Table

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;margin:34px 0 6px;border-bottom:1px solid #d9dde3;padding-bottom:4px}
nav a{margin-right:14px;color:#2456a6;text-decoration:none}nav{margin:6px 0 12px}
.how{color:#555e6c;margin:4px 0 10px}
table{border-collapse:collapse;margin:10px 0;background:#fff;font-size:13.5px}
th,td{border:1px solid #dde1e7;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}tbody tr:nth-child(even){background:#fafbfc}
#leaderboard tbody tr:first-child{background:#e6f4ea;font-weight:600}
figure{margin:12px 0;background:#fff;border:1px solid #dde1e7;padding:8px;display:inline-block}
figure img{max-width:100%;height:auto;display:block}figcaption{color:#555e6c;font-size:13px;margin-top:4px}
.scroll{overflow-x:auto}
"""


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.header) + " |",
             "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def to_markdown(title: str, sections: List[Section], image_dir: str) -> str:
    """Markdown with tables and links to the PNGs in ``image_dir`` (relative to the report)."""
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.how_to_read:
            out += [f"*{s.how_to_read}*", ""]
        for kind, value in s.blocks:
            if kind == "p":
                out += [value, ""]
            elif kind == "table":
                out += [_md_table(value), ""]
            elif kind == "img":
                caption = PLOTS[value][0]
                out += [f"![{caption}]({image_dir}/{value}.png)", ""]
    return "\n".join(out).rstrip() + "\n"


def _html_table(table: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in table.rows)
    ident = f' id="{esc(table.id)}"' if table.id else ""
    header = f"<thead><tr>{head}</tr></thead>" if any(str(h) for h in table.header) else ""
    return f'<div class="scroll"><table{ident}>{header}<tbody>{body}</tbody></table></div>'


def to_html(title: str, sections: List[Section], images: Mapping[str, bytes]) -> str:
    """One self-contained HTML page: inline style, figures as data URIs, no script, no network."""
    esc = html.escape
    parts: List[str] = []
    nav = " ".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections)
    for s in sections:
        parts.append(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>')
        if s.how_to_read:
            parts.append(f'<p class="how">{esc(s.how_to_read)}</p>')
        for kind, value in s.blocks:
            if kind == "p":
                parts.append(f"<p>{esc(value)}</p>")
            elif kind == "table":
                parts.append(_html_table(value))
            elif kind == "img":
                data = base64.b64encode(images[value]).decode("ascii")
                caption, text = PLOTS[value]
                parts.append(f'<figure id="fig-{value}"><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                             f"<figcaption><b>{esc(caption)}.</b> {esc(text)}</figcaption></figure>")
        parts.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{esc(title)}</h1><nav>{nav}</nav>{''.join(parts)}</main></body></html>\n")


def image_blocks(sections: List[Section]) -> Dict[str, None]:
    """The figure names the sections show, in order."""
    return {value: None for s in sections for kind, value in s.blocks if kind == "img"}
