//! The L2 wire format: an envelope around a MessagePack payload.
//!
//! ```text
//! value, wire 5:  the wire-4 header | tag count n (u8, ≤ 4) | n tag generations (u64 LE) | payload
//! value, wire 4:  b"tR" | 4 | 0 (value) | fingerprint (16) | namespace gen (u64 LE) | site gen (u64 LE) | expires at (u64 LE) | kept until (u64 LE) | nonce (u64 LE) | payload
//! value, wire 3:  b"tR" | 3 | 0 (value) | fingerprint (16) | namespace gen (u64 LE) | site gen (u64 LE) | expires at (u64 LE) | payload
//! value, wire 2:  b"tR" | 2 | 0 (value) | fingerprint (16) | namespace gen (u64 LE) | site gen (u64 LE) | payload
//! value, wire 1:  b"tR" | 1 | 0 (value) | fingerprint (16) | payload            (read as generations 0, 0)
//! lease:          b"tR" | 1 | 1 (lease) | token (16)                             (unchanged since wire 1)
//! ```
//!
//! The payload is MessagePack with field names (`rmp_serde::to_vec_named`), so reordering
//! fields of a struct never decodes into swapped values. The fingerprint is the first 16 bytes
//! of SHA-256 over the site's schema (the return type as written, for the macro) and its
//! `version`: entries written for another type or schema version are misses. "Expires at" is
//! the writer's wall-clock time (Unix milliseconds) at which the key's `PX` runs out, so that a
//! reader knows the remaining lifetime without asking Redis (`PTTL`); `0` means unknown (as
//! for wire 1 and 2). "Kept until" (wire 4) is when the key itself goes: later than "expires
//! at" when fail-safe keeps the value past its TTL as a stale fallback (equal otherwise; read as
//! "expires at" for older wires). The nonce is random per write: the header of an envelope
//! ([`version_tag`]) identifies one write, so that a refresh overwrites only the version it read.
//! Wire 5 is wire 4 with the generations of the entry's tags (in the order the function
//! declares them), written only for a function with tags (every other value stays wire 4).
//! The two generations are the ones the writer read under
//! (see the `coherence` module): an entry stamped with an older generation than the current one
//! is a miss. Decoding checks, in this order, the size bound, the magic, the wire version, the
//! kind, the fingerprint, the payload, and that the payload was consumed to its last byte. Any
//! failure is a [`DecodeError`], which the runtime treats as a miss.
//!
//! **Compatibility rule** (rolling deploys): a reader accepts every wire version up to its own
//! (wire 1 values read as generations 0, 0); an envelope of a *newer* version
//! ([`DecodeError::Newer`]) is a miss that is neither deleted nor overwritten, so two versions
//! sharing one Redis never delete each other's values in a loop. Leases keep their wire-1 form,
//! so every version recognises every other version's leases.

use std::io::Cursor;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

const MAGIC: [u8; 2] = *b"tR";
/// Version of the value envelope this build writes for a function without tags.
pub const WIRE_VERSION: u8 = 4;
/// Version of the value envelope of a function with tags: wire 4 and the tags' generations.
pub const TAGGED_WIRE_VERSION: u8 = 5;
/// Tags a function may declare.
pub const MAX_TAGS: usize = 4;
/// Version byte of a lease (unchanged since wire 1).
const LEASE_VERSION: u8 = 1;
const KIND_VALUE: u8 = 0;
const KIND_LEASE: u8 = 1;
/// Length of the wire-1 header (and of a lease) in bytes.
const HEADER_V1: usize = 2 + 1 + 1 + 16;
/// Length of the wire-2 header in bytes.
const HEADER_V2: usize = HEADER_V1 + 16;
/// Length of the wire-3 header in bytes.
const HEADER_V3: usize = HEADER_V2 + 8;
/// Length of the envelope header this build writes, in bytes.
pub const HEADER_LEN: usize = HEADER_V3 + 16;

/// The generations an entry was written under (see the `coherence` module).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The namespace's generation.
    pub namespace: u64,
    /// The function's generation.
    pub site: u64,
    /// The generations of the entry's tags, in the order the function declares them.
    pub tags: TagGens,
}

