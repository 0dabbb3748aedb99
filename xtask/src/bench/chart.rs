//! The bench's charts, drawn as PNG with `plotters`. Text uses DejaVu Sans from the Debian
//! package fonts-dejavu-core (installed by `cargo xtask setup`), registered with plotters'
//! own glyph renderer, so no fontconfig is involved.

use std::{fmt::Display, ops::Range, path::Path, sync::OnceLock};

use anyhow::{Context as _, Result, anyhow};
use plotters::{
    coord::{
        Shift,
        ranged1d::{DefaultFormatting, KeyPointHint},
    },
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// The TTF every chart's text is drawn with.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The reload matrix chart, pixels.
const MATRIX_SIZE: (u32, u32) = (1600, 1000);
/// Bar colours of the latency percentiles p50, p99, p99.9.
const PERCENTILE_COLORS: [RGBColor; 3] =
    [RGBColor(0x4c, 0x72, 0xb0), RGBColor(0xdd, 0x84, 0x52), RGBColor(0xc4, 0x4e, 0x52)];
const PERCENTILE_NAMES: [&str; 3] = ["p50", "p99", "p99.9"];
/// Bars of failed requests: some failed, none failed.
const FAILED_COLOR: RGBColor = RGBColor(0xc4, 0x4e, 0x52);
const CLEAN_COLOR: RGBColor = RGBColor(0x55, 0xa8, 0x68);

/// What the reload matrix chart shows of one mode.
pub struct ModeBars {
    pub label: String,
    pub failed: u64,
    /// p50, p99, p99.9 of successful requests, milliseconds.
    pub latency_ms: [f64; 3],
}

/// Two panels, one above the other: failed requests per mode, and the latency percentiles
/// per mode, both on log scales with the values written on the bars.
pub fn reload_matrix(path: &Path, modes: &[ModeBars]) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, MATRIX_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let (top, bottom) = root.split_vertically(MATRIX_SIZE.1 / 2);
    failed_panel(&top, modes)?;
    latency_panel(&bottom, modes)?;
    root.present().map_err(drawing)
}

fn failed_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, modes: &[ModeBars]) -> Result<()> {
    let most = modes.iter().map(|m| m.failed).max().unwrap_or(0);
    // Log scale from below 1, so that a single failure still shows as a bar.
    let top = (most as f64 * 4.0).max(10.0);
    let mut chart = ChartBuilder::on(area)
        .caption("failed requests per mode (log scale; the count above each bar)", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(ModeAxis(modes.len()), (0.5..top).log_scale())
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| mode_label(modes, *x))
        .y_label_formatter(&|y| if *y < 1.0 { String::new() } else { format!("{y:.0}") })
        .y_desc("failed requests")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(drawing)?;
    let bars = modes.iter().enumerate().filter(|(_, m)| m.failed > 0).map(|(i, m)| {
        let x = i as f64;
        Rectangle::new([(x + 0.25, 0.5), (x + 0.75, m.failed as f64)], FAILED_COLOR.filled())
    });
    chart.draw_series(bars).map_err(drawing)?;
    let counts = modes.iter().enumerate().map(|(i, m)| {
        let color = if m.failed > 0 { FAILED_COLOR } else { CLEAN_COLOR };
        let style = ("sans-serif", 20).into_font().color(&color).pos(Pos::new(HPos::Center, VPos::Bottom));
        Text::new(m.failed.to_string(), (i as f64 + 0.5, (m.failed as f64).max(0.5)), style)
    });
    chart.draw_series(counts).map_err(drawing)?;
    Ok(())
}

fn latency_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, modes: &[ModeBars]) -> Result<()> {
    let values = || modes.iter().flat_map(|m| m.latency_ms).filter(|v| *v > 0.0);
    let low = values().fold(f64::INFINITY, f64::min).min(1.0) / 2.0;
    let high = values().fold(0.0, f64::max).max(1.0) * 3.0;
    let mut chart = ChartBuilder::on(area)
        .caption("latency of successful requests per mode (ms, log scale)", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(ModeAxis(modes.len()), (low..high).log_scale())
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|x| mode_label(modes, *x))
        .y_label_formatter(&|y| format!("{y}"))
        .y_desc("milliseconds")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(drawing)?;
    for (p, (name, color)) in PERCENTILE_NAMES.iter().zip(PERCENTILE_COLORS).enumerate() {
        let offset = 0.14 + 0.24 * p as f64;
        let bars = modes.iter().enumerate().map(|(i, m)| {
            let x = i as f64 + offset;
            Rectangle::new([(x, low), (x + 0.24, m.latency_ms[p].max(low))], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(drawing)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        let texts = modes.iter().enumerate().map(|(i, m)| {
            let style =
                ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
            let value = m.latency_ms[p];
            Text::new(format!("{value:.1}"), (i as f64 + offset + 0.12, value.max(low)), style)
        });
        chart.draw_series(texts).map_err(drawing)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)
}

/// An x axis with one unit per mode (`0..count`) and a tick at the middle of each, where
/// [`mode_label`] writes the mode's name.
struct ModeAxis(usize);

impl Ranged for ModeAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = f64::from(limit.1 - limit.0);
        limit.0 + (value / self.0 as f64 * span).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold points only: ticks and labels, no light mesh lines between the modes.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.0).map(|i| i as f64 + 0.5).collect()
        }
    }

    fn range(&self) -> Range<f64> {
        0.0..self.0 as f64
    }
}

/// The name of the mode whose unit holds `x`.
fn mode_label(modes: &[ModeBars], x: f64) -> String {
    modes.get(x.floor() as usize).map(|m| m.label.clone()).unwrap_or_default()
}

/// Registers [`FONT`] as plotters' `sans-serif`, once per process.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT)
                .map_err(|err| format!("could not read {FONT} (Debian package fonts-dejavu-core): {err}"))?;
            // plotters keeps the font for the whole process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT} is not a font plotters can read"))
        })
        .clone()
        .map_err(|err| anyhow!(err))
        .context("registering the charts' font")
}

/// A plotters error (its error types carry the backend's), as text.
fn drawing(err: impl Display) -> anyhow::Error {
    anyhow!("drawing failed: {err}")
}
