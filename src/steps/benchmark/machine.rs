//! What the machine is: part of every benchmark's result and of its cache key.

use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// The machine a benchmark measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cores: usize,
    /// The ISA flags that change inference speed (AVX-512, VNNI, AMX...).
    pub isa: Vec<String>,
    pub memory_gib: Option<f64>,
    pub gpu: Option<String>,
    pub os: String,
    pub arch: String,
}

/// This machine, read once per process (plan and run key every benchmark step with it).
pub(crate) fn machine() -> Machine {
    static MACHINE: std::sync::OnceLock<Machine> = std::sync::OnceLock::new();
    MACHINE.get_or_init(describe_machine).clone()
}

fn describe_machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let isa: Vec<String> = [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "avx_vnni",
    ]
    .into_iter()
    .filter(|f| flags.split_whitespace().any(|x| x == *f))
    .map(String::from)
    .collect();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let gpu = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    Machine {
        cpu: field("model name").unwrap_or_else(|| "unknown".into()),
        logical_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        isa,
        memory_gib: mem,
        gpu,
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
    }
}

/// The CPU's ISA class: the architecture and the instruction-set extensions that change
/// inference results (bf16 and int8 paths, vector widths). Part of the key of every step
/// that runs inference, so CI runners of one class share results and other classes do not.
pub(crate) fn isa_class() -> String {
    let m = machine();
    format!(
        "{} {}",
        m.arch,
        if m.isa.is_empty() {
            "baseline".to_string()
        } else {
            m.isa.join(",")
        }
    )
}

/// The part of the machine description that changes figures: the cache key's `machine`.
pub(crate) fn machine_fingerprint() -> String {
    let m = machine();
    format!(
        "{} | {} cores | {} | gpu {}",
        m.cpu,
        m.logical_cores,
        m.isa.join(","),
        m.gpu.as_deref().unwrap_or("none")
    )
}
