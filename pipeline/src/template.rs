//! Subject and key templates such as `projections.orders.{aggregate_id}`:
//! parsed once at start-up, rendered per event without allocation beyond the
//! result.
//!
//! **Invariant:** a rendered subject is one NATS accepts: event fields are
//! outside input, so every value is checked before anything is sent (a
//! subject the server refuses would close the connection shared by every
//! consumer).

use std::fmt;

use crate::{envelope::Envelope, text};

/// A placeholder a template may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    AggregateId,
    AggregateType,
    EventType,
    EventId,
    SourceSubject,
}

impl Field {
    const ALL: [(&'static str, Field); 5] = [
        ("aggregate_id", Field::AggregateId),
        ("aggregate_type", Field::AggregateType),
        ("event_type", Field::EventType),
        ("event_id", Field::EventId),
        ("source_subject", Field::SourceSubject),
    ];

    fn name(self) -> &'static str {
        Field::ALL
            .iter()
            .find(|(_, known)| *known == self)
            .map_or("?", |(name, _)| name)
    }

    fn value<'a>(self, envelope: &'a Envelope, source_subject: &'a str) -> &'a str {
        match self {
            Field::AggregateId => &envelope.aggregate_id,
            Field::AggregateType => &envelope.aggregate_type,
            Field::EventType => &envelope.event_type,
            Field::EventId => &envelope.event_id,
            Field::SourceSubject => source_subject,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown placeholder {{{0}}} (known: aggregate_id, aggregate_type, event_type, event_id, source_subject)"
    )]
    UnknownField(String),
    #[error("unclosed '{{' in template")]
    Unclosed,
    #[error("the template is empty")]
    Empty,
    #[error("not a valid subject: {0}")]
    InvalidSubject(String),
    #[error("placeholder {{{field}}} renders an empty or invalid subject token: {value:?}")]
    InvalidValue { field: &'static str, value: String },
    #[error("the rendered subject is {length} bytes, more than the {MAX_SUBJECT_LEN} allowed")]
    TooLong { length: usize },
}

/// The longest subject (or KV key) a template may render. The server's
/// protocol line holds 4,096 bytes with the reply subject and sizes; real
/// subjects are far shorter, so a longer one is bad input, not a name.
pub const MAX_SUBJECT_LEN: usize = 1024;

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or(TemplateError::Unclosed)? + open;
            let name = &rest[open + 1..close];
            let field = Field::ALL
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, field)| *field)
                .ok_or_else(|| TemplateError::UnknownField(name.to_owned()))?;
            parts.push(Part::Field(field));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    /// Parses a subject template and checks that its literal parts form valid
    /// subject tokens (placeholders standing for one token or more).
    pub fn parse_subject(text: &str) -> Result<Self, TemplateError> {
        let template = Self::parse(text)?;
        let probe = template.render_with(|_| "x");
        if !is_valid_subject(&probe) {
            return Err(TemplateError::InvalidSubject(text.to_owned()));
        }
        Ok(template)
    }

    /// Renders a subject: every placeholder must give exactly one valid token
    /// (`{source_subject}` a valid subject), and the result must fit
    /// [`MAX_SUBJECT_LEN`]. A value with a `.` would add tokens the template
    /// does not have, so it is refused like a space or a wildcard.
    pub fn render_subject(
        &self,
        envelope: &Envelope,
        source_subject: &str,
    ) -> Result<String, TemplateError> {
        let mut length = 0;
        for part in &self.parts {
            match part {
                Part::Literal(text) => length += text.len(),
                Part::Field(field) => {
                    let value = field.value(envelope, source_subject);
                    let valid = match field {
                        Field::SourceSubject => is_valid_subject(value),
                        _ => is_valid_token(value),
                    };
                    if !valid {
                        return Err(TemplateError::InvalidValue {
                            field: field.name(),
                            value: text::cut(value, text::QUOTED_CHARS).into_owned(),
                        });
                    }
                    length += value.len();
                }
            }
        }
        if length > MAX_SUBJECT_LEN {
            return Err(TemplateError::TooLong { length });
        }
        Ok(self.render_with(|field| field.value(envelope, source_subject)))
    }

    /// Whether the template names any placeholder.
    pub fn has_placeholders(&self) -> bool {
        self.parts.iter().any(|part| matches!(part, Part::Field(_)))
    }

    fn render_with<'a>(&self, value: impl Fn(Field) -> &'a str) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(field) => out.push_str(value(*field)),
            }
        }
        out
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A subject token: printable ASCII without `.`, `*` or `>` (so no space,
/// no NUL, no control character).
fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && !matches!(byte, b'.' | b'*' | b'>'))
}

