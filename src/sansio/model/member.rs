//! One upstream member: where it is and the upsync attributes that say how
//! to use it.

use crate::sansio::model::locality::{MemberMeta, MetaBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The host part of a member address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Host {
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// A DNS name. Envoy's EDS needs IP addresses, so these are only routed
    /// by hosts that resolve names (nginx).
    Hostname(String),
}

impl Host {
    /// The host as it goes into a socket address field: no brackets.
    pub fn bare(&self) -> String {
        match self {
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
            Host::Hostname(name) => name.clone(),
        }
    }

    pub fn is_ip(&self) -> bool {
        !matches!(self, Host::Hostname(_))
    }
}

/// `host:port`, the identity of a member.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// No `:port` after the host.
    MissingPort,
    /// The port is not a number in 1..=65535.
    BadPort(String),
    /// `[...]` does not hold an IPv6 address.
    BadIpv6(String),
    /// Neither an IPv4 address nor a valid DNS name.
    BadHost(String),
}

impl std::fmt::Display for AddressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressError::MissingPort => write!(f, "missing ':port'"),
            AddressError::BadPort(p) => write!(f, "port {p:?} is not a number in 1..=65535"),
            AddressError::BadIpv6(h) => write!(f, "{h:?} is not an IPv6 address"),
            AddressError::BadHost(h) => {
                write!(f, "{h:?} is neither an IPv4 address nor a DNS name")
            }
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Host::Ipv4(ip) => write!(f, "{ip}:{}", self.port),
            Host::Ipv6(ip) => write!(f, "[{ip}]:{}", self.port),
            Host::Hostname(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl std::str::FromStr for HostPort {
    type Err = AddressError;

    /// Accepts `1.2.3.4:80`, `[::1]:80` and `name.example:80`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(|| AddressError::BadIpv6(s.to_string()))?;
            let port = after.strip_prefix(':').ok_or(AddressError::MissingPort)?;
            let ip: Ipv6Addr = inside.parse().map_err(|_| AddressError::BadIpv6(inside.to_string()))?;
            (Host::Ipv6(ip), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or(AddressError::MissingPort)?;
            (parse_host(host)?, port)
        };
        Ok(HostPort { host, port: parse_port(port)? })
    }
}

impl HostPort {
    /// Why this address can never be a member, if it cannot: traffic to it
    /// would reach whatever listens locally (unspecified, which services
    /// often register as their bind address), every host of a subnet
    /// (broadcast) or a group (multicast).
    pub fn not_a_member(&self) -> Option<&'static str> {
        match &self.host {
            Host::Ipv4(ip) if ip.is_unspecified() => Some("the unspecified address 0.0.0.0"),
            Host::Ipv4(ip) if ip.is_broadcast() => Some("the broadcast address 255.255.255.255"),
            Host::Ipv4(ip) if ip.is_multicast() => Some("a multicast address (224.0.0.0/4)"),
            Host::Ipv6(ip) if ip.is_unspecified() => Some("the unspecified address ::"),
            Host::Ipv6(ip) if ip.is_multicast() => Some("a multicast address (ff00::/8)"),
            _ => None,
        }
    }

    /// A registry's separate host and port fields: the host may be an IPv4
    /// address, an IPv6 address with or without brackets, or a DNS name.
    pub fn from_parts(host: &str, port: u16) -> Result<HostPort, String> {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if bare.contains(':') {
            // Only IPv6 has colons; `name:port` in a host field is a registration error.
            return match bare.parse() {
                Ok(ip) => Ok(HostPort { host: Host::Ipv6(ip), port }),
                Err(_) => Err(format!("address {host:?} is neither an IP address nor a DNS name")),
            };
        }
        format!("{bare}:{port}").parse().map_err(|e| format!("address {host:?}: {e}"))
    }
}

fn parse_port(port: &str) -> Result<u16, AddressError> {
    let bad = || AddressError::BadPort(port.to_string());
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(p) => Ok(p),
    }
}

