//! The table printed at the end: each figure, station beside baseline, and the ratio.

use std::time::Duration;

/// One line of the table.
pub struct Row {
    name: String,
    station: f64,
    baseline: f64,
    /// True when more is better (throughput), false when less is (latency, memory).
    higher_is_better: bool,
    /// Target description and whether it is met.
    target: Option<(String, bool)>,
    notes: Vec<String>,
}

impl Row {
    /// A figure where more is better; ratio = station / baseline, target a minimum ratio.
    pub fn higher(name: String, station: f64, baseline: f64, min_ratio: Option<f64>) -> Row {
        let target = min_ratio.map(|min| {
            (
                format!(">= {min}x"),
                baseline > 0.0 && station / baseline >= min,
            )
        });
        Row {
            name,
            station,
            baseline,
            higher_is_better: true,
            target,
            notes: Vec::new(),
        }
    }

    /// A figure where less is better; ratio = station / baseline, target a maximum ratio.
    pub fn lower(name: String, station: f64, baseline: f64, max_ratio: Option<f64>) -> Row {
        let target = max_ratio.map(|max| {
            (
                format!("<= {max}x"),
                baseline > 0.0 && station / baseline <= max,
            )
        });
        Row {
            name,
            station,
            baseline,
            higher_is_better: false,
            target,
            notes: Vec::new(),
        }
    }

    /// Sets an absolute target and whether it is met.
    pub fn target(mut self, text: &str, met: bool) -> Row {
        self.target = Some((text.to_owned(), met));
        self
    }

    /// Adds a line printed under the table.
    pub fn note(mut self, note: String) -> Row {
        self.notes.push(note);
        self
    }
}

/// Every row and every figure that could not be measured.
#[derive(Default)]
pub struct Report {
    /// Measured figures, in order.
    pub rows: Vec<Row>,
    /// Figures that failed to run, with why.
    pub failures: Vec<String>,
}

fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

impl Report {
    /// Prints the table and its notes to stdout.
    pub fn print(&self, took: Duration) {
        let width = self
            .rows
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        println!();
        println!(
            "{:<width$}  {:>10}  {:>10}  {:>7}  {:<10}  result",
            "figure", "station", "baseline", "ratio", "target"
        );
        println!("{}", "-".repeat(width + 55));
        for row in &self.rows {
            let ratio = if row.baseline > 0.0 {
                format!("{:.2}x", row.station / row.baseline)
            } else {
                "n/a".to_owned()
            };
            let (target, result) = match &row.target {
                Some((text, true)) => (text.as_str(), "meets"),
                Some((text, false)) => (text.as_str(), "MISSES"),
                None => (
                    "-",
                    if row.higher_is_better {
                        "(more is better)"
                    } else {
                        "(less is better)"
                    },
                ),
            };
            println!(
                "{:<width$}  {:>10}  {:>10}  {:>7}  {:<10}  {result}",
                row.name,
                number(row.station),
                number(row.baseline),
                ratio,
                target
            );
        }
        println!();
        for row in &self.rows {
            for note in &row.notes {
                println!("  {}: {note}", row.name.split(' ').next().unwrap_or(""));
            }
        }
        for failure in &self.failures {
            println!("  FAILED TO RUN {failure}");
        }
        println!(
            "baselines: bare tokio-tungstenite broadcast server (figures 1, 2, 4, 5), raw SQLite \
             via sqlx (figure 3), raw PostgreSQL via sqlx on the same server (figure 6), the same \
             pods with every peer on the resource's home (figures 7, 8), the same station in \
             plaintext (figure 9), a bare tokio-rustls server (figure 10); ratio = station / \
             baseline; whole bench {:.0} s",
            took.as_secs_f64()
        );
    }
}
