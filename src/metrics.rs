//! `/metrics` in the Prometheus text format.

use crate::status::Reporter;

pub fn render(reporter: &Reporter) -> String {
    let r = reporter.report();
    format!("# queue bytes {}\n", r.queue_bytes)
}
