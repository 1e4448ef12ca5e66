//! A snapshot read without serde, when its bytes are exactly what this
//! plugin's writer makes (fields in order, no whitespace, no escapes, no
//! tags): every EDS answer reads its cluster's snapshot, and at 10,000
//! members serde's field matching took ~4.5 ms natively of a one-member
//! change. Anything else (an escaped string, tags, another writer's field
//! order) is `None`, and [`super::snapshot::Snapshot::decode`] reads it
//! with serde as before; the tests hold both to the same result.

use crate::sansio::model::locality::{Locality, MemberMeta};
use crate::sansio::model::member::{HostPort, Member, MemberAttrs};
use crate::sansio::model::member_set::MemberSet;
use crate::sansio::model::update::Source;

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }

    /// Consumes `lit` if the bytes go on with it.
    fn eat(&mut self, lit: &[u8]) -> bool {
        let found = self.rest().starts_with(lit);
        if found {
            self.at += lit.len();
        }
        found
    }

    /// `lit` must come next.
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        self.eat(lit).then_some(())
    }

    /// The number after the field name `lit`.
    fn u32_after(&mut self, lit: &[u8]) -> Option<u32> {
        self.literal(lit)?;
        u32::try_from(self.uint()?).ok()
    }

    /// The boolean after the field name `lit`.
    fn bool_after(&mut self, lit: &[u8]) -> Option<bool> {
        self.literal(lit)?;
        self.boolean()
    }

    /// A string with no escapes in it.
    fn string(&mut self) -> Option<&'a str> {
        self.literal(b"\"")?;
        let rest = self.rest();
        let len = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        self.at += len + 1;
        std::str::from_utf8(rest.get(..len)?).ok()
    }

    fn uint(&mut self) -> Option<u64> {
        let rest = self.rest();
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        // No leading zero but for 0 itself, as JSON has it.
        if len == 0 || len > 20 || (len > 1 && rest.first() == Some(&b'0')) {
            return None;
        }
        let mut n: u64 = 0;
        for &d in rest.get(..len)? {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.at += len;
        Some(n)
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.eat(b"true") {
            Some(true)
        } else if self.eat(b"false") {
            Some(false)
        } else {
            None
        }
    }
}

/// The version and source of the snapshot stored under `key`, read from the
/// head of bytes in the writer's own form without reading the members (a
/// publish needs only the version it follows; serde would parse all of them
/// to skip them). The members are not checked: [`scan`] does that.
pub fn head(key: &str, bytes: &[u8]) -> Option<(u64, Source)> {
    let mut c = Cursor { bytes, at: 0 };
    read_head(&mut c, key)
}

fn read_head(c: &mut Cursor<'_>, key: &str) -> Option<(u64, Source)> {
    c.literal(b"{\"key\":")?;
    if c.string()? != key {
        return None;
    }
    c.literal(b",\"version\":")?;
    let version = c.uint()?;
    c.literal(b",\"source\":")?;
    let source = Source::parse(c.string()?)?;
    c.literal(b",\"members\":[")?;
    Some((version, source))
}

/// One member as stored, borrowed from the snapshot's bytes: an EDS answer
/// is written from these without building [`Member`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View<'a> {
    /// `host:port` as the writer wrote it (`HostPort`'s text).
    pub address: &'a str,
    pub attrs: MemberAttrs,
    pub region: &'a str,
    pub zone: &'a str,
    pub sub_zone: &'a str,
}

/// The members stored under `key`, borrowed, in stored order, if `bytes`
/// are in the writer's own form and belong to `key`: `(version, source,
/// members)`. The writer stores them sorted, one per address; the
/// addresses are checked as [`scan`] checks them only by [`scan`].
pub fn views<'a>(key: &str, bytes: &'a [u8]) -> Option<(u64, Source, Vec<View<'a>>)> {
    let mut c = Cursor { bytes, at: 0 };
    let (version, source) = read_head(&mut c, key)?;
    // A member takes ~95 bytes: sized once, not grown by doubling.
    let mut members = Vec::with_capacity(bytes.len() / 90);
    if !c.eat(b"]") {
        loop {
            members.push(view(&mut c)?);
            if c.eat(b"]") {
                break;
            }
            c.literal(b",")?;
        }
    }
    c.literal(b"}")?;
    (c.at == bytes.len()).then_some((version, source, members))
}

/// The snapshot stored under `key`, if `bytes` are in the writer's own form
/// and belong to `key`: `(version, source, members)`.
pub fn scan(key: &str, bytes: &[u8]) -> Option<(u64, Source, MemberSet)> {
    let (version, source, views) = views(key, bytes)?;
    let mut members = Vec::with_capacity(views.len());
    for v in views {
        let addr: HostPort = v.address.parse().ok()?;
        let locality = Locality { region: v.region.into(), zone: v.zone.into(), sub_zone: v.sub_zone.into() };
        members.push(Member { addr, attrs: v.attrs, meta: MemberMeta { locality, tags: Vec::new() } });
    }
    let (members, duplicates) = MemberSet::from_members(members);
    // A writer never stores an address twice: let serde's reading decide.
    duplicates.is_empty().then_some((version, source, members))
}

