//! Latency-by-percentile plots as PNG, drawn in Rust (plotters, its
//! ab_glyph text) with a font shipped in the repository: no gnuplot, no
//! fontconfig, nothing from the system.

use std::{path::Path, sync::Once};

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// DejaVu Sans (Bitstream Vera licence, `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// The deepest percentile drawn: 99.999 (x = 1 / (1 - q) = 100,000).
const X_MAX: f64 = 100_000.0;

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One curve: a system's latency distribution (µs).
pub struct Series<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Its latencies.
    pub hist: &'a Histogram<u64>,
}

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| anyhow!("the shipped font does not load"));
    });
    result
}

/// `x = 1 / (1 - q)` as the percentile it stands for: 10 → "90%".
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x.max(1.0));
    let digits = (x.log10().floor() as i32 - 2).clamp(0, 4) as usize;
    format!("{p:.digits$}%")
}

/// The curve's points: (1 / (1 - q), latency in ms), up to p99.999.
fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = h
        .iter_quantiles(10)
        .map(|v| {
            let q = v.quantile_iterated_to();
            let x = if q >= 1.0 - 1.0 / X_MAX {
                X_MAX
            } else {
                1.0 / (1.0 - q)
            };
            (x, (v.value_iterated_to() as f64 / 1000.0).max(0.001))
        })
        .collect();
    pts.dedup_by(|b, a| b.0 <= a.0 && b.0 >= X_MAX);
    pts
}

/// Draws `series` side by side: percentile (log, as HdrHistogram plots do)
/// against latency in ms (log), into a 1200×700 PNG at `path`.
pub fn percentile_curves(path: &Path, title: &str, series: &[Series<'_>]) -> Result<()> {
    register_font()?;
    let drawn: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|s| !s.hist.is_empty())
        .map(|s| (s.name, points(s.hist)))
        .collect();
    if drawn.is_empty() {
        return Err(anyhow!("nothing to plot for {title}"));
    }
    // The floor is the lowest p1: a few near-zero samples would otherwise
    // stretch the axis over decades nobody reads.
    let y_min = series
        .iter()
        .filter(|s| !s.hist.is_empty())
        .map(|s| s.hist.value_at_quantile(0.01) as f64 / 1000.0)
        .fold(f64::INFINITY, f64::min)
        .max(0.001)
        * 0.8;
    let drawn: Vec<(&str, Vec<(f64, f64)>)> = drawn
        .into_iter()
        .map(|(n, p)| (n, p.into_iter().map(|(x, y)| (x, y.max(y_min))).collect()))
        .collect();
    let y_max = drawn
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0, f64::max)
        * 1.25;
    let e = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 24))
        .margin(20)
        .margin_right(60)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((1.0..X_MAX).log_scale(), (y_min..y_max).log_scale())
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .label_style((FAMILY, 16))
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, pts)) in drawn.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(3)))
            .map_err(|x| e(&x))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_labelled_as_people_read_them() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
    }

    #[test]
    fn a_png_is_drawn_with_the_shipped_font() {
        let mut a = crate::openloop::histogram().expect("test setup");
        let mut b = crate::openloop::histogram().expect("test setup");
        for v in 1..=10_000u64 {
            a.record(100 + v / 10).expect("test setup");
            b.record(150 + v / 5).expect("test setup");
        }
        let dir = std::env::temp_dir().join(format!("gw-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test setup");
        let png = dir.join("t.png");
        percentile_curves(
            &png,
            "test",
            &[
                Series {
                    name: "a",
                    hist: &a,
                },
                Series {
                    name: "b",
                    hist: &b,
                },
            ],
        )
        .expect("test setup");
        let bytes = std::fs::read(&png).expect("test setup");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
