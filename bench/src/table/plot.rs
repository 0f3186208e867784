//! The two plots of a measured table, as PNG and SVG (`plotters`):
//! `<table>-latency.{png,svg}`: latency against ReLU count, log-log, the
//! paper's column beside the measured offline + online and online times;
//! `<table>-breakdown.{png,svg}`: offline and online client wall time per row,
//! stacked by where the per-layer report puts it ([`super::measure::Parts`]).
//!
//! Text: plotters' `ttf` feature finds fonts through fontconfig, which a
//! machine without system fonts lacks. The `ab_glyph` feature rasterises an
//! embedded font instead, so the PNG's text needs nothing from the system:
//! pibench embeds DejaVu Sans Mono (`bench/assets/fonts/`, Bitstream Vera
//! licence) and registers it as `sans-serif`. The SVG files carry the text as
//! `<text>` elements (rendered by the viewer's fonts).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use thiserror::Error;

use super::measure::Parts;
use super::results::{is_latency_column, RowResult, TableResult};

/// The embedded font (DejaVu Sans Mono 2.37).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
/// The family name the plots ask for.
const FAMILY: &str = "sans-serif";

/// Errors while drawing.
#[derive(Debug, Error)]
pub enum PlotError {
    /// plotters failed (drawing, encoding or writing the file).
    #[error("{file}: {reason}")]
    Draw {
        /// The image file.
        file: String,
        /// plotters' message.
        reason: String,
    },
    /// The embedded font could not be registered.
    #[error("the embedded plot font cannot be read")]
    Font,
}

fn register() -> Result<(), PlotError> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        register_font(FAMILY, FontStyle::Normal, FONT).is_ok()
            && register_font(FAMILY, FontStyle::Bold, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// One point of the latency plot.
#[derive(Debug, Clone, PartialEq)]
struct LatPoint {
    relus: f64,
    paper: Option<f64>,
    total: Option<f64>,
    online: Option<f64>,
}

fn latency_points(t: &TableResult) -> Vec<LatPoint> {
    let lat_key = t
        .columns
        .iter()
        .find(|c| is_latency_column(c))
        .map(|c| c.key.clone());
    let mut v: Vec<LatPoint> = t
        .rows
        .iter()
        .filter_map(|r: &RowResult| {
            let relus = r.relus? as f64;
            if relus <= 0.0 {
                return None;
            }
            let paper = lat_key.as_ref().and_then(|k| {
                r.paper
                    .iter()
                    .find(|c| &c.key == k)
                    .and_then(|c| c.value)
                    .filter(|v| *v > 0.0)
            });
            let total = r.measured.as_ref().map(|m| m.total_s.median);
            let online = r.measured.as_ref().map(|m| m.online_s.median);
            (paper.is_some() || total.is_some()).then_some(LatPoint {
                relus,
                paper,
                total: total.filter(|v| *v > 0.0),
                online: online.filter(|v| *v > 0.0),
            })
        })
        .collect();
    v.sort_by(|a, b| a.relus.total_cmp(&b.relus));
    v
}

fn err<E: std::fmt::Debug>(file: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError::Draw {
        file: file.display().to_string(),
        reason: format!("{e:?}"),
    }
}

fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || hi <= 0.0 {
        return (0.1, 10.0);
    }
    (lo / 1.6, hi * 1.6)
}

/// A latency series: name, colour, value of a point.
type Series = (&'static str, RGBColor, fn(&LatPoint) -> Option<f64>);

fn draw_latency<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    t: &TableResult,
    file: &Path,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let pts = latency_points(t);
    root.fill(&WHITE).map_err(err(file))?;
    let (x0, x1) = log_range(pts.iter().map(|p| p.relus));
    let (y0, y1) = log_range(
        pts.iter()
            .flat_map(|p| [p.paper, p.total, p.online])
            .flatten(),
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: latency vs ReLUs", t.table.id),
            (FAMILY, 22).into_font(),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(err(file))?;
    chart
        .configure_mesh()
        .x_desc("ReLUs evaluated")
        .y_desc("seconds")
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .x_label_formatter(&|v| {
            if *v >= 1e3 {
                format!("{:.0}K", v / 1e3)
            } else {
                format!("{v:.0}")
            }
        })
        .y_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .draw()
        .map_err(err(file))?;
    let series: [Series; 3] = [
        ("paper (as printed)", RGBColor(200, 30, 30), |p| p.paper),
        ("measured offline + online", RGBColor(30, 70, 200), |p| {
            p.total
        }),
        ("measured online", RGBColor(30, 150, 60), |p| p.online),
    ];
    for (name, color, get) in series {
        let xy: Vec<(f64, f64)> = pts
            .iter()
            .filter_map(|p| get(p).map(|y| (p.relus, y)))
            .collect();
        if xy.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))
            .map_err(err(file))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                xy.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(err(file))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .draw()
        .map_err(err(file))?;
    root.present().map_err(err(file))?;
    Ok(())
}

