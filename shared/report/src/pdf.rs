//! The report as a PDF (A4), from the same blocks as the HTML. Each block is set as a small
//! SVG (text wrapped with DejaVu Sans's advance widths, tables with wrapped cells, the
//! charts as `plotters` drew them) and placed on the page by `krilla` through `krilla-svg`,
//! which embeds the fonts (subset) so the text stays selectable. Blocks that do not fit go
//! to the next page; long tables split between rows and repeat their header.

use std::sync::{Arc, LazyLock};

use krilla::Document;
use krilla::geom::{Size, Transform};
use krilla::page::PageSettings;
use krilla_svg::{SurfaceExt, SvgSettings};

use crate::ReportError;
use crate::doc::Block;
use crate::html::esc;
use crate::model::{Recommendation, Severity};

const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const MARGIN: f32 = 40.0;
const CONTENT_W: f32 = PAGE_W - 2.0 * MARGIN;
const GAP: f32 = 7.0;

static FONTS: LazyLock<Arc<usvg::fontdb::Database>> = LazyLock::new(|| {
    let mut db = usvg::fontdb::Database::new();
    db.load_font_data(dejavu::sans::regular().to_vec());
    db.load_font_data(dejavu::sans::bold().to_vec());
    db.load_font_data(dejavu::sans_mono::regular().to_vec());
    db.set_sans_serif_family("DejaVu Sans");
    db.set_monospace_family("DejaVu Sans Mono");
    Arc::new(db)
});

/// Advance width of `c` in DejaVu Sans, in em (measured from the font's hmtx table for the
/// common classes, rounded up so estimates never overflow a column).
fn advance(c: char, bold: bool) -> f32 {
    let w = match c {
        ' ' => 0.32,
        '0'..='9' => 0.64,
        'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' => 0.30,
        'f' | 't' | 'r' | '(' | ')' | '[' | ']' | '/' | '-' => 0.40,
        'm' | 'w' => 0.93,
        'M' | 'W' | '%' => 0.96,
        'A'..='Z' => 0.72,
        'a'..='z' => 0.62,
        '—' | '★' | '⚠' => 1.0,
        _ => 0.70,
    };
    if bold { w * 1.1 } else { w }
}

fn width(s: &str, size: f32, bold: bool) -> f32 {
    s.chars().map(|c| advance(c, bold)).sum::<f32>() * size
}

/// Wraps `s` into lines no wider than `max` (words longer than a line are cut).
fn wrap(s: &str, size: f32, bold: bool, max: f32) -> Vec<String> {
    let mut lines = Vec::new();
    for para in s.split('\n') {
        let mut line = String::new();
        for word in para.split(' ') {
            let candidate = if line.is_empty() { word.to_owned() } else { format!("{line} {word}") };
            if width(&candidate, size, bold) <= max {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let mut rest = word.to_owned();
            while width(&rest, size, bold) > max {
                let mut cut = String::new();
                for c in rest.chars() {
                    if width(&format!("{cut}{c}"), size, bold) > max {
                        break;
                    }
                    cut.push(c);
                }
                if cut.is_empty() {
                    break;
                }
                rest = rest[cut.len()..].to_owned();
                lines.push(cut);
            }
            line = rest;
        }
        lines.push(line);
    }
    lines
}

/// A placed piece: an SVG of `CONTENT_W` × `height` points.
struct Piece {
    svg: String,
    height: f32,
    /// Start a new page before it when less than this much room is left (headings keep
    /// their next block with them).
    keep: f32,
}

fn svg(height: f32, body: &str) -> String {
    format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CONTENT_W}\" height=\"{height}\" viewBox=\"0 0 {CONTENT_W} {height}\">{body}</svg>")
}

fn text_lines(lines: &[String], x: f32, y0: f32, size: f32, lead: f32, attrs: &str) -> String {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("<text x=\"{x}\" y=\"{:.1}\" font-size=\"{size}\" font-family=\"DejaVu Sans\" {attrs}>{}</text>", y0 + lead * i as f32, esc(l)))
        .collect()
}

