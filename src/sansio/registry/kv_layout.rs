//! The upsync key/value layout shared by etcd (v2 and v3) and Consul KV:
//! one key per member, `<prefix><host:port>`, whose value holds the upsync
//! attributes as JSON.

use crate::sansio::model::member::{parse_upsync_member, HostPort, Member};
use crate::sansio::registry::{member_list_with, Instance, MemberList};

/// Values longer than this are not parsed (an upsync value is ~70 bytes;
/// nginx-upsync-module overflowed its heap past 1 KiB). The member keeps
/// its defaults, as for any unreadable value, and the entry is reported.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The `host:port` part of a member key: the last path segment after the prefix.
pub fn member_segment<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    rest.rsplit('/').next().filter(|s| !s.is_empty())
}

/// Builds the member list from `(key, value)` pairs read under `prefix`.
pub fn members_from_kv(prefix: &str, entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> MemberList {
    let instances = entries.into_iter().map(|(key, value)| {
        let instance = kv_instance(prefix, &key, &value);
        (key, instance)
    });
    member_list_with(instances, "address listed under more than one key; the first key wins")
}

fn kv_instance(prefix: &str, key: &str, value: &[u8]) -> Instance {
    // Folder keys (Consul's `prefix/`, etcd directories) hold no member.
    if key.ends_with('/') && value.is_empty() {
        return Ok(None);
    }
    let addr_text = member_segment(prefix, key).ok_or("key has no host:port segment after the prefix")?;
    let addr: HostPort = addr_text.parse().map_err(|e| format!("key segment {addr_text:?} is not host:port: {e}"))?;
    let (attrs, meta, notes) = if value.len() > MAX_VALUE_BYTES {
        let note = format!("value of {} bytes is over {MAX_VALUE_BYTES} bytes, defaults used", value.len());
        (Default::default(), Default::default(), vec![note])
    } else {
        parse_upsync_member(value)
    };
    Ok(Some((Member { addr, attrs, meta }, notes)))
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::model::member::MemberAttrs;

    fn kv(key: &str, value: &str) -> (String, Vec<u8>) {
        (key.to_string(), value.as_bytes().to_vec())
    }

    #[test]
    fn reads_members_and_reports_bad_entries() {
        let list = members_from_kv(
            "/u/web/",
            vec![
                kv("/u/web/10.0.0.1:80", r#"{"weight":2}"#),
                kv("/u/web/nonsense", "{}"),
                kv("/u/web/", "{}"),
                kv("/u/web/folder/", ""),
                kv("/u/web/a/10.0.0.2:80", "{}"),
                kv("/u/web/b/10.0.0.2:80", r#"{"weight":9}"#),
                kv("/u/web/10.0.0.3:80", "garbage"),
            ],
        );
        let got: Vec<_> = list.members.iter().map(|m| (m.addr.to_string(), m.attrs.weight)).collect();
        assert_eq!(got, [("10.0.0.1:80".into(), 2), ("10.0.0.2:80".into(), 1), ("10.0.0.3:80".to_string(), 1)]);
        let skipped = list.problems.iter().filter(|p| p.skipped).count();
        assert_eq!((skipped, list.problems.len()), (3, 4), "{:#?}", list.problems);
    }

    #[test]
    fn a_value_over_1_kib_is_not_parsed() {
        let big = format!(r#"{{"down":1,"pad":"{}"}}"#, "x".repeat(2000));
        let list = members_from_kv("/p/", vec![kv("/p/10.0.0.1:80", &big), kv("/p/10.0.0.2:80", r#"{"down":1}"#)]);
        assert_eq!(list.members.get(&"10.0.0.1:80".parse().unwrap()), Some(&MemberAttrs::default()));
        assert!(list.members.get(&"10.0.0.2:80".parse().unwrap()).unwrap().down);
        assert!(list.problems[0].problem.contains("over 1024 bytes"), "{:?}", list.problems);
        assert!(!list.problems[0].skipped);
    }
}
