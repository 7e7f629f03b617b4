//! Input framing of the targets that take several packets: a sequence of records
//! `[tag: u8][len: u16 big-endian][len bytes]`. A record whose length runs past the
//! end takes what is left, so every input decodes. At most [`MAX_RECORDS`] are read.

/// Records read from one input; more would only slow the fuzzer down.
pub const MAX_RECORDS: usize = 64;

/// One record: a tag the target interprets, and the payload.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Per-record flags or selector; its meaning is the target's.
    pub tag: u8,
    /// The packet or datagram.
    pub data: &'a [u8],
}

/// Splits `input` into records.
pub fn records(mut input: &[u8]) -> impl Iterator<Item = Record<'_>> {
    std::iter::from_fn(move || {
        let (&tag, rest) = input.split_first()?;
        let len = match rest {
            [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
            _ => 0,
        };
        let rest = rest.get(2..).unwrap_or_default();
        let (data, next) = rest.split_at(len.min(rest.len()));
        input = next;
        Some(Record { tag, data })
    })
    .take(MAX_RECORDS)
}

/// Appends one record to `out` (the seed generator's side).
pub fn push(out: &mut Vec<u8>, tag: u8, data: &[u8]) {
    let len = u16::try_from(data.len()).expect("records are at most 65535 bytes");
    out.push(tag);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
}
