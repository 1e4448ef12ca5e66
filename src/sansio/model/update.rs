//! What a sync machine hands out: a member list and where it came from.

use crate::sansio::model::member_set::MemberSet;

/// Where a published member list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the registry.
    Registry,
    /// The configured `fallback`, used until the registry first answers.
    Fallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Registry => "registry",
            Source::Fallback => "fallback",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "registry" => Some(Source::Registry),
            "fallback" => Some(Source::Fallback),
            _ => None,
        }
    }
}

/// The member list a sync machine currently hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub members: MemberSet,
    pub source: Source,
}
