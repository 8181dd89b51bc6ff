//! The feed's binary form (`format=bin`): what a proxy filter reads, a page without JSON's cost
//! to parse (a million denied ids are a hundred pages of ten thousand). JSON stays for people
//! and for readers that do not ask for this.
//!
//! Versioned and length-checked, little-endian:
//!
//! ```text
//! "TSF" 0x01                      magic and version
//! flags u8                        bit 0: more; bit 1: an anchor follows
//! next i64, now_ms i64
//! anchor [u8; 16]                 if flagged
//! count u32                       at most MAX_PAGE
//! count × change:
//!   1 (cutoff) seq i64, cutoff_ms i64, moot_after_ms i64 (i64::MIN: none), len u16, user id
//!   2 (denied) seq i64, moot_after_ms i64, kind len u8, kind, len u16, id
//! ```
//!
//! Anything else — another magic or version, a length past the end, a count over the bound,
//! bytes left over, text that is not UTF-8 — is refused whole: a reader applies nothing of it.
use super::{FeedChange, FeedPage, MAX_PAGE, link_from_hex, link_hex};

/// The first bytes of a binary page: magic and version.
pub const MAGIC: [u8; 4] = *b"TSF\x01";

/// The media type a binary page is served as.
pub const CONTENT_TYPE: &str = "application/vnd.token-sidecar.feed.v1";

const CUTOFF: u8 = 1;
const DENIED: u8 = 2;
const NO_MOOT: i64 = i64::MIN;

/// The page in its binary form.
pub fn encode(page: &FeedPage) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + page.changes.len() * 48);
    out.extend_from_slice(&MAGIC);
    let anchor = page.anchor.as_deref().and_then(link_from_hex);
    let flags = u8::from(page.more) | (u8::from(anchor.is_some()) << 1);
    out.push(flags);
    out.extend_from_slice(&page.next.to_le_bytes());
    out.extend_from_slice(&page.now_ms.to_le_bytes());
    if let Some(anchor) = anchor {
        out.extend_from_slice(&anchor);
    }
    let count = u32::try_from(page.changes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for change in &page.changes {
        match change {
            FeedChange::Cutoff {
                seq,
                user_id,
                cutoff_ms,
                moot_after_ms,
            } => {
                out.push(CUTOFF);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&cutoff_ms.to_le_bytes());
                out.extend_from_slice(&moot_after_ms.unwrap_or(NO_MOOT).to_le_bytes());
                text16(&mut out, user_id);
            }
            FeedChange::Denied {
                seq,
                kind,
                id,
                moot_after_ms,
            } => {
                out.push(DENIED);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&moot_after_ms.to_le_bytes());
                let kind = &kind.as_bytes()[..kind.len().min(255)];
                out.push(u8::try_from(kind.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(kind);
                text16(&mut out, id);
            }
        }
    }
    out
}

fn text16(out: &mut Vec<u8>, text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a page's binary form; why not, when it is not one.
pub fn decode(bytes: &[u8]) -> Result<FeedPage, &'static str> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return Err("not a binary feed page of version 1");
    }
    let flags = r.u8()?;
    if flags & !0b11 != 0 {
        return Err("unknown flags");
    }
    let next = r.i64()?;
    let now_ms = r.i64()?;
    let anchor = if flags & 0b10 != 0 {
        Some(link_hex(r.take(16)?))
    } else {
        None
    };
    let count = r.u32()?;
    if i64::from(count) > MAX_PAGE {
        return Err("more changes than a page holds");
    }
    let mut changes = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let change = match r.u8()? {
            CUTOFF => {
                let seq = r.i64()?;
                let cutoff_ms = r.i64()?;
                let moot = r.i64()?;
                FeedChange::Cutoff {
                    seq,
                    cutoff_ms,
                    moot_after_ms: (moot != NO_MOOT).then_some(moot),
                    user_id: r.text16()?,
                }
            }
            DENIED => {
                let seq = r.i64()?;
                let moot_after_ms = r.i64()?;
                let kind_len = usize::from(r.u8()?);
                let kind = std::str::from_utf8(r.take(kind_len)?)
                    .map_err(|_| "a kind that is not UTF-8")?
                    .to_owned();
                FeedChange::Denied {
                    seq,
                    kind,
                    moot_after_ms,
                    id: r.text16()?,
                }
            }
            _ => return Err("an unknown change type"),
        };
        changes.push(change);
    }
    if r.at != bytes.len() {
        return Err("bytes after the last change");
    }
    Ok(FeedPage {
        changes,
        next,
        anchor,
        more: flags & 1 != 0,
        now_ms,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(n).ok_or("a length past the end")?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or("a length past the end")?;
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn i64(&mut self) -> Result<i64, &'static str> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(b))
    }

    fn text16(&mut self) -> Result<String, &'static str> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        let len = usize::from(u16::from_le_bytes(b));
        std::str::from_utf8(self.take(len)?)
            .map(str::to_owned)
            .map_err(|_| "text that is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> FeedPage {
        FeedPage {
            changes: vec![
                FeedChange::Cutoff {
                    seq: 7,
                    user_id: "alice".into(),
                    cutoff_ms: 1_800_000_000_000,
                    moot_after_ms: Some(1_800_604_800_001),
                },
                FeedChange::Cutoff {
                    seq: 8,
                    user_id: "bob".into(),
                    cutoff_ms: 5,
                    moot_after_ms: None,
                },
                FeedChange::Denied {
                    seq: 9,
                    kind: "jti".into(),
                    id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
                    moot_after_ms: 1_800_000_300_000,
                },
            ],
            next: 9,
            anchor: Some(link_hex(&[0xab; 16])),
            more: true,
            now_ms: 1_800_000_000_123,
        }
    }

    #[test]
    fn a_page_round_trips_as_json_does() {
        let page = page();
        assert_eq!(decode(&encode(&page)), Ok(page.clone()));
        let bare = FeedPage {
            changes: Vec::new(),
            anchor: None,
            more: false,
            ..page
        };
        assert_eq!(decode(&encode(&bare)), Ok(bare));
    }

    #[test]
    fn anything_else_is_refused_whole() {
        let bytes = encode(&page());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut version = bytes.clone();
        version[3] = 2;
        assert!(decode(&version).is_err());
        let mut huge = bytes[..4 + 1 + 16 + 16].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err(), "a count over the bound");
        assert!(decode(b"{\"changes\":[]}").is_err(), "JSON is not this");
    }
}
