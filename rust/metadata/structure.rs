//! The structure of a JSON value followed through its bytes: strings, escapes
//! and depth, with a mark at each separator of a list's elements and at the
//! bracket that closes the value. What `metadata` cuts a JSON list with.
//!
//! Escapes are read the same way inside and outside strings: a byte preceded
//! by an odd run of backslashes is escaped, and an escaped quote never opens or
//! closes a string. Outside strings only quotes, backslashes, brackets, braces
//! and commas matter.
//!
//! Two ways give the same result (a property test checks it): byte by byte,
//! and, on x86-64, 64 bytes at a time with SSE2 (part of every x86-64 CPU):
//! the quotes, backslashes and structural bytes of a block as bit masks, the
//! escaped bytes from the backslash bits, the bytes inside strings as the
//! running parity of the unescaped quotes, then one step per structural byte
//! outside strings. A pretty-printed HPDv3 list has about ten of those in 300
//! bytes, so most blocks cost a few instructions.

/// The bytes the byte-by-byte scan looks at outside strings.
const STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut k = 0;
    let marks = *b"\"\\[]{},";
    while k < marks.len() {
        t[marks[k] as usize] = true;
        k += 1;
    }
    t
};

/// Where a scan is: the depth of brackets and braces, inside a string or not,
/// and whether the next byte is escaped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StructScan {
    depth: i64,
    in_string: bool,
    escaped: bool,
}

/// What the scan met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A separator of a list's elements: its opening bracket or a comma at depth 1.
    Separator(usize),
    /// The bracket that closes the scanned value.
    Close(usize),
}

/// What a structural byte outside strings did.
enum Step {
    Go,
    /// Stop after this byte.
    Stop,
}

impl StructScan {
    /// The state of a scan at `depth`, inside a string or not, nothing escaped.
    pub fn at(depth: i64, in_string: bool) -> Self {
        StructScan { depth, in_string, escaped: false }
    }

    /// Scan `buf` (the continuation of what was scanned before), calling `mark`
    /// for each separator and for the closing bracket; stops after the closing
    /// bracket or when `mark` returns false. Returns the position scanned up to.
    pub fn scan(&mut self, buf: &[u8], mut mark: impl FnMut(Mark) -> bool) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            let (at, stopped) = self.scan_blocks(buf, &mut mark);
            if stopped {
                return at;
            }
            // The rest, under 64 bytes, with its marks placed in `buf`.
            let mut shifted = |m: Mark| {
                mark(match m {
                    Mark::Separator(p) => Mark::Separator(at + p),
                    Mark::Close(p) => Mark::Close(at + p),
                })
            };
            at + self.scan_bytes(&buf[at..], &mut shifted)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self.scan_bytes(buf, &mut mark)
        }
    }

    /// A bracket, brace or comma outside strings at `at`.
    #[inline]
    fn structural(&mut self, c: u8, at: usize, mark: &mut impl FnMut(Mark) -> bool) -> Step {
        match c {
            b'[' | b'{' => {
                self.depth += 1;
                if self.depth == 1 && !mark(Mark::Separator(at)) {
                    return Step::Stop;
                }
            }
            b']' | b'}' => {
                self.depth -= 1;
                if self.depth <= 0 {
                    mark(Mark::Close(at));
                    return Step::Stop;
                }
            }
            b',' if self.depth == 1 && !mark(Mark::Separator(at)) => return Step::Stop,
            _ => {}
        }
        Step::Go
    }

    /// The scan byte by byte (strings by `memchr`).
    fn scan_bytes(&mut self, buf: &[u8], mark: &mut impl FnMut(Mark) -> bool) -> usize {
        let mut i = 0;
        let n = buf.len();
        while i < n {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &buf[i..]) {
                    None => return n,
                    Some(k) => {
                        i += k;
                        if buf[i] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                        }
                        i += 1;
                    }
                }
                continue;
            }
            // Skip what does not matter outside a string (a pretty-printed file's indentation, the
            // numbers) by table lookup; a boring byte also ends an escape, as below.
            let from = i;
            while i < n && !STRUCTURAL[buf[i] as usize] {
                i += 1;
            }
            if i > from {
                self.escaped = false;
            }
            if i == n {
                break;
            }
            let c = buf[i];
            i += 1;
            if c == b'\\' {
                self.escaped = !self.escaped;
                continue;
            }
            let was_escaped = std::mem::take(&mut self.escaped);
            if c == b'"' {
                if !was_escaped {
                    self.in_string = true;
                }
                continue;
            }
            if let Step::Stop = self.structural(c, i - 1, mark) {
                return i;
            }
        }
        n
    }

    /// The whole 64-byte blocks of `buf`: the position scanned up to, and whether the scan stopped
    /// there (else the rest, under 64 bytes, is for [`Self::scan_bytes`]).
    #[cfg(target_arch = "x86_64")]
    fn scan_blocks(&mut self, buf: &[u8], mark: &mut impl FnMut(Mark) -> bool) -> (usize, bool) {
        let mut at = 0;
        while let Some(block) = buf.get(at..at + 64) {
            let block: &[u8; 64] = block.try_into().expect("64 bytes");
            // `odd` bit j: byte j is inside a string (a quote counts with what it opens, not what
            // it closes; only structural bytes are asked about, and they are never quotes).
            let (m, odd) = strings(block, &mut self.escaped, self.in_string);
            let mut outside = m.structural & !odd;
            while outside != 0 {
                let j = outside.trailing_zeros() as usize;
                outside &= outside - 1;
                if let Step::Stop = self.structural(block[j], at + j, mark) {
                    // A structural byte outside a string: no string open, nothing escaped.
                    self.in_string = false;
                    self.escaped = false;
                    return (at + j + 1, true);
                }
            }
            self.in_string = odd >> 63 == 1;
            at += 64;
        }
        (at, false)
    }
}