/// The generations of an entry's tags (at most [`MAX_TAGS`]); a tag that was never
/// invalidated has generation 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagGens {
    gens: [u64; MAX_TAGS],
    len: u8,
}

impl TagGens {
    /// The generations in `gens` (the first [`MAX_TAGS`]).
    pub fn from_slice(gens: &[u64]) -> TagGens {
        let mut t = TagGens::default();
        for (slot, g) in t.gens.iter_mut().zip(gens) {
            *slot = *g;
        }
        t.len = gens.len().min(MAX_TAGS) as u8;
        t
    }

    /// The generations, in tag order.
    pub fn as_slice(&self) -> &[u64] {
        &self.gens[..usize::from(self.len).min(MAX_TAGS)]
    }

    /// Generation `i` (0 for a tag the stamp does not carry).
    fn get(&self, i: usize) -> u64 {
        self.as_slice().get(i).copied().unwrap_or(0)
    }
}

impl Stamp {
    /// Whether an entry stamped `self` was written before a group invalidation (of the
    /// namespace, the function or one of its tags) that `current` already reflects.
    pub fn is_older_than(&self, current: &Stamp) -> bool {
        self.namespace < current.namespace
            || self.site < current.site
            || (0..current.tags.as_slice().len()).any(|i| self.tags.get(i) < current.tags.get(i))
    }

    /// Whether `self` reflects a group invalidation that `known` does not.
    pub fn is_newer_than(&self, known: &Stamp) -> bool {
        self.namespace > known.namespace
            || self.site > known.site
            || (0..self.tags.as_slice().len()).any(|i| self.tags.get(i) > known.tags.get(i))
    }
}

/// Why bytes found in L2 were not accepted as a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than `max_value_bytes`: rejected before decoding.
    #[error("value of {0} bytes exceeds max_value_bytes")]
    TooLarge(usize),
    /// Too short, or not starting with the envelope magic: not written by tiered.
    #[error("not a tiered envelope")]
    Foreign,
    /// An unknown (older than any) wire version.
    #[error("wire version {0} is not supported")]
    WireVersion(u8),
    /// Written by a newer version of tiered: a miss, never deleted or overwritten.
    #[error("wire version {0} is newer than this build's")]
    Newer(u8),
    /// An envelope of another kind.
    #[error("envelope kind {0} is not a value")]
    Kind(u8),
    /// Written for another type or schema version.
    #[error("schema fingerprint does not match")]
    Fingerprint,
    /// The MessagePack payload does not decode as the expected type.
    #[error("payload does not decode: {0}")]
    Payload(String),
    /// The payload decoded but bytes were left over.
    #[error("{0} trailing bytes after the payload")]
    Trailing(usize),
}

/// Schema fingerprint: SHA-256 over a schema text (the value type as written, or a site's
/// name) and `version`, 16 bytes.
pub fn fingerprint(schema: &str, version: u32) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"tiered-schema\0");
    h.update(schema.as_bytes());
    h.update(b"\0");
    h.update(version.to_le_bytes());
    let d = h.finalize();
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&d[..16]);
    fp
}

/// Encodes `value` into an envelope with the given fingerprint and generation stamp, and no
/// expiry time (see [`encode_until`]).
pub fn encode<T: Serialize + ?Sized>(
    fingerprint: &[u8; 16],
    stamp: Stamp,
    value: &T,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    encode_until(fingerprint, stamp, 0, value)
}

/// Encodes `value` into an envelope that also records when its key expires
/// (`expires_at_ms`, Unix milliseconds; `0`: unknown).
pub fn encode_until<T: Serialize + ?Sized>(
    fingerprint: &[u8; 16],
    stamp: Stamp,
    expires_at_ms: u64,
    value: &T,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    encode_entry(
        fingerprint,
        stamp,
        Times {
            expires_at: expires_at_ms,
            kept_until: expires_at_ms,
            nonce: 0,
        },
        value,
    )
}

