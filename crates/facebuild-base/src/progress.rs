//! Progress display: indicatif spinners on a terminal; plain lines when stderr is not one
//! (CI logs), so long work is always visible and logs stay readable.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static MULTI: OnceLock<MultiProgress> = OnceLock::new();

pub fn is_tty() -> bool {
    std::io::stderr().is_terminal()
}

fn multi() -> &'static MultiProgress {
    MULTI.get_or_init(|| {
        let target = if is_tty() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        MultiProgress::with_draw_target(target)
    })
}

pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    let pb = multi().add(ProgressBar::new_spinner());
    pb.set_style(
        ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {elapsed:>4} {wide_msg}")
            .expect("valid template"),
    );
    pb.set_message(msg.into());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

pub fn bytes_bar(total: u64, msg: impl Into<String>) -> ProgressBar {
    let pb = multi().add(ProgressBar::new(total));
    pb.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {bytes}/{total_bytes} {wide_msg}")
            .expect("valid template"),
    );
    pb.set_message(msg.into());
    pb
}

/// Print a line above the bars (or plainly, when there are none).
pub fn note(_pb: &ProgressBar, line: &str) {
    println_err(line);
}

pub fn println_err(line: &str) {
    if is_tty() {
        let _ = multi().println(line);
    } else {
        eprintln!("{line}");
    }
}
