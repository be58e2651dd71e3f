//! The report as one self-contained HTML file: inline CSS, inline SVG charts, no scripts,
//! no network; prints on A4 (`@media print`).

use crate::doc::Block;
use crate::model::{Recommendation, Severity};

const CSS: &str = "
body{font:14px/1.45 'DejaVu Sans',system-ui,sans-serif;color:#1d1d1f;max-width:1100px;margin:24px auto;padding:0 18px}
h1{font-size:24px;margin:0 0 2px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.sub{color:#666;margin-bottom:16px}
.verdict{padding:12px 16px;border-radius:6px;margin:8px 0;font-size:15px}
.verdict b{font-size:20px;display:block;margin-bottom:4px}
.ship{background:#e4f4e8;border-left:6px solid #2c9a4a}.caveats{background:#fff4d6;border-left:6px solid #c79100}.dont{background:#fde3e1;border-left:6px solid #c62828}
.flag{margin:4px 0;padding:6px 10px;border-radius:4px}.block{background:#fde3e1}.caution{background:#fff4d6}
table{border-collapse:collapse;margin:8px 0;font-size:12.5px;width:100%}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:right;vertical-align:top}
th{background:#f2f4f7}td:first-child,th:first-child,td:nth-child(2){text-align:left}
tr.hl td{background:#fff7e6;font-weight:600}
td{word-break:break-word}
figure{margin:12px 0;break-inside:avoid}figure svg{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}table,figure{break-inside:avoid}}
";

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Renders the blocks as an HTML document.
pub fn render(blocks: &[Block]) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let title = blocks.iter().find_map(|b| if let Block::Title(t, _) = b { Some(t.clone()) } else { None }).unwrap_or_default();
    h.push_str(&format!("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title><style>{CSS}</style></head><body><main>\n", esc(&title)));
    for b in blocks {
        match b {
            Block::Title(t, sub) => h.push_str(&format!("<h1>{}</h1><div class=\"sub\">{}</div>\n", esc(t), esc(sub))),
            Block::Heading(t) => h.push_str(&format!("<h2>{}</h2>\n", esc(t))),
            Block::Verdict(r, text) => {
                let class = match r {
                    Recommendation::Ship => "ship",
                    Recommendation::ShipWithCaveats => "caveats",
                    Recommendation::DontShip => "dont",
                };
                h.push_str(&format!("<div class=\"verdict {class}\" role=\"status\"><b>Recommendation: {}</b>{}</div>\n", r.label(), esc(text)));
            }
            Block::Flag(s, text) => {
                let (class, word) = if *s == Severity::Block { ("block", "Blocking") } else { ("caution", "Caution") };
                h.push_str(&format!("<div class=\"flag {class}\"><strong>{word}</strong> — {}</div>\n", esc(text)));
            }
            Block::Para(t) => h.push_str(&format!("<p>{}</p>\n", esc(t))),
            Block::Code(t) => h.push_str(&format!("<pre>{}</pre>\n", esc(t))),
            Block::Table { head, rows, highlight } => {
                h.push_str("<table><thead><tr>");
                for c in head {
                    h.push_str(&format!("<th scope=\"col\">{}</th>", esc(c)));
                }
                h.push_str("</tr></thead><tbody>\n");
                for (i, r) in rows.iter().enumerate() {
                    h.push_str(if *highlight == Some(i) { "<tr class=\"hl\">" } else { "<tr>" });
                    for c in r {
                        h.push_str(&format!("<td>{}</td>", esc(c)));
                    }
                    h.push_str("</tr>\n");
                }
                h.push_str("</tbody></table>\n");
            }
            Block::Chart(c) => {
                let svg = c.svg.replacen("<svg ", &format!("<svg role=\"img\" aria-label=\"{}\" ", esc(&c.title)), 1);
                h.push_str(&format!("<figure>{svg}<figcaption class=\"sub\">{}</figcaption></figure>\n", esc(&c.title)));
            }
        }
    }
    h.push_str("</main></body></html>\n");
    h
}
