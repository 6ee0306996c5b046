//! A sotalign manifest (version 1, `io::manifest`) as an editor holds it: each entry line with
//! its 0-based line number and the exact spans of its `imagePath` / `caption` / `textRow`
//! values (so a code action can rewrite a caption in place), plus the header.
//!
//! Lines are parsed by the one manifest parser (`io::manifest::parse_header`/`parse_entry`);
//! this module only adds positions. An editor buffer is often mid-edit, so a line that does not
//! parse is reported (as a diagnostic) and skipped rather than failing the document.
//!
//! Why a small hand-written scanner for spans: serde_json gives no positions (its `raw_value`
//! feature would, but enabling it rebuilds every crate that depends on serde_json). The scanner
//! only walks the top level of one object, after the parser has accepted the line.
use std::ops::Range;
use std::path::Path;

use crate::io::manifest::{Entry, Header, Split, parse_entry, parse_header};

/// Most item lines a document may hold for the editor features (bounded work per keystroke).
pub const MAX_LINES: usize = 20_000;

/// One entry line.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// 0-based line number in the document.
    pub line: u32,
    pub entry: Entry,
    /// Byte spans (within the line) of the values of `imagePath`, `caption` and `textRow`.
    pub image_span: Option<Range<usize>>,
    pub text_span: Option<Range<usize>>,
    pub text_row_span: Option<Range<usize>>,
}

impl Item {
    /// Both sides given and not marked unpaired: a pair the audit can judge.
    pub fn is_pair(&self) -> bool {
        self.entry.has_image() && self.entry.has_text() && self.entry.split() != Split::Unpaired
    }
}

/// A line that could not be read, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    pub line: u32,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Doc {
    pub header: Option<Header>,
    pub items: Vec<Item>,
    pub bad: Vec<BadLine>,
    /// The raw lines (for spans and UTF-16 conversion).
    pub lines: Vec<String>,
}

/// Read an editor buffer. Never fails: unreadable lines land in `bad` (a buffer whose first
/// line is not a version-1 header gets that one error); lines past [`MAX_LINES`] items are
/// reported once and ignored.
pub fn parse(text: &str) -> Doc {
    let mut doc = Doc {
        lines: text.lines().map(str::to_string).collect(),
        ..Doc::default()
    };
    let mut header_seen = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i as u32;
        let s = raw.trim();
        if s.is_empty() || s.starts_with('#') {
            continue;
        }
        if !header_seen {
            header_seen = true;
            match parse_header(s, Path::new("this manifest"), i + 1) {
                Ok(h) => doc.header = Some(h),
                Err(e) => {
                    doc.bad.push(BadLine {
                        line,
                        message: e.to_string(),
                    });
                    return doc;
                }
            }
            continue;
        }
        if doc.items.len() >= MAX_LINES {
            doc.bad.push(BadLine {
                line,
                message: format!("only the first {MAX_LINES} items are checked"),
            });
            break;
        }
        match parse_entry(s) {
            Ok(entry) => doc.items.push(Item {
                line,
                entry,
                image_span: value_span(raw, "imagePath"),
                text_span: value_span(raw, "caption"),
                text_row_span: value_span(raw, "textRow"),
            }),
            Err(e) => doc.bad.push(BadLine {
                line,
                message: format!("bad entry: {e}"),
            }),
        }
    }
    doc
}

/// Byte range of the value of top-level member `key` in a one-line JSON object, or None.
pub fn value_span(line: &str, key: &str) -> Option<Range<usize>> {
    let b = line.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let kend = string_end(b, i)?;
        let name: String = serde_json::from_str(&line[i..kend]).ok()?;
        i = skip_ws(b, kend);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let vstart = i;
        let vend = value_end(b, i)?;
        if name == key {
            return Some(vstart..vend);
        }
        i = skip_ws(b, vend);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// End (exclusive) of the string starting at the quote `b[i]`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// End (exclusive) of the JSON value starting at `b[i]` (nested values skipped by depth).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b' ' | b'\t') {
                j += 1;
            }
            Some(j)
        }
    }
}

/// LSP column (UTF-16 code units, the protocol's default encoding) of byte offset `byte` in
/// `line`; offsets past the end or inside a character clamp to the character's start.
pub fn utf16_col(line: &str, byte: usize) -> u32 {
    let mut col = 0u32;
    for (off, ch) in line.char_indices() {
        if off >= byte {
            break;
        }
        col += ch.len_utf16() as u32;
    }
    col
}

/// Byte offset of UTF-16 column `col` in `line` (clamped to the line's length).
pub fn byte_of_utf16(line: &str, col: u32) -> usize {
    let mut c = 0u32;
    for (off, ch) in line.char_indices() {
        if c >= col {
            return off;
        }
        c += ch.len_utf16() as u32;
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_exact_and_survive_escapes_and_unicode() {
        let l = r#"{"key": "a\"b", "imagePath": "stamps/é.png", "imageRow": 3, "caption": "A \"cat\", — yes.", "textRow": 12}"#;
        let t = value_span(l, "caption").unwrap();
        assert_eq!(&l[t.clone()], r#""A \"cat\", — yes.""#);
        assert_eq!(&l[value_span(l, "textRow").unwrap()], "12");
        assert_eq!(&l[value_span(l, "imagePath").unwrap()], r#""stamps/é.png""#);
        assert_eq!(value_span(l, "split"), None);
        // UTF-16 columns: é is one unit, — is one unit; round trip.
        let c = utf16_col(l, t.start);
        assert_eq!(byte_of_utf16(l, c), t.start);
    }

    #[test]
    fn a_buffer_mid_edit_keeps_its_good_lines() {
        let text = "{\"sotalign_manifest\": 1, \"embeddings\": {\"image\": \"i.npy\", \"text\": \"t.npy\"}}\n\
                    {\"imagePath\": \"a.png\", \"caption\": \"A.\"}\n\
                    {\"imagePath\": \"b.png\", \"caption\": \n\
                    # comment\n\
                    {\"caption\": \"lonely\", \"split\": \"unpaired\"}\n\
                    {\"imagePath\": \"c.png\", \"bogus\": 1}\n";
        let d = parse(text);
        let files = d.header.as_ref().unwrap().embeddings.as_ref().unwrap();
        assert_eq!(files.image.as_deref(), Some("i.npy"));
        assert_eq!(
            d.items.iter().map(|i| i.line).collect::<Vec<_>>(),
            vec![1, 4]
        );
        assert!(d.items[0].is_pair() && !d.items[1].is_pair());
        assert_eq!(d.bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![2, 5]);
    }

    #[test]
    fn a_buffer_without_the_version_header_gets_one_error() {
        let d = parse("{\"image\": \"a.png\", \"text\": \"A.\"}\n{\"caption\": \"B.\"}\n");
        assert!(d.items.is_empty());
        assert_eq!(d.bad.len(), 1);
        assert!(
            d.bad[0].message.contains("sotalign_manifest"),
            "{:?}",
            d.bad
        );
    }
}
