//! Drawing the report's PNG figures with plotters: curve figures (stacked panels, one line and
//! band per configuration, a legend column on the right) and objective scatter plots.
//!
//! Figures are drawn into an RGB buffer (plotters' bitmap backend) and encoded with the `png`
//! crate. Text uses DejaVu Sans, compiled into the binary (`assets/fonts/`, with its license) and
//! registered with plotters' `ab_glyph` renderer: no system font library is needed to build or run.
//! This module draws what it is given; which lines and values go in is decided by the caller.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::aggregate::Band;
use super::{ReportError, Result};

/// DejaVu Sans 2.37 (Bitstream Vera license, see `assets/fonts/LICENSE-DejaVu.txt`).
static FONT_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FONT: &str = "sans-serif";

/// Matplotlib's "tab10" colours: distinct, readable on white, familiar from papers.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of the configuration ranked `rank` (0 = best), as in the HTML table.
pub fn color(rank: usize) -> RGBColor {
    PALETTE[rank % PALETTE.len()]
}

/// `#rrggbb` of [`color`].
pub fn color_hex(rank: usize) -> String {
    let RGBColor(r, g, b) = color(rank);
    format!("#{r:02x}{g:02x}{b:02x}")
}

const WIDTH: u32 = 1280;
const LEGEND_WIDTH: u32 = 360;
const PANEL_HEIGHT: u32 = 440;
const TITLE_HEIGHT: u32 = 56;
/// Room for a legend of 8 configurations beside a single panel.
const MIN_HEIGHT: u32 = 720;
/// Points up to which a line also gets a marker at each point.
const MARKER_POINTS: usize = 40;

type DrawResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Registers the bundled font with plotters once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_TTF).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, FONT_TTF).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Font)
    }
}

/// A configuration's line in a panel.
#[derive(Debug, Clone)]
pub struct PlotLine {
    /// The configuration's rank: picks its colour.
    pub rank: usize,
    pub band: Band,
    pub dashed: bool,
}

#[derive(Debug, Clone)]
pub struct PlotPanel {
    pub title: String,
    pub y_label: String,
    pub lines: Vec<PlotLine>,
}

/// One legend item: a colour swatch and lines of text (the first in bold).
#[derive(Debug, Clone)]
pub struct LegendEntry {
    pub rank: usize,
    pub text: Vec<String>,
}

/// Stacked panels sharing an x axis, and a legend column.
#[derive(Debug, Clone)]
pub struct LinesChart {
    pub title: String,
    pub x_label: String,
    pub panels: Vec<PlotPanel>,
    pub legend_title: String,
    pub legend: Vec<LegendEntry>,
    /// What solid and dashed lines stand for, when both appear.
    pub line_styles: Option<(String, String)>,
    /// Lines of small print under the legend (what the band is, windowing).
    pub notes: Vec<String>,
}

/// How a scatter plot's x axis reads its values.
#[derive(Debug, Clone)]
pub enum ScatterAxis {
    /// Numbers, on a logarithmic axis when `log`.
    Numeric { log: bool },
    /// Category `i` at x = i (points may sit a little left or right of it).
    Categories(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct ScatterChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub axis: ScatterAxis,
    /// One point per trial: (x, y, rank of its configuration if the figures show it).
    pub points: Vec<(f64, f64, Option<usize>)>,
    /// The mean objective at each x value.
    pub means: Vec<(f64, f64)>,
    pub notes: Vec<String>,
}

/// A tick label: up to 4 decimals without trailing zeros, scientific for very large or small.
pub fn number(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if x.abs() >= 1e6 || x.abs() < 1e-3 {
        return format!("{x:.2e}");
    }
    let text = format!("{x:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.to_string()
    }
}

/// `x` with `digits` significant digits (at least the integer part), e.g. 404.9 or 0.05432.
pub fn significant(x: f64, digits: usize) -> String {
    if !x.is_finite() || x == 0.0 {
        return number(x);
    }
    let magnitude = x.abs().log10().floor() as i64;
    if !(-4..6).contains(&magnitude) {
        return format!("{x:.*e}", digits.saturating_sub(1));
    }
    let decimals = (digits as i64 - 1 - magnitude).max(0) as usize;
    format!("{x:.decimals$}")
}

/// `lo..hi` widened by 5% each side; a zero-width range becomes a small one around it.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * lo.abs().max(1.0) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    let d = (hi - lo) * 0.05;
    (lo - d, hi + d)
}