/// `a.b.c.d` in its canonical form (no leading zeros), read without std's
/// general parser, which took most of a 10,000-member snapshot's read in
/// V8; `None` for anything else, which std's parser then decides.
pub(crate) fn dotted_quad(host: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = host.split('.');
    for octet in &mut octets {
        let part = parts.next()?.as_bytes();
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part.first() == Some(&b'0')) {
            return None;
        }
        let mut n: u16 = 0;
        for &d in part {
            if !d.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u16::from(d - b'0');
        }
        *octet = u8::try_from(n).ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

fn parse_host(host: &str) -> Result<Host, AddressError> {
    if let Some(ip) = dotted_quad(host) {
        return Ok(Host::Ipv4(ip));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ipv4(ip));
    }
    let bad = || AddressError::BadHost(host.to_string());
    // A name made only of digits and dots is a mistyped IPv4 address.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.split('.').all(label_ok) {
        Ok(Host::Hostname(name.to_ascii_lowercase()))
    } else {
        Err(bad())
    }
}

/// The upsync attributes, with upsync's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    /// Relative share of traffic; 0 drains the member.
    pub weight: u32,
    /// Failures within `fail_timeout` that take the member out (passive health).
    pub max_fails: u32,
    /// Seconds: the failure window and the time out.
    pub fail_timeout: u32,
    /// Marked down by the operator: kept in the list, given no traffic.
    pub down: bool,
    /// Used only when no primary member is available.
    pub backup: bool,
}

impl Default for MemberAttrs {
    fn default() -> Self {
        MemberAttrs { weight: 1, max_fails: 2, fail_timeout: 10, down: false, backup: false }
    }
}

/// Upper bounds for attribute values; larger values are refused.
pub const MAX_WEIGHT: u64 = 65_535;
pub const MAX_FAILS: u64 = 1_000_000;
pub const MAX_FAIL_TIMEOUT_S: u64 = 86_400;

/// A member: address plus attributes, and what the registry says about
/// where it runs and how it is tagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub addr: HostPort,
    pub attrs: MemberAttrs,
    pub meta: MemberMeta,
}

impl Member {
    /// A member with no locality and no tags.
    pub fn new(addr: HostPort, attrs: MemberAttrs) -> Self {
        Member { addr, attrs, meta: MemberMeta::default() }
    }
}

/// What was wrong with a registry value. The member still gets the
/// defaults for the fields concerned (upsync's rule); these are counted
/// and logged so that bad data never goes unseen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueProblem {
    /// The value is empty: every attribute takes its default.
    Empty,
    /// The value is not a JSON object: every attribute takes its default.
    NotJsonObject,
    /// One attribute had a bad type or was out of range: it takes its default.
    BadField { field: &'static str, allowed: &'static str },
}

impl std::fmt::Display for ValueProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueProblem::Empty => write!(f, "empty value, defaults used"),
            ValueProblem::NotJsonObject => write!(f, "value is not a JSON object, defaults used"),
            ValueProblem::BadField { field, allowed } => {
                write!(f, "field {field:?} must be {allowed}, default used")
            }
        }
    }
}

/// Parses an upsync member value `{"weight":1,"max_fails":2,...}`.
///
/// Never fails: the attributes always come back, with defaults where the
/// value was missing or bad, together with the list of problems.
pub fn parse_upsync_value(value: &[u8]) -> (MemberAttrs, Vec<ValueProblem>) {
    if value.iter().all(u8::is_ascii_whitespace) {
        return (MemberAttrs::default(), vec![ValueProblem::Empty]);
    }
    match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(obj)) => upsync_attrs(&obj),
        _ => (MemberAttrs::default(), vec![ValueProblem::NotJsonObject]),
    }
}