fn view<'a>(c: &mut Cursor<'a>) -> Option<View<'a>> {
    c.literal(b"{\"address\":")?;
    let address = c.string()?;
    let weight = c.u32_after(b",\"weight\":")?;
    let max_fails = c.u32_after(b",\"max_fails\":")?;
    let fail_timeout = c.u32_after(b",\"fail_timeout\":")?;
    let down = c.bool_after(b",\"down\":")?;
    let backup = c.bool_after(b",\"backup\":")?;
    let mut locality = [""; 3];
    for (name, field) in
        [&b",\"region\":"[..], &b",\"zone\":"[..], &b",\"sub_zone\":"[..]].into_iter().zip(&mut locality)
    {
        if c.eat(name) {
            *field = c.string()?;
        }
    }
    // Tags (or any other field) are left to serde.
    c.literal(b"}")?;
    let [region, zone, sub_zone] = locality;
    let attrs = MemberAttrs { weight, max_fails, fail_timeout, down, backup };
    Some(View { address, attrs, region, zone, sub_zone })
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::shared::snapshot::Snapshot;

    fn member(addr: &str, attrs: MemberAttrs, locality: [&str; 3]) -> Member {
        let [region, zone, sub_zone] = locality.map(String::from);
        Member {
            addr: addr.parse().unwrap(),
            attrs,
            meta: MemberMeta { locality: Locality { region, zone, sub_zone }, tags: Vec::new() },
        }
    }

    fn snapshot(members: Vec<Member>) -> Snapshot {
        Snapshot { version: 42, source: Source::Registry, members: MemberSet::from_members(members).0 }
    }

    #[test]
    fn the_writers_own_bytes_read_as_serde_reads_them() {
        let attrs = MemberAttrs { weight: 4_000_000_000, max_fails: 0, fail_timeout: 10, down: true, backup: true };
        let cases = [
            snapshot(vec![]),
            snapshot(vec![member("10.0.0.1:80", MemberAttrs::default(), ["", "", ""])]),
            snapshot(vec![
                member("10.0.0.2:8080", attrs, ["eu", "", "rack-1"]),
                member("[::1]:81", MemberAttrs::default(), ["", "z", ""]),
                member("db.internal:5432", MemberAttrs::default(), ["r", "z", "s"]),
            ]),
            Snapshot { version: u64::MAX, ..snapshot(vec![]) },
        ];
        for s in cases {
            let bytes = s.encode("upsync/v1/snap/web");
            let (version, source, members) = scan("upsync/v1/snap/web", &bytes).expect("the writer's own bytes");
            assert_eq!(head("upsync/v1/snap/web", &bytes), Some((version, source)));
            assert_eq!(head("upsync/v1/snap/api", &bytes), None);
            assert_eq!(Snapshot { version, source, members }, Snapshot::decode("upsync/v1/snap/web", &bytes).unwrap());
            assert_eq!(scan("upsync/v1/snap/api", &bytes), None, "another key is serde's to report");
        }
    }

    #[test]
    fn anything_else_is_left_to_serde() {
        let tagged = Member {
            meta: MemberMeta { tags: vec![("a".into(), "b".into())], ..MemberMeta::default() },
            ..member("10.0.0.1:80", MemberAttrs::default(), ["", "", ""])
        };
        let escaped = member("10.0.0.1:80", MemberAttrs::default(), ["e\"u", "", ""]);
        for s in [snapshot(vec![tagged]), snapshot(vec![escaped])] {
            let bytes = s.encode("k");
            assert_eq!(scan("k", &bytes), None);
            assert_eq!(Snapshot::decode("k", &bytes).unwrap(), s);
        }
        let plain =
            String::from_utf8(snapshot(vec![member("10.0.0.1:80", MemberAttrs::default(), ["", "", ""])]).encode("k"))
                .unwrap();
        let edits = [
            plain.replace(",\"weight\":1", ", \"weight\":1"),
            plain.replace("\"weight\":1", "\"weight\":01"),
            plain.replace("\"weight\":1", "\"weight\":4294967296"),
            plain.replace(",\"down\":false", ""),
            plain.replace("\"backup\":false", "\"backup\":0"),
            plain.replace("\"source\":\"registry\"", "\"source\":\"elsewhere\""),
            plain.replace("10.0.0.1:80", "10.0.0.1"),
            format!("{plain} "),
            plain.replace("}]}", "},{\"address\":\"10.0.0.1:80\",\"weight\":1,\"max_fails\":2,\"fail_timeout\":10,\"down\":false,\"backup\":false}]}"),
            plain.get(..plain.len() - 1).unwrap().to_string(),
        ];
        assert_eq!(scan("k", plain.as_bytes()).map(|(v, ..)| v), Some(42), "{plain}");
        for edit in edits {
            assert_ne!(edit, plain);
            assert_eq!(scan("k", edit.as_bytes()), None, "{edit}");
        }
    }
}
