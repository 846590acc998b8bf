//! `GET /metrics`: the engine's counters in Prometheus text exposition.
//!
//! Recording stays where it is: relaxed atomics in each shard's own
//! [`ShardStats`](crate::engine::stats::ShardStats) block, so the fan-out
//! path pays nothing for metrics. [`EngineCollector`] is a
//! `prometheus-client` collector that reads those blocks only when scraped
//! (one [`EngineHandle::stats`] sum and one [`EngineHandle::inbox_depths`]
//! per scrape) and encodes them; the crate owns the text format.
//!
//! The metric names are part of Herald's interface (README "Operations").
//! Counters are registered without `_total`; the encoder appends it, as
//! OpenMetrics requires.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::cluster::membership::FenceReason;
use crate::cluster::ClusterShared;
use crate::engine::stats::{
    AuthResult, CloseKind, HistogramSnapshot, StatsSnapshot, FANOUT_BUCKETS,
};
use crate::engine::EngineHandle;

/// `Content-Type` of the classic Prometheus text format (the default).
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of OpenMetrics text, served when the scraper asks for it.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads the engine's counters at scrape time (see the module doc).
pub struct EngineCollector {
    engine: EngineHandle,
}

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineCollector")
    }
}

/// A registry holding the engine collector, built once when the engine runs.
pub fn registry(engine: EngineHandle) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector { engine }));
    registry
}

/// Encodes `registry`: OpenMetrics text when `openmetrics`, else the classic
/// Prometheus text format.
pub fn encode(registry: &Registry, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(4096);
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut text, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    }
    Ok(text)
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.engine.stats();
        gauge(
            &mut encoder,
            "herald_sessions",
            "Open websocket sessions.",
            stats.sessions,
        )?;
        gauge(
            &mut encoder,
            "herald_users_online",
            "Users with at least one session that has a status.",
            stats.users_online,
        )?;
        gauge(
            &mut encoder,
            "herald_follow_edges",
            "Follow edges from sessions to users (self-follows excluded).",
            stats.follow_edges,
        )?;
        counter(
            &mut encoder,
            "herald_status_changes",
            "Status changes made by sessions (set, replaced or cleared).",
            stats.status_changes,
        )?;
        counter(
            &mut encoder,
            "herald_deliveries",
            "Status event frames queued to followers.",
            stats.deliveries,
        )?;
        counter(
            &mut encoder,
            "herald_bytes_written",
            "Bytes written to client sockets.",
            stats.bytes_written,
        )?;
        counter(
            &mut encoder,
            "herald_write_syscalls",
            "write and writev calls on client sockets; fewer than frames when writes coalesce.",
            stats.write_syscalls,
        )?;

        let mut closed = encoder.encode_descriptor(
            "herald_sessions_closed",
            "Sessions closed, by reason.",
            None,
            MetricType::Counter,
        )?;
        for kind in CloseKind::ALL {
            let labels = [("reason", kind.label())];
            ConstCounter::new(stats.closed(kind)).encode(closed.encode_family(&labels)?)?;
        }

        let mut auth = encoder.encode_descriptor(
            "herald_auth",
            "REST authenticate calls, by result (created, existing, rejected, error).",
            None,
            MetricType::Counter,
        )?;
        for result in AuthResult::ALL {
            let labels = [("result", result.label())];
            ConstCounter::new(stats.auth(result)).encode(auth.encode_family(&labels)?)?;
        }

        let mut inbox = encoder.encode_descriptor(
            "herald_shard_inbox_depth",
            "Messages waiting in each shard's inbox.",
            None,
            MetricType::Gauge,
        )?;
        for (shard, depth) in self.engine.inbox_depths().into_iter().enumerate() {
            let labels = [("shard", shard.to_string())];
            let depth = i64::try_from(depth).unwrap_or(i64::MAX);
            ConstGauge::new(depth).encode(inbox.encode_family(&labels)?)?;
        }

        let (sum, count, buckets) = histogram(&stats.fanout);
        encoder
            .encode_descriptor(
                "herald_fanout",
                "Time from a status change to its last follower frame queued.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        match self.engine.cluster() {
            Some(cluster) => encode_cluster(&mut encoder, cluster.shared(), &stats),
            None => Ok(()),
        }
    }
}

