//! Errors of the numerical core: plain data, turned into Python exceptions only at the
//! boundary (`src/py.rs`), so the core never depends on pyo3.

use std::fmt;

/// Everything the core can refuse or fail at. Variants carry the indices needed to name the
/// culprit; the Python layer maps them to `interlace.exceptions` types.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// Two inputs disagree in size (`what` says which).
    DimensionMismatch {
        what: String,
        expected: usize,
        found: usize,
    },
    /// A level code is negative or not below the term's number of levels.
    CodeOutOfRange {
        term: usize,
        row: usize,
        code: i64,
        n_levels: usize,
    },
    /// An input value is NaN or infinite.
    NonFinite { what: String, index: usize },
    /// θ has the wrong length or a non-finite entry.
    InvalidTheta { reason: String },
    /// A Cholesky pivot was not positive. `block` names the block of L ("random effects",
    /// "fixed effects"), `pivot` the position within it.
    NotPositiveDefinite { block: String, pivot: usize },
    /// A term or model shape the core does not support.
    Unsupported { reason: String },
    /// The estimated memory of the factor exceeds what the caller allowed.
    TooLarge { bytes: u128, limit: u128 },
    /// The caller asked to stop (Ctrl-C in Python).
    Interrupted,
    /// A Rust panic, caught at the boundary (a bug: it should never happen).
    Internal { reason: String },
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::DimensionMismatch {
                what,
                expected,
                found,
            } => write!(f, "{what}: expected {expected}, found {found}"),
            CoreError::CodeOutOfRange {
                term,
                row,
                code,
                n_levels,
            } => write!(
                f,
                "random-effects term {term}: level code {code} at row {row} is outside 0..{n_levels}"
            ),
            CoreError::NonFinite { what, index } => {
                write!(f, "{what} has a non-finite value at position {index}")
            }
            CoreError::InvalidTheta { reason } => write!(f, "invalid theta: {reason}"),
            CoreError::NotPositiveDefinite { block, pivot } => write!(
                f,
                "the {block} block of the Cholesky factor is not positive definite (pivot {pivot})"
            ),
            CoreError::Unsupported { reason } => write!(f, "unsupported model: {reason}"),
            CoreError::TooLarge { bytes, limit } => write!(
                f,
                "the model needs about {:.1} GB of memory, more than the {:.1} GB available; use fewer levels in the grouping factors other than the largest, or a machine with more memory",
                *bytes as f64 / 1e9,
                *limit as f64 / 1e9
            ),
            CoreError::Interrupted => write!(f, "interrupted"),
            CoreError::Internal { reason } => write!(f, "internal error: {reason}"),
        }
    }
}

impl std::error::Error for CoreError {}

pub type CoreResult<T> = Result<T, CoreError>;
