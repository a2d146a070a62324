//! The CA's log (`writ serve`, `writ admin`): `tracing` to stderr, filtered by `WRIT_LOG`
//! (e.g. `WRIT_LOG=debug` or `WRIT_LOG=writ=debug,info`; default `info`), in the format
//! `[server] log_format` names:
//!
//! - `text` (the default): one line per event. Every field value is written through
//!   [`crate::text::write_escaped`], so a value that came from outside (a token's `sub`, an
//!   IdP's error text) can never start a new line, forge a log entry or send terminal
//!   escape sequences; colour codes are only written to a terminal.
//! - `json`: one JSON object per line (`timestamp`, `level`, `target`, `message` and the
//!   event's fields at the top level), written by tracing-subscriber's serde_json
//!   serializer, whose string escaping keeps every value inside its string; never colour.
//!
//! Never log key material or whole tokens: this module cannot tell them apart.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::Field;

pub use crate::config::LogFormat;
use tracing_subscriber::fmt::format::Writer;

/// An `fmt::Write` that escapes what passes through it.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::text::write_escaped(&mut self.0, s)
    }
}

/// Write one field: `name=value`, or the bare value for the event's message.
fn write_field(writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    use std::fmt::Write as _;
    let mut escaping = Escaping(writer);
    if field.name() == "message" {
        write!(escaping, "{value:?}")
    } else {
        write!(escaping, "{}={value:?}", field.name())
    }
}

/// Install the global subscriber writing `format` (call once, at start-up).
pub fn init(format: LogFormat) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("WRIT_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => {
            let fields = tracing_subscriber::fmt::format::debug_fn(write_field).delimited(" ");
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(std::io::stderr().is_terminal())
                        .fmt_fields(fields),
                )
                .init();
        }
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_ansi(false),
            )
            .init(),
    }
}