fn paragraph(t: &str, size: f32, attrs: &str, bold: bool) -> Piece {
    let lines = wrap(t, size, bold, CONTENT_W);
    let lead = size * 1.35;
    let height = lead * lines.len() as f32 + 2.0;
    Piece { svg: svg(height, &text_lines(&lines, 0.0, size, size, lead, attrs)), height, keep: 0.0 }
}

fn boxed(t: &str, title: Option<&str>, fill: &str, edge: &str, size: f32) -> Piece {
    let lines = wrap(t, size, false, CONTENT_W - 20.0);
    let lead = size * 1.35;
    let top = if title.is_some() { 38.0 } else { 5.0 + size };
    let height = top + lead * lines.len() as f32 + 6.0;
    let mut body = format!(
        "<rect x=\"0\" y=\"0\" width=\"{CONTENT_W}\" height=\"{height}\" rx=\"4\" fill=\"{fill}\"/><rect x=\"0\" y=\"0\" width=\"5\" height=\"{height}\" fill=\"{edge}\"/>"
    );
    if let Some(t) = title {
        body.push_str(&format!("<text x=\"12\" y=\"19\" font-size=\"15\" font-weight=\"bold\" font-family=\"DejaVu Sans\">{}</text>", esc(t)));
    }
    body.push_str(&text_lines(&lines, 12.0, top, size, lead, ""));
    Piece { svg: svg(height, &body), height, keep: 0.0 }
}

/// Column widths: each column gets its natural width where the page allows, wide columns
/// share what is left (water-filling).
fn columns(head: &[String], rows: &[Vec<String>], size: f32) -> Vec<f32> {
    let pad = 6.0;
    let natural: Vec<f32> = (0..head.len())
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| width(c, size, false) + pad).fold(width(&head[i], size, true) + pad, f32::max))
        .collect();
    if natural.iter().sum::<f32>() <= CONTENT_W {
        let extra = (CONTENT_W - natural.iter().sum::<f32>()) / natural.len() as f32;
        return natural.iter().map(|w| w + extra).collect();
    }
    let mut out = vec![0.0; natural.len()];
    let mut open: Vec<usize> = (0..natural.len()).collect();
    let mut room = CONTENT_W;
    loop {
        let share = room / open.len() as f32;
        let (fits, wide): (Vec<usize>, Vec<usize>) = open.iter().partition(|&&i| natural[i] <= share);
        if fits.is_empty() {
            for &i in &wide {
                out[i] = share;
            }
            return out;
        }
        for &i in &fits {
            out[i] = natural[i];
            room -= natural[i];
        }
        open = wide;
        if open.is_empty() {
            return out;
        }
    }
}

