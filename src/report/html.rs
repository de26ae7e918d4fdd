//! The report page: one HTML file with inline CSS, no script, and images by relative path.
//!
//! The page is built from plain values ([`Page`]); every text from the data (parameter values,
//! metric names, ids) is escaped here, so a value like `<b>` shows as typed.

use std::fmt::Write as _;

/// A table cell: text, right-aligned when `numeric`.
#[derive(Debug, Clone)]
pub struct Cell {
    pub text: String,
    pub numeric: bool,
}

impl Cell {
    pub fn text(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), numeric: false }
    }

    pub fn number(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), numeric: true }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    /// The colour of the configuration's lines (`#rrggbb`), when the figures show it.
    pub swatch: Option<String>,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone)]
pub struct Figure {
    /// The PNG's file name, relative to the page.
    pub file: String,
    pub alt: String,
    pub caption: String,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub title: String,
    pub intro: Option<String>,
    pub figures: Vec<Figure>,
    /// Smaller images side by side (sample grids) instead of full-width figures.
    pub gallery: bool,
}

#[derive(Debug, Clone)]
pub struct Page {
    pub title: String,
    /// Lines under the title: trial counts, the objective, the files read.
    pub facts: Vec<String>,
    pub table_title: String,
    pub table_note: String,
    pub header: Vec<String>,
    pub rows: Vec<Row>,
    pub sections: Vec<Section>,
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body { font-family: 'DejaVu Sans', 'Helvetica Neue', Arial, sans-serif; margin: 2em auto; max-width: 1320px;
       padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.facts { color: #555; margin: 0.2em 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.8em 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
span.swatch { display: inline-block; width: 1.6em; height: 0.55em; border-radius: 2px; margin-right: 0.4em; }
figure { margin: 1.2em 0 2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; max-width: 1100px; }
div.gallery { display: flex; flex-wrap: wrap; gap: 0.8em; }
div.gallery figure { margin: 0; text-align: center; }
div.gallery img { width: 168px; image-rendering: pixelated; }
p.note { color: #555; font-size: 0.9em; }
";

/// The whole page.
pub fn render(page: &Page) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&page.title),
        escape(&page.title)
    );
    for fact in &page.facts {
        let _ = writeln!(html, "<p class=\"facts\">{}</p>", escape(fact));
    }
    let _ = writeln!(html, "<h2>{}</h2>", escape(&page.table_title));
    let _ = writeln!(html, "<p class=\"note\">{}</p>", escape(&page.table_note));
    html.push_str("<table>\n<thead><tr>");
    for head in &page.header {
        let _ = write!(html, "<th>{}</th>", escape(head));
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    for row in &page.rows {
        html.push_str("<tr>");
        for (i, cell) in row.cells.iter().enumerate() {
            let class = if cell.numeric { " class=\"num\"" } else { "" };
            let swatch = match (&row.swatch, i) {
                (Some(color), 0) => format!("<span class=\"swatch\" style=\"background:{}\"></span>", escape(color)),
                _ => String::new(),
            };
            let _ = write!(html, "<td{class}>{swatch}{}</td>", escape(&cell.text));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody>\n</table>\n");
    for section in &page.sections {
        let _ = writeln!(html, "<h2>{}</h2>", escape(&section.title));
        if let Some(intro) = &section.intro {
            let _ = writeln!(html, "<p class=\"note\">{}</p>", escape(intro));
        }
        if section.gallery {
            html.push_str("<div class=\"gallery\">\n");
        }
        for figure in &section.figures {
            let _ = writeln!(
                html,
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
                escape(&figure.file),
                escape(&figure.alt),
                escape(&figure.caption)
            );
        }
        if section.gallery {
            html.push_str("</div>\n");
        }
    }
    html.push_str("</body>\n</html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_escaped_and_images_are_relative() {
        let page = Page {
            title: "sweep <x>".into(),
            facts: vec!["a & b".into()],
            table_title: "configurations".into(),
            table_note: "ranked".into(),
            header: vec!["rank".into(), "tie_break".into()],
            rows: vec![Row {
                swatch: Some("#1f77b4".into()),
                cells: vec![Cell::number("1"), Cell::text("<script>alert(1)</script>")],
            }],
            sections: vec![Section {
                title: "curves".into(),
                intro: None,
                figures: vec![Figure { file: "lab_mear_rgr.png".into(), alt: "a\"b".into(), caption: "c".into() }],
                gallery: false,
            }],
        };
        let html = render(&page);
        assert!(html.contains("<title>sweep &lt;x&gt;</title>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("<img src=\"lab_mear_rgr.png\" alt=\"a&quot;b\">"));
        assert!(html.contains("background:#1f77b4"));
        assert!(!html.contains("http"), "the page loads nothing from elsewhere");
    }
}