/// What an envelope records about its write, beside the generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    /// When the value expires by its TTL (Unix ms; `0`: unknown).
    pub expires_at: u64,
    /// When the key itself goes (Unix ms): past `expires_at` while fail-safe keeps the value
    /// as a stale fallback.
    pub kept_until: u64,
    /// Random per write.
    pub nonce: u64,
}

/// Encodes `value` into an envelope recording `times` (see the module docs).
pub fn encode_entry<T: Serialize + ?Sized>(
    fingerprint: &[u8; 16],
    stamp: Stamp,
    times: Times,
    value: &T,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let tags = stamp.tags.as_slice();
    let mut out = Vec::with_capacity(HEADER_LEN + 1 + 8 * tags.len() + 64);
    out.extend_from_slice(&MAGIC);
    out.push(if tags.is_empty() {
        WIRE_VERSION
    } else {
        TAGGED_WIRE_VERSION
    });
    out.push(KIND_VALUE);
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(&stamp.namespace.to_le_bytes());
    out.extend_from_slice(&stamp.site.to_le_bytes());
    out.extend_from_slice(&times.expires_at.to_le_bytes());
    out.extend_from_slice(&times.kept_until.to_le_bytes());
    out.extend_from_slice(&times.nonce.to_le_bytes());
    if !tags.is_empty() {
        out.push(tags.len() as u8);
        for g in tags {
            out.extend_from_slice(&g.to_le_bytes());
        }
    }
    value.serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())?;
    Ok(out)
}

/// The size of `value`'s payload as [`encode_entry`] writes it, without allocating it (the L1
/// weigher's measure under `l1_max_bytes`); 0 if it does not serialize.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match value.serialize(&mut rmp_serde::Serializer::new(&mut count).with_struct_map()) {
        Ok(()) => HEADER_LEN + count.0,
        Err(_) => 0,
    }
}

/// A fill lease: an envelope of kind 1 whose body is the holder's 16-byte token. Stored under
/// the key itself while its holder computes; never a value, never a decode failure.
pub(crate) fn lease(token: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_V1);
    out.extend_from_slice(&MAGIC);
    out.push(LEASE_VERSION);
    out.push(KIND_LEASE);
    out.extend_from_slice(token);
    out
}

/// Whether `bytes` have the form of a lease (of any holder).
pub(crate) fn is_lease(bytes: &[u8]) -> bool {
    bytes.len() == HEADER_V1
        && bytes[..2] == MAGIC
        && bytes[2] == LEASE_VERSION
        && bytes[3] == KIND_LEASE
}