fn table(head: &[String], rows: &[Vec<String>], highlight: Option<usize>) -> Vec<Piece> {
    let size = if head.len() > 10 {
        6.2
    } else if head.len() > 6 {
        6.8
    } else {
        7.6
    };
    let lead = size * 1.3;
    let widths = columns(head, rows, size);
    let render_row = |cells: &[String], y: f32, bold: bool, fill: Option<&str>| -> (String, f32) {
        let wrapped: Vec<Vec<String>> = cells.iter().zip(&widths).map(|(c, w)| wrap(c, size, bold, w - 6.0)).collect();
        let n = wrapped.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let h = lead * n as f32 + 4.0;
        let mut s = String::new();
        if let Some(f) = fill {
            s.push_str(&format!("<rect x=\"0\" y=\"{y}\" width=\"{CONTENT_W}\" height=\"{h}\" fill=\"{f}\"/>"));
        }
        let mut x = 0.0;
        for (lines, w) in wrapped.iter().zip(&widths) {
            let attrs = if bold { "font-weight=\"bold\"" } else { "" };
            s.push_str(&text_lines(lines, x + 3.0, y + size + 1.5, size, lead, attrs));
            x += w;
        }
        s.push_str(&format!("<line x1=\"0\" y1=\"{0}\" x2=\"{CONTENT_W}\" y2=\"{0}\" stroke=\"#cccccc\" stroke-width=\"0.5\"/>", y + h));
        (s, h)
    };
    let (head_svg, head_h) = render_row(head, 0.0, true, Some("#eef1f5"));
    let mut pieces = Vec::new();
    let mut body = head_svg.clone();
    let mut y = head_h;
    let limit = PAGE_H - 2.0 * MARGIN - 20.0;
    for (i, r) in rows.iter().enumerate() {
        let fill = if highlight == Some(i) { Some("#fff2d9") } else { None };
        let (s, h) = render_row(r, y, false, fill);
        if y + h > limit && y > head_h {
            pieces.push(Piece { svg: svg(y, &body), height: y, keep: 0.0 });
            let (again, _) = render_row(head, 0.0, true, Some("#eef1f5"));
            body = again;
            y = head_h;
            let (s, h) = render_row(r, y, false, fill);
            body.push_str(&s);
            y += h;
            continue;
        }
        body.push_str(&s);
        y += h;
    }
    pieces.push(Piece { svg: svg(y, &body), height: y, keep: 0.0 });
    pieces
}

fn pieces(blocks: &[Block]) -> Vec<Piece> {
    let mut out = Vec::new();
    for b in blocks {
        match b {
            Block::Title(t, sub) => {
                out.push(paragraph(t, 17.0, "font-weight=\"bold\"", true));
                out.push(paragraph(sub, 8.5, "fill=\"#666666\"", false));
            }
            Block::Heading(t) => {
                let mut p = paragraph(t, 12.5, "font-weight=\"bold\"", true);
                p.height += 4.0;
                p.keep = 120.0;
                out.push(p);
            }
            Block::Verdict(r, t) => {
                let (fill, edge) = match r {
                    Recommendation::Ship => ("#e4f4e8", "#2c9a4a"),
                    Recommendation::ShipWithCaveats => ("#fff4d6", "#c79100"),
                    Recommendation::DontShip => ("#fde3e1", "#c62828"),
                };
                out.push(boxed(t, Some(&format!("Recommendation: {}", r.label())), fill, edge, 9.0));
            }
            Block::Flag(s, t) => {
                let (word, fill, edge) = if *s == Severity::Block { ("Blocking", "#fde3e1", "#c62828") } else { ("Caution", "#fff4d6", "#c79100") };
                out.push(boxed(&format!("{word} — {t}"), None, fill, edge, 8.5));
            }
            Block::Para(t) => out.push(paragraph(t, 8.8, "", false)),
            Block::Code(t) => {
                let lines: Vec<String> = t.lines().flat_map(|l| wrap(l, 7.0, false, CONTENT_W - 12.0)).collect();
                let lead = 9.0;
                let height = lead * lines.len() as f32 + 8.0;
                let body = format!(
                    "<rect x=\"0\" y=\"0\" width=\"{CONTENT_W}\" height=\"{height}\" fill=\"#f6f8fa\"/>{}",
                    lines
                        .iter()
                        .enumerate()
                        .map(|(i, l)| format!(
                            "<text x=\"6\" y=\"{:.1}\" font-size=\"7\" font-family=\"DejaVu Sans Mono\" xml:space=\"preserve\">{}</text>",
                            11.0 + lead * i as f32,
                            esc(l)
                        ))
                        .collect::<String>()
                );
                out.push(Piece { svg: svg(height, &body), height, keep: 0.0 });
            }
            Block::Table { head, rows, highlight } => out.extend(table(head, rows, *highlight)),
            Block::Chart(c) => {
                let height = CONTENT_W * c.height as f32 / c.width as f32;
                let inner = c.svg.replacen(&format!("width=\"{}\"", c.width), &format!("width=\"{CONTENT_W}\""), 1).replacen(
                    &format!("height=\"{}\"", c.height),
                    &format!("height=\"{height}\""),
                    1,
                );
                out.push(Piece { svg: inner, height, keep: 0.0 });
            }
        }
    }
    out
}