/// [`parse_upsync_value`] plus the member's locality and tags from the
/// same value (`region`, `zone`, `sub_zone`, `tags`; see
/// [`crate::sansio::model::locality::MetaBuilder::upsync_value`]), with
/// every problem as text. The value is parsed once.
pub fn parse_upsync_member(value: &[u8]) -> (MemberAttrs, MemberMeta, Vec<String>) {
    let obj = match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(obj)) => obj,
        _ => {
            let (attrs, problems) = parse_upsync_value(value);
            return (attrs, MemberMeta::default(), problems.iter().map(ToString::to_string).collect());
        }
    };
    let (attrs, problems) = upsync_attrs(&obj);
    let mut meta = MetaBuilder::new();
    meta.upsync_value(&obj);
    let (meta, meta_notes) = meta.finish();
    let mut notes: Vec<String> = problems.iter().map(ToString::to_string).collect();
    notes.extend(meta_notes);
    (attrs, meta, notes)
}

/// The upsync attributes in an already parsed JSON object, by the rules of
/// [`parse_upsync_value`]. Registries that carry the attributes in their
/// own JSON (Nacos and Eureka metadata) hand them over here without a trip
/// through text.
pub fn upsync_attrs(obj: &Map<String, Value>) -> (MemberAttrs, Vec<ValueProblem>) {
    let mut attrs = MemberAttrs::default();
    let mut problems = Vec::new();
    let mut int_field = |name: &'static str, max: u64, allowed: &'static str, slot: &mut u32| {
        if let Some(v) = obj.get(name) {
            match as_uint(v).filter(|n| *n <= max) {
                // `max` fits in u32 for every field, so this never truncates.
                Some(n) => *slot = u32::try_from(n).unwrap_or(*slot),
                None => problems.push(ValueProblem::BadField { field: name, allowed }),
            }
        }
    };
    int_field("weight", MAX_WEIGHT, "an integer in 0..=65535", &mut attrs.weight);
    int_field("max_fails", MAX_FAILS, "an integer in 0..=1000000", &mut attrs.max_fails);
    int_field("fail_timeout", MAX_FAIL_TIMEOUT_S, "seconds in 0..=86400", &mut attrs.fail_timeout);
    for (name, slot) in [("down", &mut attrs.down), ("backup", &mut attrs.backup)] {
        if let Some(v) = obj.get(name) {
            match as_flag(v) {
                Some(b) => *slot = b,
                None => problems.push(ValueProblem::BadField { field: name, allowed: "0, 1, true or false" }),
            }
        }
    }
    (attrs, problems)
}

/// A non-negative integer given as a JSON number or a numeric string;
/// `"10s"` is accepted too, as upsync's `fail_timeout=10s` tag style.
fn as_uint(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let digits = s.strip_suffix('s').unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        }
        _ => None,
    }
}

