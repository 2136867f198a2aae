//! The expansions of each `matrix:` step side by side in `sluice show`: one row per
//! combination, one column per matrix value and per metric, so a sweep reads like a table of
//! results instead of steps scattered through the listing.

use std::io::Write;

use indexmap::IndexSet;

use crate::store::StepRecord;

/// Writes one table per step written with `matrix:`; nothing when the run has none.
pub fn write_sweeps(out: &mut impl Write, steps: &[StepRecord]) -> std::io::Result<()> {
    let sweeps = crate::store::sweeps(steps);
    for (written, cells) in sweeps {
        let axes: IndexSet<&str> = cells
            .iter()
            .flat_map(|c| c.matrix.keys().map(String::as_str))
            .collect();
        let metrics: IndexSet<&str> = cells
            .iter()
            .flat_map(|c| c.metrics.keys().map(String::as_str))
            .collect();
        let mut rows: Vec<Vec<String>> = Vec::with_capacity(cells.len() + 1);
        let header = axes
            .iter()
            .chain(std::iter::once(&"STATUS"))
            .chain(metrics.iter())
            .map(|h| h.to_string())
            .collect();
        rows.push(header);
        for cell in &cells {
            let mut row: Vec<String> = axes
                .iter()
                .map(|a| cell.matrix.get(*a).cloned().unwrap_or_default())
                .collect();
            row.push(cell.status.as_str().to_string());
            row.extend(metrics.iter().map(|m| match cell.metrics.get(*m) {
                Some(serde_json::Value::String(text)) => text.clone(),
                Some(value) => value.to_string(),
                None => "-".to_string(),
            }));
            rows.push(row);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        writeln!(out)?;
        writeln!(out, "SWEEP {written} ({} combinations)", cells.len())?;
        for row in rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            writeln!(out, "  {}", line.join("  ").trim_end())?;
        }
    }
    Ok(())
}
