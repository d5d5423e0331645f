//! Progress bars on a terminal: one line per layer being hashed, compressed, copied or
//! uploaded (its bytes, total and rate), and one for the whole write, drawn with indicatif on
//! standard error. None when standard error is not a terminal or with `--quiet`: the log lines
//! stand alone there.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use strata_transport::progress::{Progress, Silent, Stage};

/// What the command reports progress to: bars where someone watches, else nothing.
pub fn progress(quiet: bool) -> Arc<dyn Progress> {
    if quiet || !std::io::stderr().is_terminal() {
        return Arc::new(Silent);
    }
    Arc::new(Bars::new())
}

struct Bars {
    multi: MultiProgress,
    /// Every byte of every layer started so far: shown from the first layer on.
    total: ProgressBar,
    shown: AtomicBool,
    layers: Mutex<HashMap<usize, ProgressBar>>,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let total = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        total.set_style(style("{prefix:>22} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}"));
        total.set_prefix("all layers");
        Bars { multi, total, shown: AtomicBool::new(false), layers: Mutex::new(HashMap::new()) }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ")
}

impl Progress for Bars {
    fn start(&self, layer: usize, stage: Stage, bytes: u64) {
        let mut layers = self.layers.lock().expect("no panics while held");
        if !self.shown.swap(true, Ordering::SeqCst) {
            self.multi.add(self.total.clone());
            self.total.enable_steady_tick(Duration::from_millis(200));
        }
        let bar = self.multi.insert_before(&self.total, ProgressBar::new(bytes));
        bar.set_style(if bytes == 0 {
            style("{prefix:>22} {spinner} {bytes:>10} {bytes_per_sec:>12}")
        } else {
            style("{prefix:>22} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}")
        });
        bar.set_prefix(format!("layer {} {}", layer + 1, stage.verb()));
        self.total.inc_length(bytes);
        if let Some(old) = layers.insert(layer, bar) {
            // Started again (an upload retried): what the old bar counted is counted anew.
            self.total.set_position(self.total.position().saturating_sub(old.position()));
            old.finish_and_clear();
        }
    }

    fn advance(&self, layer: usize, bytes: u64) {
        if let Some(bar) = self.layers.lock().expect("no panics while held").get(&layer) {
            bar.inc(bytes);
        }
        self.total.inc(bytes);
    }

    fn finish(&self, layer: usize) {
        if let Some(bar) = self.layers.lock().expect("no panics while held").remove(&layer) {
            bar.finish_and_clear();
        }
    }

    fn done(&self) {
        for (_, bar) in self.layers.lock().expect("no panics while held").drain() {
            bar.finish_and_clear();
        }
        self.total.finish_and_clear();
    }
}
