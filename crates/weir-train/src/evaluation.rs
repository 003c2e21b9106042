//! What an evaluation found: each model's scores (overall, by slice,
//! curves), the gate's verdict, the history of the model's versions — what
//! [`crate::evaluate`] makes and [`crate::report`] draws.

use std::collections::BTreeMap;

use crate::metrics::{Bin, Metrics};

/// Curves of a two-class model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Curves {
    /// (false positive rate, true positive rate).
    pub roc: Vec<(f64, f64)>,
    /// (recall, precision).
    pub pr: Vec<(f64, f64)>,
    /// Reliability diagram of the second class's score.
    pub calibration: Vec<Bin>,
}

/// One model's scores on the dataset.
#[derive(Debug, Clone)]
pub struct Scored {
    /// `name@version`.
    pub model: String,
    /// Over all labelled rows.
    pub overall: Metrics,
    /// By value of the slice column.
    pub slices: BTreeMap<String, Metrics>,
    /// For two classes.
    pub curves: Option<Curves>,
}

/// What the gate decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The candidate may be promoted: it beats the champion, or there is none.
    Passed,
    /// It may not.
    Refused,
    /// The candidate is the champion: there is nothing to compare.
    Skipped,
}

impl Verdict {
    /// `passed`, `refused` or `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Refused => "refused",
            Self::Skipped => "skipped",
        }
    }
}

/// The gate's verdict, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// What it decided.
    pub verdict: Verdict,
    /// Why, rule by rule.
    pub reasons: Vec<String>,
}

impl Gate {
    /// Whether the candidate may be promoted (a skipped gate promotes
    /// nothing: the candidate is the champion already).
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Passed
    }

    /// Whether the evaluation went against the candidate.
    pub fn refused(&self) -> bool {
        self.verdict == Verdict::Refused
    }
}

/// An evaluation.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The dataset, as read.
    pub dataset: String,
    /// Labelled rows scored.
    pub rows: usize,
    /// The candidate.
    pub candidate: Scored,
    /// The champion, if the alias points at another version.
    pub champion: Option<Scored>,
    /// The verdict.
    pub gate: Gate,
    /// Each version's test metrics from its training run, by version.
    pub history: Vec<(u64, Metrics)>,
    /// The evaluation's run.
    pub run_id: String,
    /// The report (HTML), also stored with the run.
    pub report: String,
    /// Whether the champion alias now points at the candidate.
    pub promoted: bool,
}
