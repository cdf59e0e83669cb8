//! `facebuild builtin`: write a built-in model to a file.

use camino::Utf8PathBuf;
use clap::Args;

use crate::error::{Error, Result};
use crate::util::human_bytes;

/// `builtin`'s arguments.
#[derive(Args)]
pub(super) struct BuiltinArgs {
    /// iresnet-mini, iresnet18 or iresnet50
    pub(super) name: String,
    #[arg(short, long)]
    pub(super) output: Utf8PathBuf,
}

pub(super) fn builtin_cmd(args: BuiltinArgs) -> Result<i32> {
    let BuiltinArgs { name, output } = args;
    let b = crate::onnx::builtin::BuiltinModel::from_name(&name).ok_or_else(|| {
        Error::usage(format!("unknown built-in model `{name}`")).with_hint(format!(
            "choose one of {}",
            crate::onnx::builtin::BuiltinModel::names().join(", ")
        ))
    })?;
    let bytes = b.bytes();
    crate::cache::store::write_atomic(&output, &bytes)?;
    println!(
        "wrote {} ({}) to {output}",
        b.name(),
        human_bytes(bytes.len() as u64)
    );
    Ok(0)
}