fn write_png(path: &Path, pixels: &[u8], (width, height): (u32, u32)) -> Result<()> {
    let io = |source| ReportError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let png_error = |e: png::EncodingError| ReportError::Plot { path: path.to_path_buf(), reason: e.to_string() };
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(pixels).map_err(png_error)?;
    writer.finish().map_err(png_error)
}

/// Draws with `draw` on a white `size` canvas and writes it to `path` as a PNG.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> DrawResult,
) -> Result<()> {
    ensure_font()?;
    let mut pixels = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        let drawn = draw(&root).and_then(|()| root.present().map_err(Into::into));
        drawn.map_err(|e| ReportError::Plot { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    write_png(path, &pixels, size)
}

/// Draws `chart` into a PNG at `path`.
pub fn draw_lines(chart: &LinesChart, path: &Path) -> Result<()> {
    let panels = chart.panels.len().max(1) as u32;
    let size = (WIDTH, (TITLE_HEIGHT + panels * PANEL_HEIGHT).max(MIN_HEIGHT));
    render(path, size, |root| {
        let body = root.titled(&chart.title, (FONT, 26).into_font())?;
        let (plots, legend) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
        // One x range for all panels, so that a step lines up from panel to panel.
        let steps = chart.panels.iter().flat_map(|p| p.lines.iter().flat_map(|l| l.band.steps.iter().copied()));
        let (x_lo, x_hi) = steps.fold((i64::MAX, i64::MIN), |(lo, hi), s| (lo.min(s), hi.max(s)));
        let (x_lo, x_hi) = if x_lo > x_hi { (0.0, 1.0) } else { (x_lo as f64, x_hi as f64) };
        let x_range = if x_lo == x_hi { (x_lo - 1.0, x_hi + 1.0) } else { (x_lo, x_hi) };
        for (panel, area) in chart.panels.iter().zip(plots.split_evenly((chart.panels.len().max(1), 1))) {
            draw_panel(&area, panel, &chart.x_label, x_range)?;
        }
        draw_legend(&legend, chart)
    })
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &PlotPanel,
    x_label: &str,
    (x_lo, x_hi): (f64, f64),
) -> DrawResult {
    let x_ticks = ((x_hi - x_lo) as usize + 1).clamp(2, 9);
    let ranges: Vec<(f64, f64)> = panel.lines.iter().filter_map(|l| l.band.value_range()).collect();
    let y_lo = ranges.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    let y_hi = ranges.iter().map(|r| r.1).fold(f64::NEG_INFINITY, f64::max);
    let (y_lo, y_hi) = padded(y_lo, y_hi);

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 19).into_font())
        .margin_top(8)
        .margin_left(14)
        .margin_right(24)
        .margin_bottom(8)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(&panel.y_label)
        .x_labels(x_ticks)
        .y_labels(7)
        // Steps and epochs are whole numbers: no tick between two of them.
        .x_label_formatter(&|x| if x.fract() == 0.0 { number(*x) } else { String::new() })
        .y_label_formatter(&|y| number(*y))
        .label_style((FONT, 15).into_font())
        .axis_desc_style((FONT, 17).into_font())
        .bold_line_style(RGBColor(225, 225, 225))
        .max_light_lines(0)
        .draw()?;

    // Bands first, so that no band covers another configuration's line.
    for line in &panel.lines {
        let band = &line.band;
        if band.min.iter().zip(&band.max).all(|(lo, hi)| lo == hi) {
            continue;
        }
        let upper = band.steps.iter().zip(&band.max).map(|(s, v)| (*s as f64, *v));
        let lower = band.steps.iter().zip(&band.min).rev().map(|(s, v)| (*s as f64, *v));
        let outline: Vec<(f64, f64)> = upper.chain(lower).collect();
        chart.draw_series(std::iter::once(Polygon::new(outline, color(line.rank).mix(0.13).filled())))?;
    }
    // The best configuration (rank 0) last, on top.
    for line in panel.lines.iter().rev() {
        let style = color(line.rank).stroke_width(2);
        let points: Vec<(f64, f64)> =
            line.band.steps.iter().zip(&line.band.mean).map(|(s, v)| (*s as f64, *v)).collect();
        if line.dashed {
            chart.draw_series(DashedLineSeries::new(points.clone(), 9, 6, style))?;
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))?;
        }
        if points.len() <= MARKER_POINTS {
            let marker = if line.dashed { ShapeStyle::from(WHITE).filled() } else { color(line.rank).filled() };
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, marker)))?;
            if line.dashed {
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color(line.rank).stroke_width(1))))?;
            }
        }
    }
    Ok(())
}

