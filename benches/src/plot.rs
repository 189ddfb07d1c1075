//! SVG charts of a runner [`Report`]: throughput against worker count (the CPU-bound
//! families) and throughput and latency against message size (queue and pipe families).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::runner::{Report, WorkloadResult};
use crate::workloads::Kind;

/// One line of a chart: a contender's medians against the parameter.
struct Line {
    name: String,
    kind: Kind,
    points: Vec<(f64, f64)>,
}

fn lines(ws: &[&WorkloadResult], scale: f64) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    for w in ws {
        let Some((_, x)) = w.param else { continue };
        for c in &w.contenders {
            let Some(s) = &c.summary else { continue };
            // Names that embed the worker count ("ideal: 2 x ...") are grouped by kind.
            let name = if c.name.starts_with("ideal") {
                "ideal (N x one thread)".to_string()
            } else {
                c.name.clone()
            };
            let y = s.median * scale;
            match out.iter_mut().find(|l| l.name == name) {
                Some(l) => l.points.push((x as f64, y)),
                None => out.push(Line {
                    name,
                    kind: c.kind,
                    points: vec![(x as f64, y)],
                }),
            }
        }
    }
    for l in &mut out {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// Distinct colours on white; ours is always the first (red) and drawn thicker.
const COLORS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];

fn style(i: usize, kind: Kind) -> ShapeStyle {
    let color = COLORS[i % COLORS.len()];
    let width = if kind == Kind::Ours { 3 } else { 1 };
    color.stroke_width(width)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_panel(
    area: &Area<'_>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    log_x: bool,
) -> Result<(), String> {
    let pts = lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 || y0 <= 0.0 {
        return Ok(());
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
        x0 = (x0 - 1.0).max(if log_x { x0 / 2.0 } else { 0.0 });
    }
    let e = |e: &dyn std::fmt::Display| e.to_string();
    // Worker counts are integers: one label per count.
    let x_labels = if log_x {
        10
    } else {
        (x1 - x0).round() as usize + 1
    };
    let mut chart = ChartBuilder::on(area);
    chart
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let y_range = ((y0 / 2.0)..(y1 * 2.0)).log_scale();
    macro_rules! finish {
        ($c:expr) => {{
            let mut c = $c;
            c.configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .light_line_style(RGBColor(238, 238, 238))
                .y_label_formatter(&|v| short(*v))
                .x_label_formatter(&|v| {
                    if log_x || (v - v.round()).abs() < 1e-6 {
                        short(*v)
                    } else {
                        String::new()
                    }
                })
                .x_labels(x_labels)
                .draw()
                .map_err(|x| e(&x))?;
            for (i, l) in lines.iter().enumerate() {
                let st = style(i, l.kind);
                c.draw_series(LineSeries::new(l.points.iter().copied(), st))
                    .map_err(|x| e(&x))?
                    .label(format!("{} ({})", l.name, l.kind.label()))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], st));
                c.draw_series(
                    l.points
                        .iter()
                        .map(move |&p| Circle::new(p, 3, st.filled())),
                )
                .map_err(|x| e(&x))?;
            }
            c.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 11))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|x| e(&x))?;
        }};
    }
    if log_x {
        finish!(
            chart
                .build_cartesian_2d(((x0 / 1.5)..(x1 * 1.5)).log_scale(), y_range)
                .map_err(|x| e(&x))?
        );
    } else {
        finish!(
            chart
                .build_cartesian_2d((x0 - 0.25)..(x1 + 0.25), y_range)
                .map_err(|x| e(&x))?
        );
    }
    Ok(())
}

fn short(v: f64) -> String {
    let trim = |x: f64| {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    let a = v.abs();
    if a >= 1e9 {
        format!("{}G", trim(v / 1e9))
    } else if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else if a >= 0.01 || a == 0.0 {
        trim(v)
    } else {
        format!("{v:.1e}")
    }
}

fn family<'a>(r: &'a Report, f: &str) -> Vec<&'a WorkloadResult> {
    r.workloads.iter().filter(|w| w.family == f).collect()
}

/// Writes `workers.svg` and `sizes.svg` (when the report has those families) into `dir`.
pub fn write_charts(r: &Report, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let io = std::io::Error::other;
    let cpu: Vec<(&str, Vec<&WorkloadResult>)> = ["cpu_10us", "cpu_100us"]
        .iter()
        .map(|f| (*f, family(r, f)))
        .filter(|(_, w)| !w.is_empty())
        .collect();
    if !cpu.is_empty() {
        let path = dir.join("workers.svg");
        {
            let root = SVGBackend::new(&path, (560 * cpu.len() as u32, 460)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| io(e.to_string()))?;
            let areas = root.split_evenly((1, cpu.len()));
            for ((f, ws), area) in cpu.iter().zip(areas.iter()) {
                draw_panel(
                    area,
                    &format!(
                        "{} tasks: throughput vs workers",
                        f.trim_start_matches("cpu_")
                    ),
                    "workers",
                    "tasks/s",
                    &lines(ws, 1.0),
                    false,
                )
                .map_err(io)?;
            }
            root.present().map_err(|e| io(e.to_string()))?;
        }
        written.push(path);
    }
    let panels: Vec<(&str, &str, Vec<&WorkloadResult>, f64)> = vec![
        (
            "queue 1->1: throughput vs message size",
            "MB/s",
            family(r, "queue_spsc"),
            0.0,
        ),
        (
            "pipe round trip (hot) vs message size",
            "us",
            family(r, "pipe_rtt_hot"),
            1e6,
        ),
        (
            "pipe round trip (asleep) vs message size",
            "us",
            family(r, "pipe_rtt_asleep"),
            1e6,
        ),
    ]
    .into_iter()
    .filter(|p| p.2.len() > 1)
    .collect();
    if !panels.is_empty() {
        let path = dir.join("sizes.svg");
        {
            let root = SVGBackend::new(&path, (560 * panels.len() as u32, 460)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| io(e.to_string()))?;
            let areas = root.split_evenly((1, panels.len()));
            for ((title, unit, ws, scale), area) in panels.iter().zip(areas.iter()) {
                let mut ls = if *scale == 0.0 {
                    // Bytes per second, from messages per second times the size.
                    let mut ls = lines(ws, 1.0);
                    for l in &mut ls {
                        for p in &mut l.points {
                            p.1 *= p.0 / 1e6;
                        }
                    }
                    ls
                } else {
                    lines(ws, *scale)
                };
                ls.retain(|l| l.points.len() > 1);
                draw_panel(area, title, "message bytes", unit, &ls, true).map_err(io)?;
            }
            root.present().map_err(|e| io(e.to_string()))?;
        }
        written.push(path);
    }
    Ok(written)
}
