//! What facebuild shows people and machines: progress, and the plan/run/status renderings
//! (plain text for people, `--json` for machines).

pub(crate) mod faces;
pub(crate) mod run;