fn draw_legend(area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, chart: &LinesChart) -> DrawResult {
    let text = (FONT, 14).into_font();
    let bold = (FONT, 15).into_font().style(FontStyle::Bold);
    let small = (FONT, 13).into_font().color(&RGBColor(80, 80, 80));
    let (x, mut y) = (10, 46);
    area.draw(&Text::new(chart.legend_title.clone(), (x, y), bold.clone()))?;
    y += 26;
    let (_, height) = area.dim_in_pixel();
    let styles_height = if chart.line_styles.is_some() { 52 } else { 0 };
    let bottom = height as i32 - 18 * chart.notes.len() as i32 - styles_height - 36;
    for entry in &chart.legend {
        if y + 18 * entry.text.len() as i32 > bottom {
            area.draw(&Text::new("(more in the table)", (x, y), small.clone()))?;
            y += 22;
            break;
        }
        let c = color(entry.rank);
        area.draw(&Rectangle::new([(x, y + 4), (x + 26, y + 10)], c.filled()))?;
        for (i, line) in entry.text.iter().enumerate() {
            let font = if i == 0 { bold.clone() } else { text.clone() };
            area.draw(&Text::new(line.clone(), (x + 36, y), font))?;
            y += 18;
        }
        y += 8;
    }
    y += 6;
    if let Some((solid, dashed)) = &chart.line_styles {
        let grey = RGBColor(60, 60, 60);
        area.draw(&PathElement::new(vec![(x, y + 7), (x + 26, y + 7)], grey.stroke_width(2)))?;
        area.draw(&Text::new(format!("solid: {solid}"), (x + 36, y), text.clone()))?;
        y += 20;
        for dash in [(x, x + 8), (x + 13, x + 21)] {
            area.draw(&PathElement::new(vec![(dash.0, y + 7), (dash.1, y + 7)], grey.stroke_width(2)))?;
        }
        area.draw(&Text::new(format!("dashed: {dashed}"), (x + 36, y), text.clone()))?;
        y += 26;
    }
    for note in &chart.notes {
        area.draw(&Text::new(note.clone(), (x, y), small.clone()))?;
        y += 18;
    }
    Ok(())
}

/// Draws `chart` into a PNG at `path`.
pub fn draw_scatter(chart: &ScatterChart, path: &Path) -> Result<()> {
    let size = (960, 620);
    render(path, size, |root| {
        let (y_lo, y_hi) =
            chart.points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        let (y_lo, y_hi) = padded(y_lo, y_hi);
        let (x_lo, x_hi) =
            chart.points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
        let notes_height = 20 * chart.notes.len() as u32 + 10;
        let (plot_area, notes_area) = root.split_vertically(size.1 - notes_height);
        // Few distinct numbers (a grid's values) are labelled exactly; categories by name.
        let mut distinct: Vec<f64> = chart.points.iter().map(|p| p.0).collect();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        let exact_ticks = (distinct.len() <= 10).then(|| distinct.iter().map(|&x| (x, number(x))).collect::<Vec<_>>());
        match &chart.axis {
            ScatterAxis::Numeric { log: true } if x_lo > 0.0 => {
                let (lo, hi) = (x_lo.ln(), x_hi.ln());
                let pad = ((hi - lo) * 0.08).max(0.1);
                scatter_on(
                    &plot_area,
                    chart,
                    ((lo - pad).exp()..(hi + pad).exp()).log_scale(),
                    y_lo..y_hi,
                    exact_ticks,
                )?
            }
            ScatterAxis::Numeric { .. } => {
                let (lo, hi) = padded(x_lo, x_hi);
                scatter_on(&plot_area, chart, lo..hi, y_lo..y_hi, exact_ticks)?
            }
            ScatterAxis::Categories(labels) => {
                let n = labels.len().max(1) as f64;
                let ticks = labels.iter().enumerate().map(|(i, l)| (i as f64, l.clone())).collect();
                scatter_on(&plot_area, chart, -0.5..n - 0.5, y_lo..y_hi, Some(ticks))?
            }
        }
        let small = (FONT, 13).into_font().color(&RGBColor(80, 80, 80));
        for (i, note) in chart.notes.iter().enumerate() {
            notes_area.draw(&Text::new(note.clone(), (16, 4 + 20 * i as i32), small.clone()))?;
        }
        Ok(())
    })
}