/// One block's masks, and bit j set where an odd number of string delimiters (unescaped quotes)
/// come before byte j or at it, counting `odd_before` (an odd number before the block). `escaped`
/// carries a run of backslashes from one block to the next.
#[cfg(target_arch = "x86_64")]
fn strings(block: &[u8; 64], escaped: &mut bool, odd_before: bool) -> (sse2::Masks, u64) {
    let m = sse2::masks(block);
    let quotes = m.quote & !escaped_bits(m.backslash, escaped);
    let odd = prefix_xor(quotes) ^ if odd_before { u64::MAX } else { 0 };
    (m, odd)
}

/// The bytes of a block that an odd run of backslashes escapes (the first one too when the last
/// block ended in one, `carry`); leaves in `carry` whether the next block's first is.
#[cfg(target_arch = "x86_64")]
fn escaped_bits(backslash: u64, carry: &mut bool) -> u64 {
    let mut escaped = u64::from(*carry);
    *carry = false;
    let mut rest = backslash;
    while rest != 0 {
        let j = rest.trailing_zeros();
        rest &= rest - 1;
        let bit = 1u64 << j;
        if escaped & bit != 0 {
            continue; // an escaped backslash escapes nothing
        }
        if j == 63 {
            *carry = true;
        } else {
            escaped |= bit << 1;
        }
    }
    escaped
}

/// What a byte range of a JSON list does to the scan, whatever the state it starts in (bar an
/// escape: the range must not start right after a backslash): fed the range's bytes in order,
/// it gives the parity of the string delimiters in it and the change of depth outside strings
/// for each of the two cases, the range starting outside or inside a string. From these, the
/// ranks of a torchrun job that each summarised one range of the file find the state each range
/// starts in, without any of them scanning the whole file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkScan {
    escaped: bool,
    /// An odd number of string delimiters so far.
    pub odd_quotes: bool,
    /// Depth change over the bytes after an even (`[0]`) or odd (`[1]`) number of delimiters:
    /// outside strings when the range starts outside (`[0]`) or inside (`[1]`) a string.
    pub depth_change: [i64; 2],
}

impl ChunkScan {
    /// The state a range starts in, given the state the range before it (summarised as `self`)
    /// started in.
    pub fn after(&self, before: &StructScan) -> StructScan {
        let inside = usize::from(before.in_string);
        StructScan {
            depth: before.depth + self.depth_change[inside],
            in_string: before.in_string != self.odd_quotes,
            escaped: false,
        }
    }

    /// Take in the next bytes of the range.
    pub fn feed(&mut self, buf: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        let buf = {
            let whole = buf.len() / 64 * 64;
            for block in buf[..whole].chunks_exact(64) {
                let (m, odd) = strings(block.try_into().expect("64 bytes"), &mut self.escaped, self.odd_quotes);
                let count = |x: u64| i64::from(x.count_ones());
                self.depth_change[0] += count(m.open & !odd) - count(m.close & !odd);
                self.depth_change[1] += count(m.open & odd) - count(m.close & odd);
                self.odd_quotes = odd >> 63 == 1;
            }
            &buf[whole..]
        };
        for &c in buf {
            if c == b'\\' {
                self.escaped = !self.escaped;
                continue;
            }
            let was_escaped = std::mem::take(&mut self.escaped);
            let side = usize::from(self.odd_quotes);
            match c {
                b'"' if !was_escaped => self.odd_quotes = !self.odd_quotes,
                b'[' | b'{' => self.depth_change[side] += 1,
                b']' | b'}' => self.depth_change[side] -= 1,
                _ => {}
            }
        }
    }
}

