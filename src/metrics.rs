//! The CA's Prometheus metrics (`GET /metrics`, SPEC §9): one [`Metrics`] per server, made
//! in `server::build`, held in the API state and handed to what records into it — the
//! request layer (`api::observe`), the refusal path (`api::refusal`), issuance
//! (`task::Issuer`), the SQLite writer (`store::sqlite`) and the issuers' key caches
//! (`identity::jwks`). There is no global registry: a test or a second server in the same
//! process has its own.
//!
//! It owns the registry, every series' name, help text, buckets and label sets, and the
//! text exposition ([`Metrics::encode`], written by `prometheus-client`, never by hand).
//! Gauges that describe state rather than events (`writ_active_tasks`,
//! `writ_ca_key_age_seconds`, `writ_audit_sink_lag_records`) are set by the scrape itself
//! (`api::metrics`), so nothing on the request path keeps them up to date.
//!
//! What it must never do: block (recording is an atomic add, or a short uncontended lock for
//! a histogram, and never waits for I/O), allocate per request for a label set (labels are
//! `&'static str` and integers; only the rare JWKS fetch and the scrape allocate), or carry
//! anything secret — no token, key, claim or subject ever becomes a label. Label values
//! are bounded: route templates (never raw paths), status codes, error codes, configured
//! issuer and sink names.

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s output: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `endpoint` label of a request that matched no route (unknown paths).
pub const OTHER_ENDPOINT: &str = "other";

/// Request durations, in seconds: an issuance takes around a millisecond, a slow client
/// up to `request_timeout`.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Writer transaction times, in seconds: one fsync on a fast disk is ~100 µs.
const COMMIT_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Issuances per group commit, up to the writer's batch limit (256).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// `writ_requests_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

/// `writ_request_duration_seconds` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

/// `writ_refusals_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// `writ_jwks_fetches_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JwksLabels {
    issuer: String,
    result: &'static str,
}

/// `writ_audit_sink_lag_records` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Every series writ exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    certificates_issued: Counter,
    requests: Family<RequestLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    request_duration: HistogramFamily<EndpointLabels>,
    store_commit_duration: Histogram,
    group_commit_batch_size: Histogram,
    jwks_fetches: Family<JwksLabels, Counter>,
    active_tasks: Gauge,
    ca_key_age: Gauge,
    audit_sink_lag: Family<SinkLabels, Gauge>,
    rate_limited: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every series registered (counters at 0).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let certificates_issued = Counter::default();
        // prometheus-client adds `_total` to counters.
        registry.register(
            "writ_certificates_issued",
            "Certificates issued (new tasks and renewals), each after its audit record committed",
            certificates_issued.clone(),
        );
        let requests = Family::default();
        registry.register(
            "writ_requests",
            "HTTP requests answered, by endpoint (route template, or \"other\") and status",
            requests.clone(),
        );
        let refusals = Family::default();
        registry.register(
            "writ_refusals",
            "Refused requests, by the refusal's error code (each one also an audit record)",
            refusals.clone(),
        );
        let request_duration: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register(
            "writ_request_duration_seconds",
            "Time from routing a request to its answer, by endpoint",
            request_duration.clone(),
        );
        let store_commit_duration = Histogram::new(COMMIT_BUCKETS);
        registry.register(
            "writ_store_commit_duration_seconds",
            "Time of each transaction of the SQLite writer, commit and fsync included",
            store_commit_duration.clone(),
        );
        let group_commit_batch_size = Histogram::new(BATCH_BUCKETS);
        registry.register(
            "writ_group_commit_batch_size",
            "Issuances committed together in one transaction of the SQLite writer",
            group_commit_batch_size.clone(),
        );
        let jwks_fetches = Family::default();
        registry.register(
            "writ_jwks_fetches",
            "Fetches of an issuer's signing keys (JWKS), by issuer and result (ok, error)",
            jwks_fetches.clone(),
        );
        let active_tasks = Gauge::default();
        registry.register(
            "writ_active_tasks",
            "Tasks active and not expired at the scrape",
            active_tasks.clone(),
        );
        let ca_key_age = Gauge::default();
        registry.register(
            "writ_ca_key_age_seconds",
            "Seconds since the active CA key started signing, at the scrape",
            ca_key_age.clone(),
        );
        let audit_sink_lag = Family::default();
        registry.register(
            "writ_audit_sink_lag_records",
            "Audit records committed but not yet delivered to the sink, at the scrape",
            audit_sink_lag.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "writ_rate_limited",
            "Requests answered 429 rate_limited",
            rate_limited.clone(),
        );
        Metrics {
            registry,
            certificates_issued,
            requests,
            refusals,
            request_duration,
            store_commit_duration,
            group_commit_batch_size,
            jwks_fetches,
            active_tasks,
            ca_key_age,
            audit_sink_lag,
            rate_limited,
        }
    }

    /// A certificate was issued (its audit record is durable).
    pub fn certificate_issued(&self) {
        self.certificates_issued.inc();
    }

    /// A request to `endpoint` (a route template or [`OTHER_ENDPOINT`]) was answered with
    /// `status` after `elapsed`.
    pub fn request(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
        self.request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// A request was refused with the error code `reason`.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// The SQLite writer ran one transaction for `elapsed`; `issuances` is the size of the
    /// group commit when the transaction was one.
    pub fn store_commit(&self, elapsed: Duration, issuances: Option<usize>) {
        self.store_commit_duration.observe(elapsed.as_secs_f64());
        if let Some(n) = issuances {
            self.group_commit_batch_size.observe(n as f64);
        }
    }

    /// Start `writ_jwks_fetches_total` at 0 for the configured issuer `issuer`, both
    /// results, so a rate or increase over it is defined before its first failure.
    pub fn jwks_issuer(&self, issuer: &str) {
        for ok in [true, false] {
            let labels = JwksLabels {
                issuer: issuer.to_owned(),
                result: if ok { "ok" } else { "error" },
            };
            let _ = self.jwks_fetches.get_or_create(&labels);
        }
    }

    /// The keys of the configured issuer `issuer` were fetched (`ok`) or not.
    pub fn jwks_fetch(&self, issuer: &str, ok: bool) {
        let labels = JwksLabels {
            issuer: issuer.to_owned(),
            result: if ok { "ok" } else { "error" },
        };
        self.jwks_fetches.get_or_create(&labels).inc();
    }

    /// A request was answered 429 `rate_limited`.
    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// Set the scrape-time gauges: active tasks, the active CA key's age, and each audit
    /// sink's lag.
    pub fn set_state(&self, state: &ScrapeState) {
        if let Some(n) = state.active_tasks {
            self.active_tasks.set(n);
        }
        self.ca_key_age.set(state.ca_key_age_seconds);
        for (sink, lag) in &state.sink_lag {
            self.audit_sink_lag
                .get_or_create(&SinkLabels { sink: sink.clone() })
                .set(*lag);
        }
    }

    /// Every series in the Prometheus text format (0.0.4; see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            // Writing into a String cannot fail; say so in the output if it ever does.
            text.clear();
            let _ = writeln!(text, "# writ: encoding the metrics failed: {e}");
        }
        text
    }
}

