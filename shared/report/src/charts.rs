//! The report's charts as SVG, drawn with `plotters` (its SVG backend: no fonts or system
//! libraries needed; text stays text, so the HTML is searchable and the PDF selectable).

use plotters::prelude::*;

use crate::model::{Report, Row};

/// A chart: its title and its SVG.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub svg: String,
    pub width: u32,
    pub height: u32,
}

const W: u32 = 640;
const H: u32 = 340;
const BLUE_: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
const ORANGE_: RGBColor = RGBColor(0xe0, 0x6c, 0x00);
const GREEN_: RGBColor = RGBColor(0x2c, 0x9a, 0x4a);
const GREY_: RGBColor = RGBColor(0x70, 0x70, 0x70);

type DrawResult = Result<(), String>;
/// A named line: its points, and whether it is drawn thin (the baseline of a pair).
type Series = (String, Vec<(f64, f64)>, bool);

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs().max(1e-9) * 0.02);
    (lo - pad, hi + pad)
}

fn draw(title: &str, f: impl FnOnce(DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> DrawResult) -> Option<Chart> {
    let mut svg = String::new();
    let res = {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err).and_then(|()| f(root))
    };
    match res {
        Ok(()) => Some(Chart { title: title.to_owned(), svg, width: W, height: H }),
        Err(e) => {
            eprintln!("report: chart '{title}' not drawn: {e}");
            None
        }
    }
}

/// The Pareto front of (x, metric): points no other point beats on both (lower x, better metric).
pub fn pareto(points: &[(f64, f64)], higher_better: bool) -> Vec<(f64, f64)> {
    let better = |a: f64, b: f64| if higher_better { a > b } else { a < b };
    let mut front: Vec<(f64, f64)> =
        points.iter().copied().filter(|&(x, y)| !points.iter().any(|&(x2, y2)| x2 <= x && !better(y, y2) && (x2 < x || better(y2, y)))).collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    front.dedup();
    front
}

fn tradeoff(r: &Report, title: &str, x_desc: &str, x_of: impl Fn(&Row) -> f64) -> Option<Chart> {
    let higher = crate::higher_is_better(&r.metric);
    let all: Vec<&Row> = std::iter::once(&r.baseline).chain(r.candidates.iter()).collect();
    let pts: Vec<(f64, f64)> = all.iter().map(|row| (x_of(row), row.metric)).collect();
    let (x0, x1) = span(pts.iter().map(|p| p.0).chain([0.0]));
    let (y0, y1) = span(pts.iter().map(|p| p.1));
    let front = pareto(&pts, higher);
    draw(title, |root| {
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(62)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        c.configure_mesh().x_desc(x_desc).y_desc(r.metric.as_str()).light_line_style(RGBColor(235, 235, 235)).draw().map_err(err)?;
        c.draw_series(LineSeries::new(front.clone(), GREEN_.stroke_width(2)))
            .map_err(err)?
            .label("Pareto front")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN_.stroke_width(2)));
        c.draw_series(all.iter().filter(|row| !row.chosen && row.id != "baseline").map(|row| Circle::new((x_of(row), row.metric), 4, BLUE_.filled())))
            .map_err(err)?
            .label("candidate")
            .legend(|(x, y)| Circle::new((x + 8, y), 4, BLUE_.filled()));
        c.draw_series(std::iter::once(TriangleMarker::new((x_of(&r.baseline), r.baseline.metric), 6, GREY_.filled())))
            .map_err(err)?
            .label("baseline (fp32)")
            .legend(|(x, y)| TriangleMarker::new((x + 8, y), 5, GREY_.filled()));
        if let Some(ch) = r.chosen() {
            c.draw_series(std::iter::once(Circle::new((x_of(ch), ch.metric), 7, ORANGE_.stroke_width(3))))
                .map_err(err)?
                .label(format!("chosen: {}", ch.id))
                .legend(|(x, y)| Circle::new((x + 8, y), 5, ORANGE_.stroke_width(2)));
        }
        c.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.85)).border_style(GREY_).draw().map_err(err)?;
        root.present().map_err(err)
    })
}

fn lines(title: &str, x_desc: &str, y_desc: &str, series: &[Series], paired: bool) -> Option<Chart> {
    if series.iter().all(|s| s.1.is_empty()) {
        return None;
    }
    let (x0, x1) = span(series.iter().flat_map(|s| s.1.iter().map(|p| p.0)));
    let (y0, y1) = span(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)));
    draw(title, |root| {
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(62)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        c.configure_mesh().x_desc(x_desc).y_desc(y_desc).light_line_style(RGBColor(235, 235, 235)).draw().map_err(err)?;
        for (i, (name, pts, dashed)) in series.iter().enumerate() {
            let color = Palette99::pick(if paired { i / 2 } else { i }).to_rgba();
            let style = if *dashed { color.stroke_width(1) } else { color.stroke_width(2) };
            c.draw_series(LineSeries::new(pts.clone(), style).point_size(3))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY_)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)
    })
}

