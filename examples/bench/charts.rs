//! The benchmark's charts, SVG next to the JSON: grouped bars per case
//! (throughput, RTT, 64-byte rate) and programming time against the number
//! of leases.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

const COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

/// A white SVG canvas at `path`.
fn canvas(path: &Path) -> Result<DrawingArea<SVGBackend<'_>, plotters::coord::Shift>> {
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    Ok(root)
}

/// The series' legend, in the upper left corner.
fn legend<'a, CT: CoordTranslate>(chart: &mut ChartContext<'a, SVGBackend<'a>, CT>) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(err)
}

/// One bar per (case, series), grouped by case, each labelled with its
/// value; with `log`, the value axis is logarithmic (from 1).
pub(crate) fn bars(
    path: &Path,
    title: &str,
    unit: &str,
    cases: &[&str],
    series: &[(&str, Vec<f64>)],
    log: bool,
) -> Result<()> {
    let root = canvas(path)?;
    let max = series.iter().flat_map(|(_, v)| v.iter().copied()).fold(0.0f64, f64::max).max(1e-9);
    let n = cases.len() as f64;
    let builder = || {
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 20)).margin(12).x_label_area_size(30).y_label_area_size(60);
        b
    };
    if log {
        let mut chart = builder().build_cartesian_2d(-0.5f64..n - 0.5, (1f64..max * 2.0).log_scale()).map_err(err)?;
        draw_bars(&mut chart, cases, series, unit, 1.0, |v| v * 1.08)?;
    } else {
        let top = max * 1.18;
        let mut chart = builder().build_cartesian_2d(-0.5f64..n - 0.5, 0f64..top).map_err(err)?;
        draw_bars(&mut chart, cases, series, unit, 0.0, |v| v + top * 0.01)?;
    }
    root.present().map_err(err)
}

/// The mesh, bars, value labels and legend of [`bars`], on either axis.
fn draw_bars<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    cases: &[&str],
    series: &[(&str, Vec<f64>)],
    unit: &str,
    base: f64,
    label_at: impl Fn(f64) -> f64,
) -> Result<()>
where
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let name = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < cases.len() {
            cases[i as usize].to_string()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(cases.len())
        .x_label_formatter(&name)
        .y_label_formatter(&|y| if *y >= 20.0 { format!("{y:.0}") } else { format!("{y:.1}") })
        .y_desc(unit)
        .draw()
        .map_err(err)?;
    let width = 0.8 / series.len() as f64;
    for (j, (label, values)) in series.iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        let left = |i: usize| i as f64 - 0.4 + j as f64 * width;
        chart
            .draw_series(
                values.iter().enumerate().map(|(i, v)| {
                    Rectangle::new([(left(i), base), (left(i) + width * 0.92, v.max(base))], color.filled())
                }),
            )
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let text = if *v >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") };
                Text::new(text, (left(i), label_at(v.max(base))), ("sans-serif", 10).into_font().color(&BLACK))
            }))
            .map_err(err)?;
    }
    if series.len() > 1 {
        legend(chart)?;
    }
    Ok(())
}

/// Lines of (x, y) points, e.g. seconds to program against lease count.
pub(crate) fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()> {
    let root = canvas(path)?;
    let points = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let x_max = points().map(|p| p.0).fold(0.0f64, f64::max).max(1.0) * 1.05;
    let y_max = points().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (j, (label, pts)) in series.iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(err)?;
        chart
            .draw_series(pts.iter().map(|(x, y)| {
                Text::new(format!("{y:.2} s"), (*x, *y + y_max * 0.02), ("sans-serif", 11).into_font().color(&BLACK))
            }))
            .map_err(err)?;
    }
    legend(&mut chart)?;
    root.present().map_err(err)
}
