//! The one progress-bar style of prdit (training steps, sampling steps, volumes of `prepare`
//! and the evaluations): on stderr, only when it is a terminal and the user did not ask for
//! quiet; otherwise there is no bar and the callers log lines instead.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether progress bars are shown: not `quiet`, and stderr is a terminal.
pub fn enabled(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// A bar of `len` units called `what` (`steps`, `real volumes`), or `None` unless `enabled`.
/// It shows the count, the rate, the ETA and then the bar's message (`set_message`).
pub fn bar(len: u64, what: &str, enabled: bool) -> Option<ProgressBar> {
    enabled.then(|| {
        let what = what.replace('{', "{{").replace('}', "}}");
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{bar:30}} {{pos}}/{{len}} {what}  {{per_sec}}  ETA {{eta}}  {{msg}}"
            ))
            .expect("valid template"),
        );
        bar
    })
}

/// Sets a bar to `pos` (a resumed run) without counting those units into its rate: the rate
/// and ETA then come from the units done in this process only.
pub fn resume_at(bar: &ProgressBar, pos: u64) {
    bar.set_position(pos);
    bar.reset_eta();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_only_when_enabled() {
        assert!(bar(10, "steps", false).is_none());
        let b = bar(10, "odd {name}", true).expect("a bar");
        b.set_position(3);
        assert_eq!(b.position(), 3);
        assert_eq!(b.length(), Some(10));
    }

    #[test]
    fn a_resumed_bar_rates_only_new_steps() {
        let b = ProgressBar::hidden();
        b.set_length(100_000);
        resume_at(&b, 50_000);
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            b.inc(1);
        }
        // About 50 steps/s; the 50 000 steps before the resume would make it thousands.
        assert!(b.per_sec() < 500.0, "{} steps/s", b.per_sec());
    }
}
