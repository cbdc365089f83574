//! The scenarios' tables, printed as Markdown and written into docs/SCALING.md between
//! each section's markers (`<!-- cluster:ID -->` … `<!-- /cluster:ID -->`), leaving the
//! hand-written text around them alone.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// One measured section: a table and the lines that say how it was measured.
#[derive(Debug, Clone)]
pub struct Section {
    /// Its marker name in docs/SCALING.md.
    pub id: &'static str,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Section {
    pub fn new(id: &'static str, headers: &[&'static str]) -> Section {
        Section {
            id,
            headers: headers.to_vec(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }

    /// The table with aligned columns, then the notes.
    pub fn markdown(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .chain([self.headers[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut s = String::from("|");
            for (cell, w) in cells.zip(&widths) {
                let _ = write!(s, " {cell:<w$} |");
            }
            s.push('\n');
            s
        };
        let mut out = line(&mut self.headers.iter().copied());
        out.push('|');
        for w in &widths {
            let _ = write!(out, "{}|", "-".repeat(w + 2));
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(&mut r.iter().map(String::as_str)));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "{n}");
            }
        }
        out
    }
}

/// Replaces each section's marked block in `doc`.
pub fn write_sections(doc: &Path, sections: &[Section]) -> Result<()> {
    let mut text =
        std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    for s in sections {
        let (open, close) = (
            format!("<!-- cluster:{} -->", s.id),
            format!("<!-- /cluster:{} -->", s.id),
        );
        let (Some(start), Some(end)) = (text.find(&open), text.find(&close)) else {
            bail!("{} has no `{open}` … `{close}` block", doc.display());
        };
        if end < start {
            bail!("{}: `{close}` comes before `{open}`", doc.display());
        }
        let body = format!("{open}\n{}{close}", s.markdown());
        text.replace_range(start..end + close.len(), &body);
    }
    std::fs::write(doc, text).with_context(|| format!("writing {}", doc.display()))
}

/// A number with `decimals` digits after the point.
pub fn num(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_replace_only_their_own_block() {
        let dir = tempfile::tempdir().unwrap();
        let doc = dir.path().join("SCALING.md");
        std::fs::write(
            &doc,
            "intro\n<!-- cluster:a -->\nold a\n<!-- /cluster:a -->\nmiddle\n\
             <!-- cluster:b -->\nold b\n<!-- /cluster:b -->\nend\n",
        )
        .unwrap();
        let mut a = Section::new("a", &["x", "long header"]);
        a.row(vec!["1".into(), "2".into()]);
        a.note("measured somehow");
        write_sections(&doc, &[a]).unwrap();
        let text = std::fs::read_to_string(&doc).unwrap();
        assert_eq!(
            text,
            "intro\n<!-- cluster:a -->\n| x | long header |\n|---|-------------|\n\
             | 1 | 2           |\n\nmeasured somehow\n<!-- /cluster:a -->\nmiddle\n\
             <!-- cluster:b -->\nold b\n<!-- /cluster:b -->\nend\n"
        );
        let missing = Section::new("c", &["x"]);
        assert!(write_sections(&doc, &[missing]).is_err());
    }
}