/// The stacked parts, offline and online, with names and colours.
type PartDef = (&'static str, RGBColor, fn(&Parts) -> f64);

const OFFLINE_PARTS: [PartDef; 3] = [
    ("HE (linear nodes)", RGBColor(70, 110, 200), |p| {
        p.offline_he_s
    }),
    ("GC + OT (+ poly triples)", RGBColor(230, 140, 40), |p| {
        p.offline_gc_s
    }),
    ("other", RGBColor(150, 150, 150), |p| p.offline_other_s),
];

const ONLINE_PARTS: [PartDef; 3] = [
    ("linear (server GEMMs)", RGBColor(70, 170, 90), |p| {
        p.online_linear_s
    }),
    ("GC evaluation (sites)", RGBColor(200, 60, 60), |p| {
        p.online_gc_s
    }),
    (
        "other (input, pools, reveal)",
        RGBColor(150, 150, 150),
        |p| p.online_other_s,
    ),
];

fn draw_stack<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    rows: &[(String, Parts)],
    parts: &[PartDef],
    file: &Path,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let n = rows.len().max(1);
    let ymax = rows
        .iter()
        .map(|(_, p)| parts.iter().map(|(_, _, f)| f(p)).sum::<f64>())
        .fold(0f64, f64::max)
        .max(1e-3)
        * 1.12;
    let names: Vec<String> = rows.iter().map(|(n, _)| n.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 18).into_font())
        .margin(10)
        .x_label_area_size(120)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .map_err(err(file))?;
    let label_of = move |v: &f64| {
        let i = v.floor();
        if (v - i - 0.5).abs() < 1e-6 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&label_of)
        .y_desc("seconds (client wall)")
        .label_style((FAMILY, 12))
        .x_label_style(
            (FAMILY, 11)
                .into_font()
                .transform(FontTransform::Rotate90)
                .color(&BLACK),
        )
        .axis_desc_style((FAMILY, 14))
        .draw()
        .map_err(err(file))?;
    for (name, color, f) in parts {
        let color = *color;
        let bars: Vec<Rectangle<(f64, f64)>> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, (_, p))| {
                let base: f64 = parts
                    .iter()
                    .take_while(|(n2, _, _)| n2 != name)
                    .map(|(_, _, g)| g(p))
                    .sum();
                let h = f(p);
                (h > 0.0).then(|| {
                    Rectangle::new(
                        [(i as f64 + 0.15, base), (i as f64 + 0.85, base + h)],
                        color.filled(),
                    )
                })
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(err(file))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 12))
        .draw()
        .map_err(err(file))?;
    Ok(())
}

fn draw_breakdown<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    t: &TableResult,
    file: &Path,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err(file))?;
    let rows: Vec<(String, Parts)> = t
        .rows
        .iter()
        .filter_map(|r| Some((r.id.clone(), r.measured.as_ref()?.median().parts)))
        .collect();
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 - 40);
    let (left, right) = top.split_horizontally(top.dim_in_pixel().0 / 2);
    draw_stack(
        &left,
        &format!("{}: offline time per row", t.table.id),
        &rows,
        &OFFLINE_PARTS,
        file,
    )?;
    draw_stack(
        &right,
        &format!("{}: online time per row", t.table.id),
        &rows,
        &ONLINE_PARTS,
        file,
    )?;
    bottom
        .draw(&Text::new(
            "Split by the per-layer report (client wall time); OT is not timed apart from \
             garbling, nor the network apart from computation.",
            (10, 12),
            (FAMILY, 12).into_font(),
        ))
        .map_err(err(file))?;
    root.present().map_err(err(file))?;
    Ok(())
}

/// Draws both plots of a table as PNG and SVG into `dir`; returns the files.
pub fn write_plots(t: &TableResult, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    register()?;
    let id = &t.table.id;
    let n = t.rows.iter().filter(|r| r.measured.is_some()).count();
    let bw = (560 + 2 * 34 * n as u32).clamp(900, 2400);
    let mut out = Vec::new();
    let lat_png = dir.join(format!("{id}-latency.png"));
    draw_latency(
        BitMapBackend::new(&lat_png, (900, 640)).into_drawing_area(),
        t,
        &lat_png,
    )?;
    out.push(lat_png);
    let lat_svg = dir.join(format!("{id}-latency.svg"));
    draw_latency(
        SVGBackend::new(&lat_svg, (900, 640)).into_drawing_area(),
        t,
        &lat_svg,
    )?;
    out.push(lat_svg);
    let br_png = dir.join(format!("{id}-breakdown.png"));
    draw_breakdown(
        BitMapBackend::new(&br_png, (bw, 620)).into_drawing_area(),
        t,
        &br_png,
    )?;
    out.push(br_png);
    let br_svg = dir.join(format!("{id}-breakdown.svg"));
    draw_breakdown(
        SVGBackend::new(&br_svg, (bw, 620)).into_drawing_area(),
        t,
        &br_svg,
    )?;
    out.push(br_svg);
    Ok(out)
}