fn histogram(title: &str, a: &[f64], b: &[f64]) -> Option<Chart> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut all: Vec<f64> = a.iter().chain(b.iter()).copied().filter(|v| v.is_finite()).collect();
    all.sort_by(f64::total_cmp);
    // Slow outlier runs (a busy machine) are cut at 3× the median so they do not squash the
    // chart; P99 is in the table.
    let median = all[all.len() / 2];
    let hi = all[((all.len() as f64 * 0.99) as usize).min(all.len() - 1)].min(3.0 * median);
    let lo = all[0];
    let bins = 40usize;
    let w = ((hi - lo) / bins as f64).max(1e-9);
    let count = |v: &[f64]| {
        let mut h = vec![0usize; bins];
        for x in v.iter().filter(|x| **x <= hi) {
            h[(((x - lo) / w) as usize).min(bins - 1)] += 1;
        }
        h
    };
    let (ha, hb) = (count(a), count(b));
    let top = ha.iter().chain(hb.iter()).copied().max().unwrap_or(1) as f64 * 1.1;
    draw(title, |root| {
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi + w, 0.0..top)
            .map_err(err)?;
        c.configure_mesh().x_desc("latency per single-row run (ms)").y_desc("runs").light_line_style(RGBColor(235, 235, 235)).draw().map_err(err)?;
        for (h, color, name) in [(&ha, GREY_, "baseline"), (&hb, ORANGE_, "chosen")] {
            c.draw_series(h.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| {
                let x = lo + i as f64 * w;
                Rectangle::new([(x, 0.0), (x + w, *n as f64)], color.mix(0.45).filled())
            }))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.mix(0.45).filled()));
        }
        c.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.85)).border_style(GREY_).draw().map_err(err)?;
        root.present().map_err(err)
    })
}

fn bars(title: &str, y_desc: &str, items: &[(String, f64)]) -> Option<Chart> {
    if items.is_empty() {
        return None;
    }
    let top = items.iter().map(|i| i.1).filter(|v| v.is_finite()).fold(0.0f64, f64::max).max(1e-6) * 1.15;
    let n = items.len();
    draw(title, |root| {
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(62)
            .build_cartesian_2d(0.0..n as f64, 0.0..top)
            .map_err(err)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_desc("layer (in graph order; names in the table)")
            .y_desc(y_desc)
            .x_labels(n.min(12))
            .x_label_formatter(&|x| format!("{}", *x as usize + 1))
            .draw()
            .map_err(err)?;
        c.draw_series(items.iter().enumerate().map(|(i, (_, v))| Rectangle::new([(i as f64 + 0.15, 0.0), (i as f64 + 0.85, v.min(top))], BLUE_.filled())))
            .map_err(err)?;
        root.present().map_err(err)
    })
}

/// Every chart the report has data for, in reading order.
pub fn all(r: &Report) -> Vec<Chart> {
    let mut out = Vec::new();
    out.extend(tradeoff(r, &format!("{} vs size", r.metric), "size (KiB)", |row| row.size_bytes as f64 / 1024.0));
    out.extend(tradeoff(r, &format!("{} vs latency", r.metric), "P50 latency, batch 1 (ms)", |row| row.p50_ms));
    if let Some(a) = &r.analysis {
        out.extend(histogram("Latency distribution, baseline and chosen", &a.baseline.latency_samples_ms, &a.chosen.latency_samples_ms));
        let errs: Vec<(String, f64)> = a.layer_errors.iter().map(|l| (l.value.clone(), l.relative_error)).collect();
        out.extend(bars("Per-layer error of the chosen model", "relative error", &errs));
        let mut shifts: Vec<Series> = Vec::new();
        for s in &a.robustness {
            for (who, dashed, v) in [("baseline", true, s.baseline), ("chosen", false, s.chosen)] {
                let name = format!("{} ({who})", s.shift.replace('_', " "));
                match shifts.iter_mut().find(|x| x.0 == name) {
                    Some(x) => x.1.push(((x.1.len() + 1) as f64, v)),
                    None => shifts.push((name, vec![(1.0, v)], dashed)),
                }
            }
        }
        out.extend(lines("Robustness: metric under input shift", "severity step (1 mild … 3 strong; levels in the table)", &r.metric, &shifts, true));
    }
    let curves: Vec<Series> =
        r.curves.iter().take(12).map(|c| (c.name.clone(), c.levels.iter().copied().zip(c.drops.iter().copied()).collect(), false)).collect();
    out.extend(lines("Per-layer sensitivity", "level (share removed)", "metric drop (%)", &curves, false));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pareto_front_keeps_only_undominated_points() {
        let pts = [(10.0, 0.90), (5.0, 0.89), (5.0, 0.80), (2.0, 0.70), (8.0, 0.85)];
        assert_eq!(pareto(&pts, true), vec![(2.0, 0.70), (5.0, 0.89), (10.0, 0.90)]);
        // Lower-is-better metrics flip the comparison.
        assert_eq!(pareto(&[(1.0, 3.0), (2.0, 1.0), (3.0, 2.0)], false), vec![(1.0, 3.0), (2.0, 1.0)]);
    }
}
