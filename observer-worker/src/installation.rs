//! This installation's identity (`observers.installation.id`, a UUID the extension creates once
//! and `pg_dump` keeps) and the idempotency key of an (event, action) pair derived from it.
//!
//! The key is the one place that says what identifies a pair to the outside world: the webhook-id
//! header today, and whatever an action needs as its idempotency key (an e-mail `Message-ID`, a
//! search document `_id`, a job's unique key) derives from [`InstallationId::pair_id`] too.
//! The extension computes the same text in SQL (`observers._webhook_id`, for replays, DLQ retries
//! and `debug_event`); docs/WEBHOOKS.md documents the format. Keep all three identical.

use std::fmt;

/// The 16 bytes of `observers.installation.id`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstallationId([u8; 16]);

impl InstallationId {
    pub const fn from_bytes(bytes: [u8; 16]) -> InstallationId {
        InstallationId(bytes)
    }

    /// Parses the UUID text PostgreSQL prints (`0b0e5a3c-0f5a-4c1e-9d3a-1f2e3d4c5b6a`, hyphens
    /// optional). `None` if it is not 32 hex digits.
    pub fn parse(uuid: &str) -> Option<InstallationId> {
        let hex: Vec<u8> = uuid.bytes().filter(|c| *c != b'-').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
            *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(InstallationId(out))
    }

    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The first 16 hex digits of the UUID (its first 64 bits, 60 of them random in a version 4
    /// UUID): short enough for a header, long enough that installations practically never share
    /// it (one pair in about 10^18; a million installations: about 4 in 10^7).
    pub fn short(&self) -> String {
        hex(&self.0[..8])
    }

    /// The idempotency key of a pair: `evt_<short installation id>_<event id>_<action index>`.
    /// The same for every attempt, retry, redelivery after a crash, DLQ retry and replay of the
    /// pair, and after pg_dump/restore (the installation id and the event id sequence are kept);
    /// different for every other pair of this installation and for any other installation.
    pub fn pair_id(&self, event_id: i64, action_index: usize) -> String {
        format!("evt_{}_{event_id}_{action_index}", self.short())
    }

    /// The `_id` of an event's search document (the Elasticsearch sink): `evt_<short
    /// installation id>_<event id>`, stable in the same ways as [`InstallationId::pair_id`]
    /// (one document per event, whatever its observer's actions).
    pub fn document_id(&self, event_id: i64) -> String {
        format!("evt_{}_{event_id}", self.short())
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex(&self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstallationId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0b0e5a3c-0f5a-4c1e-9d3a-1f2e3d4c5b6a";

    #[test]
    fn parses_and_prints_the_uuid() {
        let i = InstallationId::parse(UUID).unwrap();
        assert_eq!(i.bytes()[0], 0x0b);
        assert_eq!(i.bytes()[15], 0x6a);
        assert_eq!(i.to_string(), UUID);
        assert_eq!(
            InstallationId::parse("0b0e5a3c0f5a4c1e9d3a1f2e3d4c5b6a"),
            Some(i)
        );
        assert!(InstallationId::parse("not-a-uuid").is_none());
        assert!(InstallationId::parse("0b0e5a3c-0f5a-4c1e-9d3a-1f2e3d4c5b6").is_none());
        assert!(InstallationId::parse("0b0e5a3c-0f5a-4c1e-9d3a-1f2e3d4c5b6z").is_none());
        assert!(InstallationId::parse("é0e5a3c-0f5a-4c1e-9d3a-1f2e3d4c5b6a").is_none());
    }

    /// The format is a contract (docs/WEBHOOKS.md) and must equal the extension's
    /// observers._webhook_id (the end-to-end tests compare the two on real deliveries).
    #[test]
    fn pair_id_format() {
        let i = InstallationId::parse(UUID).unwrap();
        assert_eq!(i.short(), "0b0e5a3c0f5a4c1e");
        assert_eq!(i.pair_id(1042, 0), "evt_0b0e5a3c0f5a4c1e_1042_0");
        assert_eq!(i.pair_id(7, 3), "evt_0b0e5a3c0f5a4c1e_7_3");
    }

    #[test]
    fn pair_ids_differ_between_pairs_and_installations() {
        let a = InstallationId::parse(UUID).unwrap();
        let b = InstallationId::parse("ffffffff-0f5a-4c1e-9d3a-1f2e3d4c5b6a").unwrap();
        assert_eq!(a.pair_id(1, 0), a.pair_id(1, 0), "stable for a pair");
        assert_ne!(a.pair_id(1, 0), a.pair_id(1, 1));
        assert_ne!(a.pair_id(1, 0), a.pair_id(10, 0));
        assert_ne!(
            a.pair_id(11, 0),
            a.pair_id(1, 10),
            "no ambiguous concatenation"
        );
        assert_ne!(
            a.pair_id(1, 0),
            b.pair_id(1, 0),
            "another installation, another id"
        );
    }
}