/// A concrete subject: dot-separated non-empty tokens, no wildcards.
pub fn is_valid_subject(subject: &str) -> bool {
    subject.split('.').all(is_valid_token)
}

/// A subject filter: tokens may be `*`, and the last may be `>`.
pub fn is_valid_subject_pattern(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    tokens.iter().enumerate().all(|(index, token)| {
        *token == "*" || (*token == ">" && index == tokens.len() - 1) || is_valid_token(token)
    })
}

/// Whether `subject` matches the NATS pattern `pattern`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(actual)) if literal == actual => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert!(Template::parse_subject("projections.orders.{aggregate_id}").is_ok());
        assert!(Template::parse_subject("p.{event_type}.{aggregate_type}.{event_id}").is_ok());
        assert_eq!(
            Template::parse("a.{nope}"),
            Err(TemplateError::UnknownField("nope".into()))
        );
        assert_eq!(
            Template::parse("a.{aggregate_id"),
            Err(TemplateError::Unclosed)
        );
        assert!(matches!(
            Template::parse_subject("a..{aggregate_id}"),
            Err(TemplateError::InvalidSubject(_))
        ));
        assert!(matches!(
            Template::parse_subject("a b.{aggregate_id}"),
            Err(TemplateError::InvalidSubject(_))
        ));
    }

    #[test]
    fn rendering_refuses_what_nats_cannot_take() {
        let json = serde_json::json!({
            "eventId": "e-1", "eventType": "orders.OrderCreated", "schemaVersion": 2,
            "aggregateId": "o-1", "occurredAt": "2026-01-02T03:04:05Z",
            "payload": { "orderId": "o-1" }
        });
        let base = crate::envelope::tests::example_decoder()
            .decode(Some("application/json"), json.to_string().as_bytes())
            .expect("valid");
        let template = Template::parse_subject("x.{aggregate_id}").expect("template");
        let render = |id: &str| {
            let mut envelope = base.clone();
            envelope.aggregate_id = id.to_owned();
            template.render_subject(&envelope, "orders.created")
        };
        assert_eq!(render("o-1").as_deref(), Ok("x.o-1"));
        for id in ["a.b", "a b", "a\0b", "a*", ">", "tab\t", "é", "a\x7f"] {
            assert!(
                matches!(render(id), Err(TemplateError::InvalidValue { .. })),
                "{id:?}"
            );
        }
        let long = "a".repeat(5_000);
        assert_eq!(render(&long), Err(TemplateError::TooLong { length: 5_002 }));
        assert!(render(&"a".repeat(MAX_SUBJECT_LEN - 2)).is_ok());
        // An error quotes a bounded part of the value.
        let dotted_long = format!("{long}.x");
        let error = render(&dotted_long).expect_err("invalid").to_string();
        assert!(error.len() < 200, "{error}");
        // `{source_subject}` stands for a whole subject.
        let by_source = Template::parse_subject("copy.{source_subject}").expect("template");
        assert_eq!(
            by_source.render_subject(&base, "orders.created").as_deref(),
            Ok("copy.orders.created")
        );
    }

    #[test]
    fn subject_patterns() {
        let cases = [
            ("orders.>", "orders.created", true),
            ("orders.>", "orders", false),
            ("orders.*", "orders.a.b", false),
            ("orders.*.x", "orders.a.x", true),
            ("orders.a", "orders.a", true),
            ("orders.a", "orders.b", false),
            (">", "anything.at.all", true),
        ];
        for (pattern, subject, expected) in cases {
            assert_eq!(
                subject_matches(pattern, subject),
                expected,
                "{pattern} {subject}"
            );
        }
        assert!(is_valid_subject_pattern("orders.*.>"));
        assert!(!is_valid_subject_pattern("orders.>.x"));
        assert!(!is_valid_subject_pattern("orders..x"));
    }
}
