//! `/metrics` in the Prometheus text format (OpenMetrics flavour, as prometheus-client writes
//! it; Prometheus reads it natively).
//!
//! Two kinds of numbers: the `received` counter, which the ingest paths increment as alerts
//! become durable ([`Received`]), and everything else, read on each scrape from the same
//! [`StatusReport`] that `/v1/status` answers ([`ReportCollector`]), so the two never disagree.
//! Every name starts with `oncall_agent_`; counters end in `_total`, durations in `_seconds`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::status::{IntegrationReport, Reporter, StatusReport};
use crate::sender::{LATENCY_BUCKETS, ScopeStatus};

/// The content type of [`render`]'s answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders every metric: the `received` counter and a fresh [`StatusReport`].
pub fn render(reporter: &Reporter) -> String {
    let mut registry = Registry::with_prefix("oncall_agent");
    registry.register(
        "alerts_received",
        "Alerts accepted and made durable, by source and integration",
        reporter.received.family(),
    );
    registry.register(
        "build",
        "Build information",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register_collector(Box::new(ReportCollector {
        report: Arc::new(reporter.report()),
    }));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The metrics derived from one status report.
#[derive(Debug)]
struct ReportCollector {
    report: Arc<StatusReport>,
}

type Labels = Vec<(&'static str, String)>;

fn int(name: &str) -> Labels {
    vec![("integration", name.to_string())]
}

/// Encodes one metric family of counters or gauges from `(labels, value)` rows.
fn family<T: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    rows: Vec<(Labels, T)>,
) -> Result<(), std::fmt::Error> {
    // Help ends with a full stop, as the registry writes it for registered metrics.
    let help = format!("{help}.");
    let mut m = enc.encode_descriptor(name, &help, unit, metric_type)?;
    for (labels, value) in rows {
        if labels.is_empty() {
            // `name{} 1` is legal but odd; a metric without labels is written bare.
            value.encode(m)?;
            break;
        }
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Requests that may still go out in the current window of a budget.
fn budget_left(s: &ScopeStatus) -> i64 {
    s.limit
        .map_or(0, |r| i64::from(r.count) - s.used as i64)
        .max(0)
}

impl Collector for ReportCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.report;
        Self::delivery(r, &mut enc)?;
        Self::queue(r, &mut enc)?;
        Self::budgets(r, &mut enc)?;
        Self::host(r, &mut enc)?;
        Self::fleet(r, &mut enc)?;
        Self::latency(r, &mut enc)
    }
}

impl ReportCollector {
    /// What happened to the alerts sent.
    fn delivery(r: &StatusReport, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            enc,
            "alerts_delivered",
            "Alerts OnCall accepted (2xx)",
            None,
            MetricType::Counter,
            counters(per_integration(r, &|i| i.sender.delivered_total)),
        )?;
        family(
            enc,
            "delivery_retries",
            "Failed delivery attempts that will be retried (5xx, 408, timeouts, network errors)",
            None,
            MetricType::Counter,
            counters(per_integration(r, &|i| i.sender.retried_total)),
        )?;
        family(
            enc,
            "alerts_dead_lettered",
            "Alerts OnCall refused for good, kept as dead letters",
            None,
            MetricType::Counter,
            counters(per_integration(r, &|i| i.sender.dead_lettered_total)),
        )?;
        let limited = counters(scoped(r, false, &|s| Some(s.rate_limited_total)));
        family(
            enc,
            "rate_limited",
            "429 answers from OnCall, by the budget that ran out",
            None,
            MetricType::Counter,
            limited,
        )?;
        Ok(())
    }

    /// What waits.
    fn queue(r: &StatusReport, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ints = &r.integrations;
        family(
            enc,
            "queue_alerts",
            "Alerts waiting in the queue",
            None,
            MetricType::Gauge,
            gauges(per_integration(r, &|i| i.depth as i64)),
        )?;
        family(
            enc,
            "queue",
            "Bytes the waiting alerts take in the queue",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            gauges(per_integration(r, &|i| i.bytes as i64)),
        )?;
        family(
            enc,
            "queue_max",
            "Queue size above which ingest answers 503",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            vec![(Vec::new(), ConstGauge::new(r.queue_max_bytes as i64))],
        )?;
        family(
            enc,
            "queue_oldest_age",
            "Age of the oldest waiting alert (0 when none waits)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            ints.iter()
                .map(|i| (int(&i.name), ConstGauge::new(i.oldest_age_s.unwrap_or(0.0))))
                .collect(),
        )?;
        family(
            enc,
            "dead_letters",
            "Dead letters kept, waiting for an operator (oncall-agent dead list)",
            None,
            MetricType::Gauge,
            vec![(Vec::new(), ConstGauge::new(r.dead_letters as i64))],
        )?;
        Ok(())
    }

    /// Requests in flight, the budgets and what was learned of OnCall's windows.
    fn budgets(r: &StatusReport, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            enc,
            "in_flight",
            "Requests to OnCall waiting for an answer",
            None,
            MetricType::Gauge,
            gauges(per_integration(r, &|i| i.sender.in_flight as i64)),
        )?;
        let left = gauges(scoped(r, true, &|s| Some(budget_left(s))));
        family(
            enc,
            "budget_remaining",
            "Requests that may still go out in the current rate-limit window",
            None,
            MetricType::Gauge,
            left,
        )?;
        // What was learned of OnCall's real windows (only scopes where something was).
        let learned = |f: &dyn Fn(&ScopeStatus) -> Option<i64>| gauges(scoped(r, false, f));
        family(
            enc,
            "learned_limit",
            "Requests per window OnCall was seen to take, learned from its 429s",
            None,
            MetricType::Gauge,
            learned(&|s| s.learned_limit.map(i64::from)),
        )?;
        family(
            enc,
            "learned_reset",
            "Time until OnCall's next rate-limit window begins, as learned from its 429s",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            learned(&|s| s.learned_reset_in_s.map(|x| x.ceil() as i64)),
        )?;
        let paused = gauges(scoped(r, false, &|s| {
            Some(i64::from(s.paused_for_s.is_some()))
        }));
        family(
            enc,
            "paused",
            "1 while sending is paused after a 429",
            None,
            MetricType::Gauge,
            paused,
        )?;
        family(
            enc,
            "integration_configured",
            "1 if the integration is in the config; 0 for a removed one whose alerts are kept",
            None,
            MetricType::Gauge,
            gauges(per_integration(r, &|i| i64::from(i.sender.configured))),
        )?;
        Ok(())
    }

    /// The disk and the process.
    fn host(r: &StatusReport, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(free) = r.disk.free_bytes {
            family(
                enc,
                "disk_free",
                "Space free for the agent on the disk holding the queue",
                Some(&Unit::Bytes),
                MetricType::Gauge,
                vec![(Vec::new(), ConstGauge::new(free as i64))],
            )?;
        }
        family(
            enc,
            "disk_refusing_alerts",
            "1 while alerts are refused because the disk holding the queue has less than queue.min_free_space free",
            None,
            MetricType::Gauge,
            vec![(
                Vec::new(),
                ConstGauge::new(i64::from(r.disk.refusing_alerts)),
            )],
        )?;
        family(
            enc,
            "uptime",
            "Time since the daemon started",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            vec![(Vec::new(), ConstGauge::new(r.uptime_s as i64))],
        )?;
        Ok(())
    }

    /// The fleet's shared budgets, with `[fleet]`.
    fn fleet(r: &StatusReport, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(f) = &r.fleet else {
            return Ok(());
        };
        family(
            enc,
            "fleet_connected",
            "1 while the fleet's Redis answers within fleet.timeout; 0 while this host uses its local share",
            None,
            MetricType::Gauge,
            vec![(
                Vec::new(),
                ConstGauge::new(i64::from(f.link == crate::fleet::Link::Up)),
            )],
        )?;
        let per_scope = |v: &dyn Fn(&crate::fleet::FleetScopeStatus) -> f64| {
            f.scopes
                .iter()
                .map(|s| (fleet_scope(&s.name), ConstGauge::new(v(s))))
                .collect::<Vec<_>>()
        };
        family(
            enc,
            "fleet_budget_used",
            "Requests of the whole fleet that may count in the budget's current window",
            None,
            MetricType::Gauge,
            per_scope(&|s| s.fleet_used as f64),
        )?;
        family(
            enc,
            "fleet_budget_share",
            "This host's fair share of the budget while every host with backlog wants it",
            None,
            MetricType::Gauge,
            per_scope(&|s| s.share),
        )?;
        family(
            enc,
            "fleet_hosts_waiting",
            "Hosts with backlog on the budget, this one included",
            None,
            MetricType::Gauge,
            per_scope(&|s| s.hosts_waiting as f64),
        )?;
        family(
            enc,
            "fleet_round_trips",
            "Calls to the fleet's Redis that came back (divide by alerts_delivered for the cost per alert)",
            None,
            MetricType::Counter,
            vec![(Vec::new(), ConstCounter::new(f.round_trips))],
        )?;
        family(
            enc,
            "fleet_requests",
            "Requests sent on a fleet grant (via=\"fleet\") or on the local share while Redis was away (via=\"local\")",
            None,
            MetricType::Counter,
            vec![
                (
                    vec![("via", "fleet".to_string())],
                    ConstCounter::new(f.fleet_slots),
                ),
                (
                    vec![("via", "local".to_string())],
                    ConstCounter::new(f.local_slots),
                ),
            ],
        )?;
        Ok(())
    }

    /// From sending an alert to OnCall's 2xx, per integration.
    fn latency(r: &StatusReport, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "delivery_latency",
            "Time from sending an alert to OnCall's 2xx answer.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for i in &r.integrations {
            let labels = int(&i.name);
            let count = i.sender.delivered_total;
            // The sender keeps cumulative counts; the encoder wants each bucket's own.
            let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
            let mut below = 0;
            for (n, le) in LATENCY_BUCKETS.iter().enumerate() {
                let cum = i.sender.latency_buckets.get(n).copied().unwrap_or(below);
                buckets.push((*le, cum.saturating_sub(below)));
                below = cum;
            }
            buckets.push((f64::MAX, count.saturating_sub(below)));
            m.encode_family(&labels)?.encode_histogram::<Labels>(
                i.sender.latency_sum_s,
                count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

/// One value per scope: each integration (`configured_only`: only those in the config), then
/// the organization; scopes where `f` has nothing are left out.
fn scoped<T>(
    r: &StatusReport,
    configured_only: bool,
    f: &dyn Fn(&ScopeStatus) -> Option<T>,
) -> Vec<(Labels, T)> {
    let ints = r
        .integrations
        .iter()
        .filter(|i| !configured_only || i.sender.configured)
        .filter_map(|i| {
            let mut l = vec![("scope", "integration".to_string())];
            l.extend(int(&i.name));
            Some((l, f(&i.sender.budget)?))
        });
    let org = f(&r.org).map(|x| (vec![("scope", "org".to_string())], x));
    ints.chain(org).collect()
}

/// The labels of a fleet scope: the organization, or an integration by name.
fn fleet_scope(name: &str) -> Labels {
    if name == "org" {
        return vec![("scope", "org".to_string())];
    }
    let mut l = vec![("scope", "integration".to_string())];
    l.extend(int(name));
    l
}

/// One value per integration.
fn per_integration<T>(r: &StatusReport, f: &dyn Fn(&IntegrationReport) -> T) -> Vec<(Labels, T)> {
    r.integrations
        .iter()
        .map(|i| (int(&i.name), f(i)))
        .collect()
}

fn counters(v: Vec<(Labels, u64)>) -> Vec<(Labels, ConstCounter)> {
    v.into_iter()
        .map(|(l, x)| (l, ConstCounter::new(x)))
        .collect()
}

fn gauges(v: Vec<(Labels, i64)>) -> Vec<(Labels, ConstGauge)> {
    v.into_iter()
        .map(|(l, x)| (l, ConstGauge::new(x)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_left_reads_the_limit_text() {
        let s = ScopeStatus {
            limit: Some("300/5m".parse().unwrap()),
            used: 120,
            ..Default::default()
        };
        assert_eq!(budget_left(&s), 180);
        let spent = ScopeStatus {
            limit: Some("10/1m".parse().unwrap()),
            used: 12,
            ..Default::default()
        };
        assert_eq!(budget_left(&spent), 0);
    }
}
