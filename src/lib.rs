//! facebuild: a build system for face-model deployment pipelines.
//!
//! A YAML manifest ([`manifest`]) describes a DAG ([`graph`]) of steps ([`steps`]) that take
//! an ONNX model to validated artifacts. The [`scheduler`] runs them in order, in parallel
//! where independent, and caches every result by a blake3 action key ([`cache`]) over its
//! inputs, params and the versions of the [`toolchain`] it used. Models run through the
//! [`runtime`] trait; [`metrics`] and [`report`] turn results into gates and readable output.

pub mod cache;
pub mod cli;
pub mod context;
pub mod detect;
pub mod error;
pub mod graph;
pub mod manifest;
pub mod metrics;
pub mod onnx;
pub mod preprocess;
pub mod report;
pub mod runtime;
pub mod scheduler;
pub mod steps;
pub mod toolchain;
pub mod util;

pub use error::{Error, Result};
