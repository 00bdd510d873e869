//! Typed identifiers.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("empty {0}")]
    Empty(&'static str),
    #[error("{what} {value:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("{what} {value:?} may only contain letters, digits, '.', '_' and '-'")]
    BadChar { what: &'static str, value: String },
    #[error("card id {0:?} must look like NODE/INDEX")]
    BadCard(String),
}

const MAX_ID: usize = 128;

fn check(what: &'static str, value: &str) -> Result<(), InvalidId> {
    if value.is_empty() {
        return Err(InvalidId::Empty(what));
    }
    if value.len() > MAX_ID {
        return Err(InvalidId::TooLong {
            what,
            value: value.chars().take(40).collect(),
            max: MAX_ID,
        });
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(InvalidId::BadChar {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A validated ", $what, ".")]
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidId> {
                let value = value.into();
                check($what, &value)?;
                Ok(Self(value))
            }
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

string_id!(NodeId, "node id");
string_id!(JobId, "job id");

/// One card: a node and the card's local index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CardId {
    pub node: NodeId,
    pub index: u32,
}

impl fmt::Display for CardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.index)
    }
}

impl FromStr for CardId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (node, index) = s
            .split_once('/')
            .ok_or_else(|| InvalidId::BadCard(s.to_owned()))?;
        let index = index
            .parse()
            .map_err(|_| InvalidId::BadCard(s.to_owned()))?;
        Ok(CardId {
            node: NodeId::new(node)?,
            index,
        })
    }
}

/// An incident number, unique per controller store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct IncidentId(pub u64);

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inc-{}", self.0)
    }
}

impl FromStr for IncidentId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("inc-").unwrap_or(s);
        digits
            .parse()
            .map(IncidentId)
            .map_err(|_| format!("incident id {s:?} must look like inc-N"))
    }
}

impl From<IncidentId> for String {
    fn from(id: IncidentId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for IncidentId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_validated() {
        assert!(NodeId::new("n0").is_ok());
        assert!(NodeId::new("gpu-node-17.rack3").is_ok());
        assert_eq!(NodeId::new(""), Err(InvalidId::Empty("node id")));
        assert!(matches!(NodeId::new("a b"), Err(InvalidId::BadChar { .. })));
        assert!(matches!(
            NodeId::new("x".repeat(200)),
            Err(InvalidId::TooLong { .. })
        ));
    }

    #[test]
    fn card_ids_parse_and_print() {
        let c: CardId = "n2/5".parse().expect("valid");
        assert_eq!(c.index, 5);
        assert_eq!(c.to_string(), "n2/5");
        assert!("n2".parse::<CardId>().is_err());
        assert!("n2/x".parse::<CardId>().is_err());
    }

    #[test]
    fn incident_ids_round_trip() {
        let id = IncidentId(42);
        assert_eq!(id.to_string().parse::<IncidentId>(), Ok(id));
        assert_eq!("7".parse::<IncidentId>(), Ok(IncidentId(7)));
        assert!("inc-x".parse::<IncidentId>().is_err());
    }
}