fn scatter_on<X>(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    chart: &ScatterChart,
    x_range: X,
    y_range: std::ops::Range<f64>,
    ticks: Option<Vec<(f64, String)>>,
) -> DrawResult
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let mut plot = ChartBuilder::on(area)
        .caption(&chart.title, (FONT, 22).into_font())
        .margin(16)
        .margin_right(30)
        .x_label_area_size(52)
        .y_label_area_size(84)
        .build_cartesian_2d(x_range, y_range)?;
    let mut mesh = plot.configure_mesh();
    mesh.y_desc(&chart.y_label)
        .y_labels(7)
        .y_label_formatter(&|y| number(*y))
        .x_label_formatter(&|x| number(*x))
        .label_style((FONT, 15).into_font())
        .axis_desc_style((FONT, 17).into_font())
        .bold_line_style(RGBColor(225, 225, 225))
        .max_light_lines(0);
    if ticks.is_some() {
        mesh.disable_x_mesh().x_labels(0).x_label_formatter(&|_| String::new());
    } else {
        mesh.x_desc(&chart.x_label).x_labels(8);
    }
    mesh.draw()?;
    // Configurations without a colour first, so that coloured points stay visible.
    let grey = RGBColor(170, 170, 170);
    let uncoloured = chart.points.iter().filter(|p| p.2.is_none());
    plot.draw_series(uncoloured.map(|&(x, y, _)| Circle::new((x, y), 4, grey.mix(0.7).filled())))?;
    let coloured = chart.points.iter().filter_map(|&(x, y, rank)| rank.map(|r| (x, y, r)));
    plot.draw_series(coloured.map(|(x, y, rank)| Circle::new((x, y), 5, color(rank).mix(0.8).filled())))?;
    let mut means = chart.means.clone();
    means.sort_by(|a, b| a.0.total_cmp(&b.0));
    let black = RGBColor(20, 20, 20);
    if !matches!(chart.axis, ScatterAxis::Categories(_)) && means.len() > 1 {
        plot.draw_series(LineSeries::new(means.iter().copied(), black.mix(0.5).stroke_width(1)))?;
    }
    for &(x, y) in &means {
        let (px, py) = plot.backend_coord(&(x, y));
        area.draw(&PathElement::new(vec![(px - 14, py), (px + 14, py)], black.stroke_width(3)))?;
    }
    if let Some(ticks) = ticks {
        // Tick marks and labels under the axis at the given x, then the axis description.
        let centred_top = plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        );
        let font = (FONT, 15).into_font().color(&BLACK).pos(centred_top);
        let y_bottom = plot.y_range().start;
        let (ax, ay) = area.get_base_pixel();
        let mut label_y = 0;
        for (x, label) in ticks {
            let (px, py) = plot.backend_coord(&(x, y_bottom));
            let (px, py) = (px - ax, py - ay);
            area.draw(&PathElement::new(vec![(px, py), (px, py + 5)], BLACK.stroke_width(1)))?;
            area.draw(&Text::new(label, (px, py + 9), font.clone()))?;
            label_y = py + 9;
        }
        let (plot_x, _) = plot.plotting_area().get_pixel_range();
        let centre = (plot_x.start + plot_x.end) / 2 - ax;
        let desc = (FONT, 17).into_font().color(&BLACK).pos(centred_top);
        area.draw(&Text::new(chart.x_label.clone(), (centre, label_y + 22), desc))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_read_like_numbers() {
        assert_eq!(number(10000.0), "10000");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(0.1 + 0.2), "0.3");
        assert_eq!(number(-0.00001), "-1.00e-5");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(2.5e7), "2.50e7");
        assert_eq!(significant(404.9187, 4), "404.9");
        assert_eq!(significant(89.9614, 4), "89.96");
        assert_eq!(significant(0.054321, 3), "0.0543");
        assert_eq!(significant(12345.6, 4), "12346");
    }

    #[test]
    fn a_figure_is_a_png_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let band = Band::over_seeds(&[
            &crate::report::data::Series::new([(1, 1.0), (2, 3.0)]),
            &crate::report::data::Series::new([(1, 2.0), (2, 5.0)]),
        ]);
        let chart = LinesChart {
            title: "t".into(),
            x_label: "step".into(),
            panels: vec![PlotPanel {
                title: "p".into(),
                y_label: "y".into(),
                lines: vec![PlotLine { rank: 0, band, dashed: false }],
            }],
            legend_title: "configurations".into(),
            legend: vec![LegendEntry { rank: 0, text: vec!["#1".into(), "lr=0.1".into()] }],
            line_styles: Some(("train".into(), "validation".into())),
            notes: vec!["band: min..max over seeds".into()],
        };
        let path = dir.path().join("lines.png");
        draw_lines(&chart, &path).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (WIDTH, MIN_HEIGHT));
    }
}
