//! A cached result: the exact backend messages a read produced, the table generations
//! it was read under, and its lifetime. Serialized (and compressed above a threshold)
//! for Valkey, with the full key inside so a lookup never trusts a hash alone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The cached messages and their provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full cache key.
    pub key: Bytes,
    /// RowDescription, when the request asked for one.
    pub row_description: Option<Bytes>,
    /// DataRows and the CommandComplete, byte for byte.
    pub body: Bytes,
    /// Tables read, with the generation each had when the read began.
    pub tables: Vec<(String, u64)>,
    /// The database-wide generation when the read began.
    pub db_gen: u64,
    /// When it was filled (ms since the Unix epoch, comparable across sidecars).
    pub filled_at_ms: u64,
    /// Served fresh for this long.
    pub ttl: Duration,
    /// Then served stale for this long while one request refreshes it.
    pub swr: Duration,
    /// Rule index + 1 (0: a hint).
    pub rule: u32,
}

/// How usable an entry is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Age {
    /// Within its ttl.
    Fresh,
    /// Past ttl but within stale-while-revalidate.
    Stale,
    /// Too old.
    Expired,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Entry {
    /// Bytes it occupies (for the L1 byte budget).
    pub fn weight(&self) -> usize {
        self.key.len()
            + self.body.len()
            + self.row_description.as_ref().map_or(0, Bytes::len)
            + self.tables.iter().map(|(t, _)| t.len() + 8).sum::<usize>()
            + 96
    }

    /// Its age at `now_ms`.
    pub fn age(&self, now_ms: u64) -> Age {
        let age = Duration::from_millis(now_ms.saturating_sub(self.filled_at_ms));
        if age < self.ttl {
            Age::Fresh
        } else if age < self.ttl + self.swr {
            Age::Stale
        } else {
            Age::Expired
        }
    }

    /// Time left before it expires entirely.
    pub fn remaining(&self, now_ms: u64) -> Duration {
        let age = Duration::from_millis(now_ms.saturating_sub(self.filled_at_ms));
        (self.ttl + self.swr).saturating_sub(age)
    }

    /// Serializes for Valkey; the payload is lz4-compressed when larger than
    /// `compress_above`.
    pub fn encode(&self, compress_above: usize) -> Vec<u8> {
        let mut p = BytesMut::with_capacity(self.weight() + 64);
        put_bytes(&mut p, &self.key);
        match &self.row_description {
            Some(rd) => {
                p.put_u8(1);
                put_bytes(&mut p, rd);
            }
            None => p.put_u8(0),
        }
        put_bytes(&mut p, &self.body);
        p.put_u32(self.tables.len() as u32);
        for (t, g) in &self.tables {
            put_bytes(&mut p, t.as_bytes());
            p.put_u64(*g);
        }
        p.put_u64(self.db_gen);
        p.put_u64(self.filled_at_ms);
        p.put_u64(self.ttl.as_millis() as u64);
        p.put_u64(self.swr.as_millis() as u64);
        p.put_u32(self.rule);
        let mut out = Vec::with_capacity(p.len() + 8);
        out.extend_from_slice(b"SLC1");
        if p.len() > compress_above {
            out.push(1);
            out.extend_from_slice(&lz4_flex::compress_prepend_size(&p));
        } else {
            out.push(0);
            out.extend_from_slice(&p);
        }
        out
    }

    /// Reads what [`Entry::encode`] wrote; `None` for anything else.
    pub fn decode(raw: &[u8]) -> Option<Entry> {
        let rest = raw.strip_prefix(b"SLC1")?;
        let (&flag, rest) = rest.split_first()?;
        let owned;
        let mut p: &[u8] = match flag {
            0 => rest,
            1 => {
                owned = lz4_flex::decompress_size_prepended(rest).ok()?;
                &owned
            }
            _ => return None,
        };
        let key = get_bytes(&mut p)?;
        let row_description = match get_u8(&mut p)? {
            1 => Some(get_bytes(&mut p)?),
            _ => None,
        };
        let body = get_bytes(&mut p)?;
        let n = get_u32(&mut p)? as usize;
        let mut tables = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let t = String::from_utf8(get_bytes(&mut p)?.to_vec()).ok()?;
            tables.push((t, get_u64(&mut p)?));
        }
        Some(Entry {
            key,
            row_description,
            body,
            tables,
            db_gen: get_u64(&mut p)?,
            filled_at_ms: get_u64(&mut p)?,
            ttl: Duration::from_millis(get_u64(&mut p)?),
            swr: Duration::from_millis(get_u64(&mut p)?),
            rule: get_u32(&mut p)?,
        })
    }
}

fn put_bytes(p: &mut BytesMut, b: &[u8]) {
    p.put_u32(b.len() as u32);
    p.put_slice(b);
}

fn get_u8(p: &mut &[u8]) -> Option<u8> {
    (p.remaining() >= 1).then(|| p.get_u8())
}

fn get_u32(p: &mut &[u8]) -> Option<u32> {
    (p.remaining() >= 4).then(|| p.get_u32())
}

fn get_u64(p: &mut &[u8]) -> Option<u64> {
    (p.remaining() >= 8).then(|| p.get_u64())
}

fn get_bytes(p: &mut &[u8]) -> Option<Bytes> {
    let n = get_u32(p)? as usize;
    if p.remaining() < n {
        return None;
    }
    let b = Bytes::copy_from_slice(&p[..n]);
    p.advance(n);
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &[u8]) -> Entry {
        Entry {
            key: Bytes::from_static(b"v1\0key"),
            row_description: Some(Bytes::from_static(b"T....")),
            body: Bytes::copy_from_slice(body),
            tables: vec![("users".into(), 3), ("roles".into(), 9)],
            db_gen: 2,
            filled_at_ms: 1_000,
            ttl: Duration::from_secs(60),
            swr: Duration::from_secs(30),
            rule: 1,
        }
    }

    #[test]
    fn round_trips_plain_and_compressed() {
        let small = entry(b"D rows C");
        assert_eq!(Entry::decode(&small.encode(1 << 20)), Some(small.clone()));
        let big = entry(&vec![b'x'; 10_000]);
        let enc = big.encode(100);
        assert!(enc.len() < 1_000, "compressed to {}", enc.len());
        assert_eq!(Entry::decode(&enc), Some(big));
        assert_eq!(Entry::decode(b"garbage"), None);
        assert_eq!(Entry::decode(&small.encode(1 << 20)[..20]), None);
    }

    #[test]
    fn ages() {
        let e = entry(b"x");
        assert_eq!(e.age(1_000 + 59_999), Age::Fresh);
        assert_eq!(e.age(1_000 + 60_000), Age::Stale);
        assert_eq!(e.age(1_000 + 90_000), Age::Expired);
        assert_eq!(e.remaining(1_000 + 80_000), Duration::from_secs(10));
    }
}