fn as_flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        other => as_uint(other).map(|n| n != 0),
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn parses_addresses() {
        let a: HostPort = "127.0.0.1:9001".parse().unwrap();
        assert_eq!(a.host, Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(a.port, 9001);
        assert_eq!(a.to_string(), "127.0.0.1:9001");

        let b: HostPort = "[::1]:80".parse().unwrap();
        assert_eq!(b.host, Host::Ipv6(Ipv6Addr::LOCALHOST));
        assert_eq!(b.to_string(), "[::1]:80");
        assert_eq!(b.host.bare(), "::1");

        let c: HostPort = "Api.Example.com:8080".parse().unwrap();
        assert_eq!(c.host, Host::Hostname("api.example.com".into()));
        assert!(!c.host.is_ip());
    }

    #[test]
    fn refuses_bad_addresses() {
        assert_eq!("127.0.0.1".parse::<HostPort>(), Err(AddressError::MissingPort));
        assert_eq!("127.0.0.1:0".parse::<HostPort>(), Err(AddressError::BadPort("0".into())));
        assert_eq!("127.0.0.1:65536".parse::<HostPort>(), Err(AddressError::BadPort("65536".into())));
        assert_eq!("127.0.0.1:+80".parse::<HostPort>(), Err(AddressError::BadPort("+80".into())));
        assert_eq!("999.1.1.1:80".parse::<HostPort>(), Err(AddressError::BadHost("999.1.1.1".into())));
        assert_eq!("[::g]:80".parse::<HostPort>(), Err(AddressError::BadIpv6("::g".into())));
        assert_eq!("[::1]80".parse::<HostPort>(), Err(AddressError::MissingPort));
        assert_eq!("nonsense".parse::<HostPort>(), Err(AddressError::MissingPort));
        assert!("bad_name:80".parse::<HostPort>().is_err());
        assert!("-a.example:80".parse::<HostPort>().is_err());
        assert!(":80".parse::<HostPort>().is_err());
    }

    #[test]
    fn full_value_is_read() {
        let (attrs, problems) =
            parse_upsync_value(br#"{"weight":3,"max_fails":5,"fail_timeout":30,"down":1,"backup":0}"#);
        assert!(problems.is_empty());
        assert_eq!(attrs, MemberAttrs { weight: 3, max_fails: 5, fail_timeout: 30, down: true, backup: false });
    }

    #[test]
    fn missing_fields_take_upsync_defaults() {
        let (attrs, problems) = parse_upsync_value(br#"{"weight":0}"#);
        assert!(problems.is_empty());
        assert_eq!(attrs, MemberAttrs { weight: 0, ..MemberAttrs::default() });
        assert_eq!(
            MemberAttrs::default(),
            MemberAttrs { weight: 1, max_fails: 2, fail_timeout: 10, down: false, backup: false }
        );
    }

    #[test]
    fn empty_and_garbage_values_give_defaults_and_a_problem() {
        assert_eq!(parse_upsync_value(b""), (MemberAttrs::default(), vec![ValueProblem::Empty]));
        assert_eq!(parse_upsync_value(b"  \n"), (MemberAttrs::default(), vec![ValueProblem::Empty]));
        assert_eq!(parse_upsync_value(b"not json"), (MemberAttrs::default(), vec![ValueProblem::NotJsonObject]));
        assert_eq!(parse_upsync_value(b"[1,2]"), (MemberAttrs::default(), vec![ValueProblem::NotJsonObject]));
        assert_eq!(parse_upsync_value(&[0xff, 0xfe]), (MemberAttrs::default(), vec![ValueProblem::NotJsonObject]));
    }

    #[test]
    fn bad_fields_fall_back_one_by_one() {
        let (attrs, problems) =
            parse_upsync_value(br#"{"weight":-1,"max_fails":"7","fail_timeout":"20s","down":"yes","backup":true}"#);
        assert_eq!(attrs, MemberAttrs { weight: 1, max_fails: 7, fail_timeout: 20, down: false, backup: true });
        let fields: Vec<_> = problems
            .iter()
            .map(|p| match p {
                ValueProblem::BadField { field, .. } => *field,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(fields, ["weight", "down"]);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let (attrs, problems) = parse_upsync_value(br#"{"weight":65536,"fail_timeout":86401,"max_fails":1.5}"#);
        assert_eq!(attrs, MemberAttrs::default());
        assert_eq!(problems.len(), 3);
        let (attrs, problems) = parse_upsync_value(br#"{"weight":65535,"extra":"ignored"}"#);
        assert_eq!(attrs.weight, 65535);
        assert!(problems.is_empty());
    }

    #[test]
    fn the_quick_dotted_quad_agrees_with_std() {
        let samples = [
            "0.0.0.0",
            "10.0.0.1",
            "255.255.255.255",
            "256.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.04",
            "1..3.4",
            "1.2.3.",
            ".1.2.3",
            "a.b.c.d",
            "1.2.3.4 ",
            "+1.2.3.4",
            "1.2.3.999",
            "1000.1.1.1",
            "",
        ];
        for s in samples {
            if let Some(ip) = dotted_quad(s) {
                assert_eq!(s.parse::<Ipv4Addr>(), Ok(ip), "{s}");
            }
            assert_eq!(dotted_quad(s).is_some(), s.parse::<Ipv4Addr>().is_ok(), "{s}");
        }
        let mut rng = crate::sansio::util::rng::Rng::new(7);
        for _ in 0..2000 {
            let ip = Ipv4Addr::from(u32::try_from(rng.up_to(u64::from(u32::MAX))).unwrap());
            assert_eq!(dotted_quad(&ip.to_string()), Some(ip));
        }
    }
}
