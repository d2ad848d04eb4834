//! Draws BENCHMARKS.png for `cargo xtask bench e2e`: select-only TPS by client count, one line per
//! target, one panel per protocol mode. Built only with the `plot` feature.
//!
//! Usage: `plot <select_only.csv> <out.png> <font.ttf>`; the CSV is `target,mode,clients,tps`.

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const PALETTE: [RGBColor; 6] = [
    RGBColor(90, 90, 90),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

struct Point {
    target: String,
    mode: String,
    clients: u32,
    tps: f64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [csv, png, font] = &args[..] else { bail!("usage: plot <select_only.csv> <out.png> <font.ttf>") };
    let font_bytes = std::fs::read(font).with_context(|| format!("reading the font {font}"))?;
    // plotters keeps registered fonts for the life of the process.
    let font_bytes: &'static [u8] = Box::leak(font_bytes.into_boxed_slice());
    if register_font("sans-serif", FontStyle::Normal, font_bytes).is_err() {
        bail!("{font} is not a usable TrueType font");
    }
    let points = read_points(&std::fs::read_to_string(csv).with_context(|| format!("reading {csv}"))?)?;
    draw(&points, png)
}

fn read_points(csv: &str) -> Result<Vec<Point>> {
    csv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let [target, mode, clients, tps] = fields[..] else { bail!("bad CSV line {line:?}") };
            Ok(Point {
                target: target.to_owned(),
                mode: mode.to_owned(),
                clients: clients.parse()?,
                tps: tps.parse()?,
            })
        })
        .collect()
}

fn draw(points: &[Point], png: &str) -> Result<()> {
    let mut targets: Vec<&str> = Vec::new();
    for p in points {
        if !targets.contains(&p.target.as_str()) {
            targets.push(&p.target);
        }
    }
    let max_tps = points.iter().map(|p| p.tps).fold(1.0, f64::max) * 1.3;
    let root = BitMapBackend::new(png, (1400, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled("pgbench -S (select-only), scale 10: TPS by clients", ("sans-serif", 26))?;
    let panels = root.split_evenly((1, 2));
    for (panel, mode) in panels.iter().zip(["simple", "prepared"]) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("-M {mode}"), ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(0u32..34u32, 0f64..max_tps)?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .y_desc("transactions per second")
            .x_labels(18)
            .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, target) in targets.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let mut series: Vec<(u32, f64)> = points
                .iter()
                .filter(|p| p.mode == mode && p.target == *target)
                .map(|p| (p.clients, p.tps))
                .collect();
            series.sort_by_key(|(c, _)| *c);
            chart
                .draw_series(LineSeries::new(series.clone(), color.stroke_width(3)))?
                .label(*target)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
            chart.draw_series(series.iter().map(|&(c, t)| Circle::new((c, t), 5, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present().with_context(|| format!("writing {png}"))?;
    Ok(())
}
