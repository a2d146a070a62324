//! The CA's log (`writ serve`, `writ admin`): `tracing` to stderr, filtered by `WRIT_LOG`
//! (e.g. `WRIT_LOG=debug` or `WRIT_LOG=writ=debug,info`; default `info`).
//!
//! Every field value is written through [`crate::text::write_escaped`], so a value that
//! came from outside (a token's `sub`, an IdP's error text) can never start a new line,
//! forge a log entry or send terminal escape sequences; colour codes are only written to a
//! terminal. Never log key material or whole tokens: this module cannot tell them apart.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::Field;
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

/// Install the global subscriber (call once, at start-up).
pub fn init() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("WRIT_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let fields = tracing_subscriber::fmt::format::debug_fn(write_field).delimited(" ");
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .fmt_fields(fields),
        )
        .with(filter)
        .init();
}