/// Renders the blocks as an A4 PDF.
pub fn render(blocks: &[Block]) -> Result<Vec<u8>, ReportError> {
    let opt = usvg::Options { fontdb: FONTS.clone(), font_family: "DejaVu Sans".into(), ..usvg::Options::default() };
    let pieces = pieces(blocks);
    let mut pages: Vec<Vec<(f32, &Piece)>> = vec![Vec::new()];
    let mut y = MARGIN;
    for p in &pieces {
        let room = PAGE_H - MARGIN - y;
        if (p.height > room || p.keep > room) && y > MARGIN {
            pages.push(Vec::new());
            y = MARGIN;
        }
        pages.last_mut().unwrap_or_else(|| unreachable!("pages starts non-empty")).push((y, p));
        y += p.height + GAP;
    }
    let mut doc = Document::new();
    let settings = PageSettings::from_wh(PAGE_W, PAGE_H).ok_or_else(|| ReportError::Pdf("page size".into()))?;
    let total = pages.len();
    for (n, page_pieces) in pages.iter().enumerate() {
        let mut page = doc.start_page_with(settings.clone());
        let mut surface = page.surface();
        for (y, p) in page_pieces {
            let tree = usvg::Tree::from_str(&p.svg, &opt).map_err(|e| ReportError::Pdf(format!("a block's SVG: {e}")))?;
            let size = Size::from_wh(tree.size().width(), tree.size().height()).ok_or_else(|| ReportError::Pdf("an empty block".into()))?;
            surface.push_transform(&Transform::from_translate(MARGIN, *y));
            surface.draw_svg(&tree, size, SvgSettings::default());
            surface.pop();
        }
        let footer = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CONTENT_W}\" height=\"12\"><text x=\"{CONTENT_W}\" y=\"9\" font-size=\"7\" text-anchor=\"end\" fill=\"#888888\" font-family=\"DejaVu Sans\">Tamp report · page {} of {total}</text></svg>",
            n + 1
        );
        let tree = usvg::Tree::from_str(&footer, &opt).map_err(|e| ReportError::Pdf(e.to_string()))?;
        surface.push_transform(&Transform::from_translate(MARGIN, PAGE_H - MARGIN + 12.0));
        surface.draw_svg(&tree, Size::from_wh(CONTENT_W, 12.0).unwrap_or_else(|| unreachable!("positive size")), SvgSettings::default());
        surface.pop();
        surface.finish();
        page.finish();
    }
    doc.finish().map_err(|e| ReportError::Pdf(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_every_line_inside_the_width_and_every_character() {
        let text = "a sha256 such as 5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f does not fit one narrow column";
        let lines = wrap(text, 8.0, false, 120.0);
        assert!(lines.len() > 3);
        assert!(lines.iter().all(|l| width(l, 8.0, false) <= 120.0), "{lines:?}");
        assert_eq!(lines.concat().replace(' ', ""), text.replace(' ', ""));
    }

    #[test]
    fn columns_fill_the_page_and_share_it_when_too_wide() {
        let head: Vec<String> = vec!["a".into(), "b".into()];
        let narrow = columns(&head, &[vec!["x".into(), "y".into()]], 8.0);
        assert!((narrow.iter().sum::<f32>() - CONTENT_W).abs() < 0.01);
        let wide = columns(&head, &[vec!["short".into(), "w".repeat(400)]], 8.0);
        assert!((wide.iter().sum::<f32>() - CONTENT_W).abs() < 0.01 && wide[0] < 60.0, "{wide:?}");
    }
}
