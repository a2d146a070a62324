//! `GET /metrics`, read with a strict Prometheus text-format parser
//! (`prom_text_format_parser`: the whole scrape must parse, or the test fails), and the
//! values of its series by name and labels.

use prom_text_format_parser::{Metric, Scrape, Type, ValueType};

use super::http;

/// One scrape, parsed.
pub struct Metrics {
    /// The scrape as served.
    pub text: String,
    families: Vec<Metric>,
}

/// Scrape `{base_url}/metrics`: 200, the Prometheus text format's content type, an
/// `X-Request-Id`, and a body that parses.
pub fn scrape(base_url: &str) -> Metrics {
    let response = http::get(&format!("{base_url}/metrics"));
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(response.header("x-request-id").is_some());
    parse(&response.text)
}

/// Parse a scrape strictly.
pub fn parse(text: &str) -> Metrics {
    let scrape = Scrape::parse(text)
        .unwrap_or_else(|e| panic!("not the Prometheus text format: {e:?}\n{text}"));
    Metrics {
        text: text.to_owned(),
        families: scrape.metrics,
    }
}

impl Metrics {
    /// The family `name` (as its `# TYPE` line names it) and its type.
    pub fn kind(&self, name: &str) -> Option<Type> {
        self.families
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.kind)
    }

    /// The value of the sample of `name` whose labels are exactly `labels`; 0 when there
    /// is none yet (a labelled series appears with its first sample). Whether a family is
    /// there at all is [`Metrics::kind`].
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sample(name, labels, ValueType::Sample)
    }

    /// A histogram's `_count` for `labels`.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sample(name, labels, ValueType::Count)
    }

    fn sample(&self, name: &str, labels: &[(&str, &str)], kind: ValueType) -> f64 {
        let Some(family) = self.families.iter().find(|m| m.name == name) else {
            return 0.0;
        };
        family
            .samples
            .iter()
            .filter(|s| s.value.value_type == kind)
            .find(|s| {
                s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|l| l.key == *k && l.value == *v))
            })
            .map_or(0.0, |s| s.value.value.as_f64())
    }

    /// Every label set of the samples of `name` (histogram buckets left out).
    pub fn label_sets(&self, name: &str) -> Vec<Vec<(String, String)>> {
        self.families
            .iter()
            .filter(|m| m.name == name)
            .flat_map(|m| m.samples.iter())
            .filter(|s| {
                s.value.value_type != ValueType::Sample || !s.labels.iter().any(|l| l.key == "le")
            })
            .map(|s| {
                s.labels
                    .iter()
                    .map(|l| (l.key.clone(), l.value.clone()))
                    .collect()
            })
            .collect()
    }
}
