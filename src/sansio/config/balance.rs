//! `upstreams[].balance`: how a picking filter chooses a member.

use super::fields::{err, Fields};
use super::ConfigError;
use serde_json::Value;

/// How a pick-only filter (nginx, no `upstreams`) balances the upstreams
/// it picks from: the top-level `balance` and `passive_health`, with the
/// schema and defaults of `upstreams[].balance` and
/// `upstreams[].passive_health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickPolicy {
    pub balance: BalancePolicy,
    pub passive_health: bool,
}

impl Default for PickPolicy {
    fn default() -> Self {
        PickPolicy { balance: BalancePolicy::RoundRobin, passive_health: true }
    }
}

/// The top-level `balance` and `passive_health`: only a pick-only filter
/// takes them (a filter with upstreams sets them per upstream).
pub(crate) fn parse_pick_policy(f: &Fields<'_>, pick_only: bool) -> Result<PickPolicy, ConfigError> {
    if !pick_only {
        if let Some(name) = ["balance", "passive_health"].into_iter().find(|n| f.get(n).is_some()) {
            return Err(err(
                name,
                format!(
                    "is only used by a pick-only filter (\"host\": \"nginx\", \"pick\" or \"pick_variable\", no \"upstreams\"); with upstreams set upstreams[].{name}"
                ),
            ));
        }
        return Ok(PickPolicy::default());
    }
    let balance = match f.get("balance") {
        None => BalancePolicy::RoundRobin,
        Some(b) => parse_balance(&f.path("balance"), b)?,
    };
    Ok(PickPolicy { balance, passive_health: f.bool("passive_health", true)? })
}

/// How the filter picks a member (nginx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalancePolicy {
    /// nginx's smooth weighted round robin.
    RoundRobin,
    /// Power of two choices on requests in flight (per worker).
    LeastRequest,
    /// Maglev consistent hashing on a request key.
    Hash(HashKey),
}

/// The request property hashed by [`BalancePolicy::Hash`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    ClientAddress,
}

pub(crate) fn parse_balance(path: &str, v: &Value) -> Result<BalancePolicy, ConfigError> {
    let f = Fields::new(path, v, &["policy", "hash_key"])?;
    let policy = f.string("policy")?.unwrap_or("round_robin");
    let key = f.string("hash_key")?;
    match (policy, key) {
        ("round_robin", None) => Ok(BalancePolicy::RoundRobin),
        ("least_request", None) => Ok(BalancePolicy::LeastRequest),
        ("hash", Some(k)) => {
            let key = if k == "client_address" {
                HashKey::ClientAddress
            } else if let Some(h) = k.strip_prefix("header:").filter(|h| !h.is_empty()) {
                HashKey::Header(h.to_ascii_lowercase())
            } else if let Some(c) = k.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
                HashKey::Cookie(c.to_string())
            } else {
                return Err(err(
                    &f.path("hash_key"),
                    format!("must be \"header:NAME\", \"cookie:NAME\" or \"client_address\", got {k:?}"),
                ));
            };
            Ok(BalancePolicy::Hash(key))
        }
        ("hash", None) => Err(err(&f.path("hash_key"), "is required with policy \"hash\"")),
        ("round_robin" | "least_request", Some(_)) => {
            Err(err(&f.path("hash_key"), "is only used with policy \"hash\""))
        }
        (other, _) => Err(err(
            &f.path("policy"),
            format!("must be \"round_robin\", \"least_request\" or \"hash\", got {other:?}"),
        )),
    }
}
