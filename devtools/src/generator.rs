//! Member events for the demo, the benchmark and the tests: about 250 bytes each, with a share of
//! exact duplicates (the same event sent again) and of malformed payloads. Deterministic per seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a generated record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new event.
    Unique,
    /// An event sent again (same key and bytes as an earlier one).
    Duplicate,
    /// Not valid JSON.
    Malformed,
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct Event {
    pub key: String,
    pub payload: Vec<u8>,
    pub kind: Kind,
}

/// Generator settings.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Share of records that repeat a recent event, e.g. 0.05.
    pub duplicates: f64,
    /// Share of records that are malformed, e.g. 0.001.
    pub malformed: f64,
    pub seed: u64,
}

const TYPES: &[&str] = &[
    "signup",
    "login",
    "logout",
    "profile_update",
    "password_change",
    "withdrawal",
];
const CHANNELS: &[&str] = &["ios", "android", "web"];

/// An endless stream of events.
pub struct Generator {
    rng: StdRng,
    mix: Mix,
    next_id: u64,
    recent: Vec<Event>,
}

impl Generator {
    pub fn new(mix: Mix) -> Self {
        Self {
            rng: StdRng::seed_from_u64(mix.seed),
            mix,
            next_id: 0,
            recent: Vec::with_capacity(1024),
        }
    }

    fn fresh(&mut self) -> Event {
        let id = self.next_id;
        self.next_id += 1;
        let member = self.rng.random_range(0..100_000u32);
        let event_type = TYPES[self.rng.random_range(0..TYPES.len())];
        let channel = CHANNELS[self.rng.random_range(0..CHANNELS.len())];
        let (h, m, s, ms) = (
            self.rng.random_range(0..24u8),
            self.rng.random_range(0..60u8),
            self.rng.random_range(0..60u8),
            self.rng.random_range(0..1000u16),
        );
        let payload = format!(
            concat!(
                r#"{{"event_id":"evt-{:012}","member_id":"m-{:06}","event_type":"{}","occurred_at":"2026-11-27T{:02}:{:02}:{:02}.{:03}Z","#,
                r#""channel":"{}","seq":{},"attributes":{{"ip":"10.{}.{}.{}","plan":"{}","locale":"ko-KR","session":"s-{:016x}"}}}}"#
            ),
            id,
            member,
            event_type,
            h,
            m,
            s,
            ms,
            channel,
            id,
            self.rng.random_range(0..256u16),
            self.rng.random_range(0..256u16),
            self.rng.random_range(0..256u16),
            if member % 3 == 0 { "premium" } else { "basic" },
            self.rng.random::<u64>(),
        );
        Event {
            key: format!("m-{member:06}"),
            payload: payload.into_bytes(),
            kind: Kind::Unique,
        }
    }
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let roll: f64 = self.rng.random();
        if roll < self.mix.malformed {
            let id = self.rng.random::<u32>();
            let payload = format!(r#"{{"event_id":"bad-{id}","member_id": "#).into_bytes();
            return Some(Event {
                key: format!("bad-{id}"),
                payload,
                kind: Kind::Malformed,
            });
        }
        if roll < self.mix.malformed + self.mix.duplicates && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            let mut dup = self.recent[i].clone();
            dup.kind = Kind::Duplicate;
            return Some(dup);
        }
        let e = self.fresh();
        if self.recent.len() < 1024 {
            self.recent.push(e.clone());
        } else {
            let i = self.rng.random_range(0..1024);
            self.recent[i] = e.clone();
        }
        Some(e)
    }
}

/// Counts of what was generated.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub unique: u64,
    pub duplicates: u64,
    pub malformed: u64,
}

impl Counts {
    pub fn add(&mut self, kind: Kind) {
        match kind {
            Kind::Unique => self.unique += 1,
            Kind::Duplicate => self.duplicates += 1,
            Kind::Malformed => self.malformed += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.unique + self.duplicates + self.malformed
    }
}

/// The table schema of the generated member events (`fields` of a `tables.insert`), with bqsink's
/// default `_kafka_*` metadata columns: what the demo, the bench and the tests create the table with
/// (the Storage Write API encodes rows from the table's schema).
pub fn member_events_fields() -> serde_json::Value {
    let s = |name: &str, ty: &str| serde_json::json!({"name": name, "type": ty});
    serde_json::json!([
        s("event_id", "STRING"), s("member_id", "STRING"), s("event_type", "STRING"),
        s("occurred_at", "TIMESTAMP"), s("channel", "STRING"), s("seq", "INTEGER"),
        {"name": "attributes", "type": "RECORD", "fields": [s("ip", "STRING"), s("plan", "STRING"), s("locale", "STRING"), s("session", "STRING")]},
        s("_kafka_topic", "STRING"), s("_kafka_partition", "INTEGER"), s("_kafka_offset", "INTEGER"), s("_kafka_timestamp", "TIMESTAMP"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_and_size() {
        let mut counts = Counts::default();
        let mut bytes = 0;
        for e in Generator::new(Mix {
            duplicates: 0.05,
            malformed: 0.01,
            seed: 1,
        })
        .take(20_000)
        {
            counts.add(e.kind);
            bytes += e.payload.len();
            if e.kind != Kind::Malformed {
                serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap();
            }
        }
        let avg = bytes / 20_000;
        assert!((200..300).contains(&avg), "average payload {avg} bytes");
        assert!((800..1200).contains(&counts.duplicates), "{counts:?}");
        assert!((100..300).contains(&counts.malformed), "{counts:?}");
    }
}