/// The `herald_cluster_*` metrics (cluster mode only).
fn encode_cluster(
    encoder: &mut DescriptorEncoder,
    cluster: &ClusterShared,
    stats: &StatsSnapshot,
) -> Result<(), std::fmt::Error> {
    let r = std::sync::atomic::Ordering::Relaxed;
    let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    gauge(
        encoder,
        "herald_cluster_log_lag",
        "Presence log records this node's watch has yet to read.",
        as_gauge(cluster.log_lag.load(r)),
    )?;
    gauge(
        encoder,
        "herald_cluster_nodes_live",
        "Cluster nodes holding a live lease, as this node's replica has it.",
        as_gauge(cluster.nodes_live.load(r)),
    )?;
    counter(
        encoder,
        "herald_cluster_verdicts",
        "Verdicts read in the log: a node declared dead after missing its heartbeats.",
        cluster.verdicts.load(r),
    )?;
    let mut fences = encoder.encode_descriptor(
        "herald_cluster_fences",
        "Times this node fenced itself (closed every session and dropped its lease), by reason.",
        None,
        MetricType::Counter,
    )?;
    for reason in FenceReason::ALL {
        let labels = [("reason", reason.label())];
        ConstCounter::new(cluster.fences[reason as usize].load(r))
            .encode(fences.encode_family(&labels)?)?;
    }
    counter(
        encoder,
        "herald_cluster_coalesced",
        "Intermediate statuses the replica skipped (a lagging or recovering watch reads only the latest).",
        stats.coalesced,
    )?;
    counter(
        encoder,
        "herald_cluster_ignored_records",
        "Log records ignored: written by an incarnation without a live lease, or unreadable.",
        cluster.ignored_records.load(r),
    )?;
    counter(
        encoder,
        "herald_cluster_watch_restarts",
        "Times the log watch stalled and was recreated from its last position.",
        cluster.watch_restarts.load(r),
    )?;
    let mut publish = HistogramSnapshot::default();
    cluster.publish.add_to(&mut publish);
    let (sum, count, buckets) = histogram(&publish);
    encoder
        .encode_descriptor(
            "herald_cluster_publish",
            "Time from a session's write to the log's acknowledgement, retries included.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// A histogram as the encoder wants it: per-bucket (not cumulative) counts
/// with their upper bounds, the last one +Inf. The count is the buckets'
/// total rather than the separate counter, so `+Inf` and `_count` agree
/// even while shards are recording.
fn histogram(histogram: &HistogramSnapshot) -> (f64, u64, Vec<(f64, u64)>) {
    let bounds = FANOUT_BUCKETS.iter().copied().chain([f64::INFINITY]);
    let buckets: Vec<(f64, u64)> = bounds.zip(histogram.buckets.iter().copied()).collect();
    let count = buckets.iter().map(|(_, n)| n).sum();
    (histogram.sum_seconds, count, buckets)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;

    fn scrape(openmetrics: bool) -> String {
        let engine = EngineHandle::standalone(EngineConfig {
            shards: 2,
            ..EngineConfig::default()
        });
        let stats = engine.shard_stats(1);
        stats.closed(CloseKind::Kicked);
        stats.auth(AuthResult::Created);
        stats.fanout.record(std::time::Duration::from_micros(300));
        stats.fanout.record(std::time::Duration::from_secs(5));
        encode(&registry(engine), openmetrics).expect("encodes")
    }

    #[test]
    fn every_interface_name_is_exposed() {
        let text = scrape(false);
        for line in [
            "# TYPE herald_sessions gauge",
            "herald_sessions 0",
            "herald_users_online 0",
            "herald_follow_edges 0",
            "herald_status_changes_total 0",
            "herald_deliveries_total 0",
            "herald_bytes_written_total 0",
            "herald_write_syscalls_total 0",
            "herald_sessions_closed_total{reason=\"kicked\"} 1",
            "herald_sessions_closed_total{reason=\"slow_consumer\"} 0",
            "herald_auth_total{result=\"created\"} 1",
            "herald_auth_total{result=\"rejected\"} 0",
            "herald_shard_inbox_depth{shard=\"0\"} 0",
            "herald_shard_inbox_depth{shard=\"1\"} 0",
            "# TYPE herald_fanout_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }

    #[test]
    fn fanout_buckets_are_cumulative_in_the_exposition() {
        let text = scrape(false);
        for line in [
            "herald_fanout_seconds_bucket{le=\"0.00025\"} 0",
            "herald_fanout_seconds_bucket{le=\"0.0005\"} 1",
            "herald_fanout_seconds_bucket{le=\"2.5\"} 1",
            "herald_fanout_seconds_bucket{le=\"+Inf\"} 2",
            "herald_fanout_seconds_count 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let text = scrape(true);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("herald_status_changes_total 0\n"), "{text}");
    }
}