/// Bit j of the result: the parity of bits 0..=j of `x`.
#[cfg(target_arch = "x86_64")]
fn prefix_xor(mut x: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        x ^= x << shift;
    }
    x
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};

    /// One block's bytes as bit masks (bit j: byte j).
    pub struct Masks {
        pub quote: u64,
        pub backslash: u64,
        /// `[ {`
        pub open: u64,
        /// `] }`
        pub close: u64,
        /// `[ ] { } ,`
        pub structural: u64,
    }

    pub fn masks(block: &[u8; 64]) -> Masks {
        let mut m = Masks { quote: 0, backslash: 0, open: 0, close: 0, structural: 0 };
        for k in 0..4 {
            // SAFETY: SSE2 is part of x86-64, and the 16 bytes read are inside `block`
            // (unaligned loads are allowed).
            let (q, b, o, c, comma) = unsafe {
                let v = _mm_loadu_si128(block.as_ptr().add(16 * k) as *const __m128i);
                let eq = |c: u8, x| _mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8(c as i8))) as u16;
                // With bit 5 set, `[` is `{` and `]` is `}`.
                let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
                (eq(b'"', v), eq(b'\\', v), eq(b'{', folded), eq(b'}', folded), eq(b',', v))
            };
            m.quote |= u64::from(q) << (16 * k);
            m.backslash |= u64::from(b) << (16 * k);
            m.open |= u64::from(o) << (16 * k);
            m.close |= u64::from(c) << (16 * k);
            m.structural |= u64::from(o | c | comma) << (16 * k);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every mark and the end position and state, with `mark` refusing its `stop_at`-th call.
    fn run(buf: &[u8], cuts: &[usize], stop_at: Option<usize>, blocks: bool) -> (Vec<Mark>, Vec<usize>, StructScan) {
        let mut s = StructScan::default();
        let (mut marks, mut ends) = (Vec::new(), Vec::new());
        let mut from = 0;
        for &cut in cuts.iter().chain([&buf.len()]) {
            let cut = cut.clamp(from, buf.len());
            let mut mark = |m: Mark| {
                marks.push(m);
                Some(marks.len()) != stop_at
            };
            let got =
                if blocks { s.scan(&buf[from..cut], &mut mark) } else { s.scan_bytes(&buf[from..cut], &mut mark) };
            ends.push(from + got);
            if got < cut - from {
                break; // stopped
            }
            from = cut;
        }
        (marks, ends, s)
    }

    fn json_ish() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            Just(b'"'),
            Just(b'\\'),
            Just(b'['),
            Just(b']'),
            Just(b'{'),
            Just(b'}'),
            Just(b','),
            Just(b'a'),
            Just(b' '),
            Just(b'\n'),
            Just(0xfb), // `{` with the high bit: must not count
            Just(0x0c), // `,` ^ 0x20
        ];
        proptest::collection::vec(byte, 0..400)
    }

    proptest! {
        #[test]
        fn blocks_and_bytes_agree(
            mut buf in json_ish(),
            cuts in proptest::collection::vec(0usize..400, 0..4),
            stop_at in proptest::option::of(1usize..20),
            open in any::<bool>(),
        ) {
            if open {
                buf.insert(0, b'['); // marks from the start
            }
            let mut cuts = cuts;
            cuts.sort();
            prop_assert_eq!(run(&buf, &cuts, stop_at, true), run(&buf, &cuts, stop_at, false));
        }
    }

    proptest! {
        /// The state at each cut, from the summaries of the ranges before it, is the scan's.
        #[test]
        fn range_summaries_give_the_state_at_each_cut(
            buf in json_ish(),
            cuts in proptest::collection::vec(0usize..400, 0..6),
            pieces in 1usize..5,
            inside in any::<bool>(),
        ) {
            // Cuts as the ranks make them: never right after a backslash.
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(buf.len())).collect();
            for c in cuts.iter_mut() {
                while *c > 0 && *c < buf.len() && buf[*c - 1] == b'\\' {
                    *c += 1;
                }
            }
            cuts.sort();
            cuts.push(buf.len());
            // Deep enough that the scan never closes the value (it would stop there).
            let start = StructScan::at(1000, inside);
            let (mut state, mut from) = (start.clone(), 0);
            for &cut in &cuts {
                let mut summary = ChunkScan::default();
                let step = ((cut - from) / pieces).max(1);
                for piece in buf[from..cut].chunks(step) {
                    summary.feed(piece);
                }
                state = summary.after(&state);
                let mut scanned = start.clone();
                scanned.scan(&buf[..cut], |_| true);
                scanned.escaped = false; // a cut is never right after a backslash
                prop_assert_eq!(&state, &scanned);
                from = cut;
            }
        }
    }

    #[test]
    fn a_list_is_cut_at_its_separators_and_strings_hide_structure() {
        let text = br#"[{"a": "x,]\"},{"}, [1, 2], "q\\", "\\\"", {"b": {}}]  "#;
        let mut long = text.to_vec();
        long.splice(2..2, std::iter::repeat(b' ').take(150)); // the first entry spans blocks
        for buf in [&text[..], &long[..]] {
            let mut marks = Vec::new();
            let end = StructScan::default().scan(buf, |m| {
                marks.push(m);
                true
            });
            let seps: Vec<u8> = marks
                .iter()
                .filter_map(|m| match m {
                    Mark::Separator(p) => Some(buf[*p]),
                    Mark::Close(_) => None,
                })
                .collect();
            assert_eq!(seps, b"[,,,,", "{}", String::from_utf8_lossy(buf));
            assert_eq!(marks.last(), Some(&Mark::Close(buf.len() - 3)));
            assert_eq!(end, buf.len() - 2);
        }
    }
}