/// Decodes an envelope, checking everything listed in the module docs; returns the value and
/// the generations it was written under.
pub fn decode<T: DeserializeOwned>(
    fingerprint: &[u8; 16],
    bytes: &[u8],
    max_value_bytes: usize,
) -> Result<(T, Stamp), DecodeError> {
    if bytes.len() > max_value_bytes {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if bytes.len() < HEADER_V1 || bytes[..2] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    let header = match bytes[2] {
        1 => HEADER_V1,
        2 => HEADER_V2,
        3 => HEADER_V3,
        WIRE_VERSION => HEADER_LEN,
        TAGGED_WIRE_VERSION => match bytes.get(HEADER_LEN) {
            Some(&n) if usize::from(n) <= MAX_TAGS => HEADER_LEN + 1 + 8 * usize::from(n),
            _ => return Err(DecodeError::Foreign),
        },
        v if v > TAGGED_WIRE_VERSION => return Err(DecodeError::Newer(v)),
        v => return Err(DecodeError::WireVersion(v)),
    };
    if bytes[3] != KIND_VALUE {
        return Err(DecodeError::Kind(bytes[3]));
    }
    if bytes[4..HEADER_V1] != fingerprint[..] {
        return Err(DecodeError::Fingerprint);
    }
    let Some(payload) = bytes.get(header..) else {
        return Err(DecodeError::Foreign);
    };
    let mut stamp = match bytes.get(HEADER_V1..header.min(HEADER_V2)) {
        Some(g) if g.len() == 16 => Stamp {
            namespace: u64::from_le_bytes(array8(&g[..8])),
            site: u64::from_le_bytes(array8(&g[8..])),
            tags: TagGens::default(),
        },
        _ => Stamp::default(),
    };
    if header > HEADER_LEN
        && let Some(gens) = bytes.get(HEADER_LEN + 1..header)
    {
        let mut tags = [0u64; MAX_TAGS];
        for (slot, g) in tags.iter_mut().zip(gens.chunks_exact(8)) {
            *slot = u64::from_le_bytes(array8(g));
        }
        stamp.tags = TagGens::from_slice(&tags[..gens.len() / 8]);
    }
    let mut de = rmp_serde::Deserializer::new(Cursor::new(payload));
    let value = T::deserialize(&mut de).map_err(|e| DecodeError::Payload(e.to_string()))?;
    let consumed = usize::try_from(de.position()).unwrap_or(usize::MAX);
    if consumed != payload.len() {
        return Err(DecodeError::Trailing(
            payload.len().saturating_sub(consumed),
        ));
    }
    Ok((value, stamp))
}

/// When the key of a value envelope expires (Unix milliseconds), if its writer recorded it
/// (wire 3 and later, non-zero). Read from the header only; call after [`decode`] accepted
/// the bytes.
pub fn expires_at(bytes: &[u8]) -> Option<u64> {
    if bytes.get(2).is_some_and(|v| *v >= 3) {
        bytes
            .get(HEADER_V2..HEADER_V3)
            .map(|b| u64::from_le_bytes(array8(b)))
            .filter(|ms| *ms != 0)
    } else {
        None
    }
}

/// When the key of a value envelope goes (Unix ms): its "kept until" (wire 4), else its
/// [`expires_at`]. Call after [`decode`] accepted the bytes.
pub fn kept_until(bytes: &[u8]) -> Option<u64> {
    if bytes.get(2).is_some_and(|v| *v >= 4) {
        bytes
            .get(HEADER_V3..HEADER_V3 + 8)
            .map(|b| u64::from_le_bytes(array8(b)))
            .filter(|ms| *ms != 0)
    } else {
        expires_at(bytes)
    }
}

/// The bytes that identify one write of an envelope: its header (wire 4, which carries a
/// random nonce), else the whole envelope.
pub fn version_tag(bytes: &[u8]) -> &[u8] {
    if bytes.get(2).is_some_and(|v| *v >= WIRE_VERSION) && bytes.len() >= HEADER_LEN {
        &bytes[..HEADER_LEN]
    } else {
        bytes
    }
}

/// The same wire-4 envelope with a new expiry and nonce (a stale value re-cached for fail-safe's
/// throttle period); `None` for older wires.
pub(crate) fn with_expiry(bytes: &[u8], expires_at: u64, nonce: u64) -> Option<Vec<u8>> {
    if bytes.get(2).is_none_or(|v| *v < WIRE_VERSION) || bytes.len() < HEADER_LEN {
        return None;
    }
    let mut out = bytes.to_vec();
    out[HEADER_V2..HEADER_V3].copy_from_slice(&expires_at.to_le_bytes());
    out[HEADER_V3 + 8..HEADER_LEN].copy_from_slice(&nonce.to_le_bytes());
    Some(out)
}

/// The wall clock in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn array8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8.min(b.len())]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Stamp = Stamp {
        namespace: 3,
        site: 4,
        tags: TagGens {
            gens: [0; MAX_TAGS],
            len: 0,
        },
    };

    #[test]
    fn a_lease_is_recognised_and_never_decodes_as_a_value() {
        let lease = lease(&[7; 16]);
        assert!(is_lease(&lease));
        assert_eq!(
            decode::<u8>(&[7; 16], &lease, 1 << 20),
            Err(DecodeError::Kind(KIND_LEASE))
        );
        assert!(!is_lease(&encode(&[7; 16], S, &1u8).unwrap_or_default()));
        assert!(!is_lease(b"tR"));
    }
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Person {
        first: String,
        last: String,
        age: u32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Swapped {
        last: String,
        first: String,
        age: u32,
    }

    fn fp() -> [u8; 16] {
        fingerprint("Person", 0)
    }

    fn ada() -> Person {
        Person {
            first: "Ada".into(),
            last: "Lovelace".into(),
            age: 36,
        }
    }

    #[test]
    fn expiry_rides_in_the_header_and_older_wires_still_decode() {
        let bytes = encode_until(&fp(), S, 1_234_567, &ada()).unwrap_or_default();
        assert_eq!(expires_at(&bytes), Some(1_234_567));
        assert_eq!(decode::<Person>(&fp(), &bytes, 1 << 20), Ok((ada(), S)));
        let none = encode(&fp(), S, &ada()).unwrap_or_default();
        assert_eq!(expires_at(&none), None);
        // The same value as wire 2 wrote it: no expiry field.
        let mut v2 = bytes[..HEADER_V2].to_vec();
        v2[2] = 2;
        v2.extend_from_slice(&bytes[HEADER_LEN..]);
        assert_eq!(decode::<Person>(&fp(), &v2, 1 << 20), Ok((ada(), S)));
        assert_eq!(expires_at(&v2), None);
        // As wire 3 wrote it: an expiry, nothing more.
        let mut v3 = bytes[..HEADER_V3].to_vec();
        v3[2] = 3;
        v3.extend_from_slice(&bytes[HEADER_LEN..]);
        assert_eq!(decode::<Person>(&fp(), &v3, 1 << 20), Ok((ada(), S)));
        assert_eq!(
            (expires_at(&v3), kept_until(&v3)),
            (Some(1_234_567), Some(1_234_567))
        );
    }

    #[test]
    fn tagged_values_are_wire_5_and_carry_their_tags_generations() {
        let stamp = Stamp {
            tags: TagGens::from_slice(&[7, 0, 9]),
            ..S
        };
        let t = Times {
            expires_at: 10,
            kept_until: 20,
            nonce: 7,
        };
        let bytes = encode_entry(&fp(), stamp, t, &ada()).unwrap_or_default();
        assert_eq!(bytes[2], TAGGED_WIRE_VERSION);
        assert_eq!(decode::<Person>(&fp(), &bytes, 1 << 20), Ok((ada(), stamp)));
        assert_eq!(
            (expires_at(&bytes), kept_until(&bytes)),
            (Some(10), Some(20))
        );
        assert_eq!(version_tag(&bytes), &bytes[..HEADER_LEN]);
        let later = with_expiry(&bytes, 30, 8).unwrap_or_default();
        assert_eq!(expires_at(&later), Some(30));
        assert_eq!(decode::<Person>(&fp(), &later, 1 << 20), Ok((ada(), stamp)));
        // A newer tag generation makes it older; an untagged value is wire 4.
        let current = Stamp {
            tags: TagGens::from_slice(&[7, 1, 9]),
            ..S
        };
        assert!(stamp.is_older_than(&current) && !current.is_older_than(&stamp));
        assert!(current.is_newer_than(&stamp));
        assert_eq!(
            encode(&fp(), S, &ada()).unwrap_or_default()[2],
            WIRE_VERSION
        );
        // A tag count past the limit is not ours.
        let mut bad = bytes.clone();
        bad[HEADER_LEN] = (MAX_TAGS + 1) as u8;
        assert_eq!(
            decode::<Person>(&fp(), &bad, 1 << 20),
            Err(DecodeError::Foreign)
        );
    }

    #[test]
    fn kept_until_and_version_tags() {
        let t = Times {
            expires_at: 10,
            kept_until: 20,
            nonce: 7,
        };
        let bytes = encode_entry(&fp(), S, t, &ada()).unwrap_or_default();
        assert_eq!(
            (expires_at(&bytes), kept_until(&bytes)),
            (Some(10), Some(20))
        );
        let again = encode_entry(&fp(), S, Times { nonce: 8, ..t }, &ada()).unwrap_or_default();
        assert_ne!(
            version_tag(&bytes),
            version_tag(&again),
            "the nonce tells writes apart"
        );
        let recached = with_expiry(&bytes, 15, 9).unwrap_or_default();
        assert_eq!(
            (expires_at(&recached), kept_until(&recached)),
            (Some(15), Some(20))
        );
        assert_eq!(decode::<Person>(&fp(), &recached, 1 << 20), Ok((ada(), S)));
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&fp(), S, &ada()).unwrap_or_default();
        assert_eq!(decode::<Person>(&fp(), &bytes, 1 << 20), Ok((ada(), S)));
    }

    #[test]
    fn swapped_fields_decode_by_name_never_into_swapped_values() {
        let bytes = encode(&fp(), S, &ada()).unwrap_or_default();
        let s = decode::<Swapped>(&fp(), &bytes, 1 << 20);
        assert_eq!(
            s.map(|(s, _)| (s.first, s.last)),
            Ok(("Ada".into(), "Lovelace".into()))
        );
    }

    #[test]
    fn every_kind_of_bad_bytes_is_refused() {
        let good = encode(&fp(), S, &ada()).unwrap_or_default();
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"junk");
        let mut version = good.clone();
        version[2] = 9;
        let mut kind = good.clone();
        kind[3] = 7;
        let other_fp = fingerprint("Person", 1);
        let d = |b: &[u8]| decode::<Person>(&fp(), b, 1 << 20);
        assert_eq!(d(b""), Err(DecodeError::Foreign));
        assert_eq!(
            d(b"random bytes that are not ours at all"),
            Err(DecodeError::Foreign)
        );
        assert!(matches!(
            d(&good[..good.len() - 3]),
            Err(DecodeError::Payload(_))
        ));
        assert_eq!(d(&trailing), Err(DecodeError::Trailing(4)));
        assert_eq!(d(&version), Err(DecodeError::Newer(9)));
        let mut ancient = good.clone();
        ancient[2] = 0;
        assert_eq!(d(&ancient), Err(DecodeError::WireVersion(0)));
        assert_eq!(d(&kind), Err(DecodeError::Kind(7)));
        assert_eq!(
            decode::<Person>(&other_fp, &good, 1 << 20),
            Err(DecodeError::Fingerprint)
        );
        assert_eq!(
            decode::<Person>(&fp(), &good, 10),
            Err(DecodeError::TooLarge(good.len()))
        );
    }

    #[test]
    fn hostile_headers_fail_fast_without_panicking() {
        // array32 claiming u32::MAX elements.
        let mut huge = Vec::from(&encode(&fp(), S, &0u8).unwrap_or_default()[..HEADER_LEN]);
        huge.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(decode::<Vec<u32>>(&fp(), &huge, 1 << 20).is_err());
        // 200 000 nested arrays.
        let mut deep = Vec::from(&huge[..HEADER_LEN]);
        deep.extend(std::iter::repeat_n(0x91u8, 200_000));
        deep.push(0x01);
        assert!(decode::<Vec<u32>>(&fp(), &deep, 1 << 20).is_err());
    }

    #[test]
    fn wire_1_values_read_as_generation_zero() {
        // Wire 1: the same header without the generations.
        let v2 = encode(&fp(), S, &ada()).unwrap_or_default();
        let mut v1 = v2[..HEADER_V1].to_vec();
        v1[2] = 1;
        v1.extend_from_slice(&v2[HEADER_LEN..]);
        assert_eq!(
            decode::<Person>(&fp(), &v1, 1 << 20),
            Ok((ada(), Stamp::default()))
        );
        let short = &v2[..HEADER_LEN - 3];
        assert!(decode::<Person>(&fp(), short, 1 << 20).is_err());
    }

    #[test]
    fn stamps_compare_per_generation() {
        let s = |namespace, site| Stamp {
            namespace,
            site,
            ..Stamp::default()
        };
        assert!(s(0, 1).is_older_than(&s(0, 2)));
        assert!(s(1, 5).is_older_than(&s(2, 0)));
        assert!(!s(2, 2).is_older_than(&s(2, 2)));
        assert!(s(0, 3).is_newer_than(&s(0, 2)));
        assert!(!s(0, 2).is_newer_than(&s(1, 2)));
    }

    #[test]
    fn fingerprint_depends_on_type_and_version() {
        assert_ne!(fingerprint("A", 0), fingerprint("B", 0));
        assert_ne!(fingerprint("A", 0), fingerprint("A", 1));
        assert_eq!(fingerprint("A", 3), fingerprint("A", 3));
    }
}