/// What a scrape reads from the store and the keyring to set the state gauges.
#[derive(Debug, Clone, Default)]
pub struct ScrapeState {
    /// Tasks active at the scrape (`None`: the store could not say; the gauge keeps its
    /// last value).
    pub active_tasks: Option<i64>,
    /// Seconds since the active CA key began signing.
    pub ca_key_age_seconds: i64,
    /// Per configured audit sink: records committed and not yet delivered.
    pub sink_lag: Vec<(String, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exported_with_its_type_labelled_ones_from_their_first_sample() {
        let metrics = Metrics::new();
        let unlabelled = [
            ("writ_certificates_issued_total", "counter"),
            ("writ_store_commit_duration_seconds", "histogram"),
            ("writ_group_commit_batch_size", "histogram"),
            ("writ_active_tasks", "gauge"),
            ("writ_ca_key_age_seconds", "gauge"),
            ("writ_rate_limited_total", "counter"),
        ];
        let labelled = [
            ("writ_requests_total", "counter"),
            ("writ_refusals_total", "counter"),
            ("writ_request_duration_seconds", "histogram"),
            ("writ_jwks_fetches_total", "counter"),
            ("writ_audit_sink_lag_records", "gauge"),
        ];
        let declares = |text: &str, (name, kind): (&str, &str)| {
            text.contains(&format!("# TYPE {name} {kind}\n"))
        };
        let fresh = metrics.encode();
        for series in unlabelled {
            assert!(declares(&fresh, series), "{series:?}:\n{fresh}");
        }
        assert!(
            fresh.contains("\nwrit_certificates_issued_total 0\n"),
            "{fresh}"
        );
        assert!(fresh.contains("\nwrit_rate_limited_total 0\n"), "{fresh}");
        // A configured issuer's fetches start at 0, for both results.
        metrics.jwks_issuer("k8s");
        let text = metrics.encode();
        for result in ["ok", "error"] {
            let line = format!("writ_jwks_fetches_total{{issuer=\"k8s\",result=\"{result}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
        metrics.request("/healthz", 200, Duration::from_millis(1));
        metrics.refused("token_expired");
        metrics.set_state(&ScrapeState {
            sink_lag: vec![("siem".into(), 0)],
            ..ScrapeState::default()
        });
        let text = metrics.encode();
        for series in unlabelled.into_iter().chain(labelled) {
            assert!(declares(&text, series), "{series:?}:\n{text}");
        }
        for text in [fresh, text] {
            prom_text_format_parser::Scrape::parse(&text)
                .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        }
    }

    #[test]
    fn recording_moves_the_series() {
        let metrics = Metrics::new();
        metrics.certificate_issued();
        metrics.request("/v1/tasks/{task_id}", 404, Duration::from_millis(3));
        metrics.refused("bad_signature");
        metrics.store_commit(Duration::from_micros(300), Some(3));
        metrics.jwks_fetch("k8s \"prod\"", false);
        metrics.set_state(&ScrapeState {
            active_tasks: Some(7),
            ca_key_age_seconds: 42,
            sink_lag: vec![("siem".into(), 5)],
        });
        let text = metrics.encode();
        for line in [
            "writ_certificates_issued_total 1",
            "writ_requests_total{endpoint=\"/v1/tasks/{task_id}\",status=\"404\"} 1",
            "writ_refusals_total{reason=\"bad_signature\"} 1",
            "writ_request_duration_seconds_count{endpoint=\"/v1/tasks/{task_id}\"} 1",
            "writ_store_commit_duration_seconds_count 1",
            "writ_group_commit_batch_size_sum 3.0",
            "writ_jwks_fetches_total{issuer=\"k8s \\\"prod\\\"\",result=\"error\"} 1",
            "writ_active_tasks 7",
            "writ_ca_key_age_seconds 42",
            "writ_audit_sink_lag_records{sink=\"siem\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }
}
