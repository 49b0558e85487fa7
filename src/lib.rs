//! interlace's numerical core: linear mixed models with lme4's semantics, organised as
//! MixedModels.jl organises them. The modules here never touch Python; `py` (behind the
//! `python` feature) is the only boundary.

// Numerical kernels index by the same subscripts as the equations they implement.
#![allow(clippy::needless_range_loop)]

pub mod bootstrap;
pub mod dense;
pub mod error;
pub mod influence;
pub mod model;
pub mod optimize;
mod sparse_rest;
mod sparse_split;
mod two_threads;
pub mod start;
#[cfg(test)]
mod test_rng;

#[cfg(feature = "python")]
mod py;

pub use error::{CoreError, CoreResult};
pub use model::{Estimates, Model, Term};
pub use optimize::{fit, FitOptions, OptimizationRecord};
