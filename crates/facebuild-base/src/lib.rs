//! The lowest layer: typed errors with context, the domain types every layer shares, small
//! file utilities and progress display.

pub mod domain;
pub mod error;
pub mod head;
pub mod progress;
pub mod util;

pub use error::{Error, Location, Result};
