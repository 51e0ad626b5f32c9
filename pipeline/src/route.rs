//! Routes: which events of a source a sink wants, by subject pattern and
//! event type. Checked against the schemas at start-up.

use std::collections::HashSet;

use crate::{
    config::{Config, ConfigError, RouteSpec},
    schema::SchemaRegistry,
    template::subject_matches,
};

#[derive(Debug, Clone)]
struct RouteMatch {
    event_types: HashSet<String>,
    subjects: Vec<String>,
}

/// The routes that feed one (source, sink) consumer.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteMatch>,
}

impl Router {
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a RouteSpec>) -> Self {
        Self {
            routes: routes
                .into_iter()
                .map(|route| RouteMatch {
                    event_types: route.event_types.iter().cloned().collect(),
                    subjects: route.subjects.clone(),
                })
                .collect(),
        }
    }

    /// Whether any route sends an event of `event_type` on `subject` here.
    pub fn wants(&self, subject: &str, event_type: &str) -> bool {
        self.routes.iter().any(|route| {
            (route.event_types.is_empty() || route.event_types.contains(event_type))
                && (route.subjects.is_empty()
                    || route.subjects.iter().any(|p| subject_matches(p, subject)))
        })
    }

    /// Whether a route takes events on `subject` whatever their type (so an
    /// event whose type cannot be read is this sink's to dead-letter).
    pub fn wants_subject(&self, subject: &str) -> bool {
        self.routes.iter().any(|route| {
            route.subjects.is_empty() || route.subjects.iter().any(|p| subject_matches(p, subject))
        })
    }

    /// Whether an event that failed to decode is this sink's to
    /// dead-letter: by its type where that could be read, else by subject.
    pub fn wants_undecoded(&self, subject: &str, event_type: Option<&str>) -> bool {
        match event_type {
            Some(event_type) => self.wants(subject, event_type),
            None => self.wants_subject(subject),
        }
    }
}

/// Every event type a route names must have a schema (sink pins are checked
/// with the upcasters, in `upcast/check.rs`).
pub fn check_against_schemas(config: &Config, registry: &SchemaRegistry) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (index, route) in config.routes.iter().enumerate() {
        for (position, event_type) in route.event_types.iter().enumerate() {
            if !registry.contains(event_type) {
                errors.push(ConfigError::new(
                    format!("routes[{index}].match.event_types[{position}]"),
                    format!("no schema for event type {event_type:?}"),
                ));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(event_types: &[&str], subjects: &[&str]) -> RouteSpec {
        RouteSpec {
            name: "r".into(),
            from: "s".into(),
            event_types: event_types.iter().map(|s| s.to_string()).collect(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            to: vec!["k".into()],
        }
    }

    #[test]
    fn matches_by_type_and_subject() {
        let routes = [
            route(&["orders.OrderCreated"], &["orders.created.>"]),
            route(&["orders.OrderShipped"], &[]),
        ];
        let router = Router::new(&routes);
        let cases = [
            ("orders.created.1", "orders.OrderCreated", true),
            ("orders.other.1", "orders.OrderCreated", false),
            ("anything", "orders.OrderShipped", true),
            ("orders.created.1", "orders.OrderCancelled", false),
        ];
        for (subject, event_type, expected) in cases {
            assert_eq!(
                router.wants(subject, event_type),
                expected,
                "{subject} {event_type}"
            );
        }
        assert!(router.wants_subject("x"));
        let narrow = Router::new(&routes[..1]);
        assert!(!narrow.wants_subject("x"));
        // An event that did not decode: by its type when it was read.
        assert!(narrow.wants_undecoded("orders.created.1", None));
        assert!(!narrow.wants_undecoded("orders.created.1", Some("orders.OrderShipped")));
        assert!(!narrow.wants_undecoded("x", None));
    }
}
