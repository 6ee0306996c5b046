//! The openclipart check set (`sotalign fetch openclipart`, `sotalign encode --dataset
//! openclipart`): clip-art SVGs whose captions come from their own Dublin Core metadata.
//!
//! Each file's `cc:Work` carries a `dc:title` and keywords (`dc:subject/rdf:Bag/rdf:li`). Many
//! titles name a collection or an author rather than the picture ("gramastar" on 1,375 star
//! shapes, "Lemon SVG theme" on 431 icons), and some keywords tag whole collections ("hash",
//! "computer", "icons"), so the caption is built by one fixed rule, decided before any
//! measurement and counted over the whole set:
//! - the title is kept unless more than [`MAX_TITLE_FILES`] files share it or it names one of
//!   the file's agents (creator, publisher, ...);
//! - keywords are lower-cased, `_` read as a space, deduplicated; dropped when they tag more
//!   than [`MAX_KEYWORD_SHARE`] of the files, name an agent, repeat the title or have no letter;
//! - caption = the kept title, then the kept keywords, comma-separated;
//! - an item is skipped (with its reason in the report) when its caption has no letter, or when
//!   more than [`MAX_CAPTION_FILES`] files end up with the same caption (a collection's tag list
//!   names none of its pictures).
use std::collections::HashMap;
use std::path::Path;

use super::{Dataset, IngestError, Item};
use crate::encoders::Skipped;

/// A title shared by more files than this names a collection, not a picture.
pub const MAX_TITLE_FILES: usize = 3;
/// A keyword on more than this share of the files tags a collection.
pub const MAX_KEYWORD_SHARE: f64 = 0.10;
/// A caption shared by more files than this describes none of them.
pub const MAX_CAPTION_FILES: usize = 5;

/// What the metadata of one SVG says about its picture.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// `cc:Work/dc:title`, whitespace collapsed ("" when absent).
    pub title: String,
    /// `cc:Work/dc:subject/rdf:Bag/rdf:li`, in file order.
    pub keywords: Vec<String>,
    /// Names of the work's agents (`cc:Agent/dc:title` under creator, publisher, rights, ...).
    pub agents: Vec<String>,
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn text_of(n: roxmltree::Node) -> String {
    collapse(
        &n.descendants()
            .filter(|d| d.is_text())
            .filter_map(|d| d.text())
            .collect::<String>(),
    )
}

/// Read the `cc:Work` metadata of one SVG document (`Err`: not well-formed XML).
pub fn parse_meta(svg: &str) -> Result<Meta, String> {
    let opt = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(svg, opt).map_err(|e| e.to_string())?;
    let mut m = Meta::default();
    let Some(work) = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Work")
    else {
        return Ok(m);
    };
    for c in work.children().filter(|c| c.is_element()) {
        match c.tag_name().name() {
            "title" if m.title.is_empty() => m.title = text_of(c),
            "subject" => m.keywords.extend(
                c.descendants()
                    .filter(|d| d.is_element() && d.tag_name().name() == "li")
                    .map(text_of)
                    .filter(|k| !k.is_empty()),
            ),
            _ => {}
        }
    }
    m.agents = work
        .descendants()
        .filter(|d| d.is_element() && d.tag_name().name() == "Agent")
        .flat_map(|a| {
            a.children()
                .filter(|t| t.is_element() && t.tag_name().name() == "title")
                .map(text_of)
        })
        .filter(|t| !t.is_empty())
        .collect();
    Ok(m)
}

fn norm_keyword(k: &str) -> String {
    collapse(&k.replace('_', " ")).to_lowercase()
}

fn has_letter(s: &str) -> bool {
    s.chars().any(char::is_alphabetic)
}

/// The caption of every item by the module's rule, or why it has none. `metas[i]` is one file.
pub fn captions(metas: &[Meta]) -> Vec<Result<String, String>> {
    let mut title_files: HashMap<String, usize> = HashMap::new();
    let mut keyword_files: HashMap<String, usize> = HashMap::new();
    for m in metas {
        if !m.title.is_empty() {
            *title_files.entry(m.title.to_lowercase()).or_default() += 1;
        }
        let mut seen: Vec<String> = m.keywords.iter().map(|k| norm_keyword(k)).collect();
        seen.sort();
        seen.dedup();
        for k in seen {
            *keyword_files.entry(k).or_default() += 1;
        }
    }
    let max_kw = MAX_KEYWORD_SHARE * metas.len() as f64;
    let built: Vec<Result<String, String>> = metas
        .iter()
        .map(|m| {
            let agents: Vec<String> = m.agents.iter().map(|a| a.to_lowercase()).collect();
            let t = m.title.to_lowercase();
            let title = (!m.title.is_empty()
                && title_files.get(&t).copied().unwrap_or(0) <= MAX_TITLE_FILES
                && !agents.contains(&t)
                && has_letter(&m.title))
            .then(|| m.title.clone());
            let mut parts: Vec<String> = title.iter().cloned().collect();
            let mut used: Vec<String> = title.iter().map(|t| t.to_lowercase()).collect();
            for k in &m.keywords {
                let k = norm_keyword(k);
                if k.is_empty()
                    || !has_letter(&k)
                    || used.contains(&k)
                    || agents.contains(&k)
                    || keyword_files.get(&k).copied().unwrap_or(0) as f64 > max_kw
                {
                    continue;
                }
                used.push(k.clone());
                parts.push(k);
            }
            if parts.is_empty() {
                Err("no usable caption text (collection title, agent names or collection tags only)".into())
            } else {
                Ok(parts.join(", "))
            }
        })
        .collect();
    let mut caption_files: HashMap<&str, usize> = HashMap::new();
    for c in built.iter().flatten() {
        *caption_files.entry(c.as_str()).or_default() += 1;
    }
    built
        .iter()
        .map(|c| match c {
            Ok(c) if caption_files[c.as_str()] > MAX_CAPTION_FILES => Err(format!(
                "caption {c:?} is shared by {} files (more than {MAX_CAPTION_FILES}: a collection's tags)",
                caption_files[c.as_str()]
            )),
            other => other.clone(),
        })
        .collect()
}

/// Every SVG under `root` (sorted walk) as an item with its caption, the category (first
/// folder) as its label; the files without a usable caption are in `skipped` with the reason.
pub fn openclipart(root: &Path) -> Result<Dataset, IngestError> {
    if !root.is_dir() {
        return Err(IngestError::NotFound(root.to_path_buf()));
    }
    let mut ds = Dataset::new("openclipart".to_string());
    let mut files = Vec::new();
    super::sources::walk_files(root, &mut files, &mut ds.skipped)?;
    files.retain(|f| {
        f.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
    });
    let rel = |f: &Path| {
        f.strip_prefix(root)
            .unwrap_or(f)
            .to_string_lossy()
            .replace('\\', "/")
    };
    let mut metas = Vec::with_capacity(files.len());
    let mut bad: Vec<Option<String>> = Vec::with_capacity(files.len());
    for f in &files {
        let parsed = std::fs::read(f)
            .map_err(|e| format!("unreadable: {e}"))
            .and_then(|b| String::from_utf8(b).map_err(|_| "not valid UTF-8".to_string()))
            .and_then(|s| parse_meta(&s).map_err(|e| format!("not well-formed XML: {e}")));
        match parsed {
            Ok(m) => {
                metas.push(m);
                bad.push(None);
            }
            Err(e) => {
                metas.push(Meta::default());
                bad.push(Some(e));
            }
        }
    }
    let caps = captions(&metas);
    for (index, ((f, cap), bad)) in files.iter().zip(caps).zip(bad).enumerate() {
        let r = rel(f);
        match (bad, cap) {
            (Some(why), _) | (None, Err(why)) => ds.skipped.push(Skipped {
                index,
                item: r,
                reason: why,
            }),
            (None, Ok(caption)) => {
                let label = r.split('/').next().map(str::to_string);
                ds.items.push(Item {
                    image: Some(f.clone()),
                    text: Some(caption),
                    label,
                    split: None,
                    source: r,
                });
            }
        }
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svg(title: &str, keywords: &[&str], creator: &str) -> String {
        let lis: String = keywords
            .iter()
            .map(|k| format!("<rdf:li>{k}</rdf:li>"))
            .collect();
        format!(
            r#"<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title>
    <dc:subject><rdf:Bag>{lis}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>{creator}</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
</svg>"#
        )
    }

    #[test]
    fn metadata_is_read_from_the_work_not_from_its_agents() {
        let m = parse_meta(&svg("Orso &amp; co", &["mammal", " bear "], "Architetto")).unwrap();
        assert_eq!(m.title, "Orso & co");
        assert_eq!(m.keywords, vec!["mammal", "bear"]);
        assert_eq!(m.agents, vec!["Architetto"]);
        assert!(parse_meta("<svg><unclosed></svg>").is_err());
        assert_eq!(parse_meta("<svg/>").unwrap(), Meta::default());
    }

    #[test]
    fn the_caption_rule_drops_collection_titles_tags_and_agents() {
        let meta = |t: &str, k: &[&str], a: &str| Meta {
            title: t.into(),
            keywords: k.iter().map(|s| s.to_string()).collect(),
            agents: vec![a.into()],
        };
        let mut metas = vec![
            meta(
                "Orso",
                &["Mammal", "bear", "orso", "Rollandin"],
                "rollandin",
            ),
            meta("Nicu", &["signs_and_symbols"], "Nicu"),
            meta("", &["42"], "x"),
        ];
        // A collection: one title on four files, and one tag on all eleven (> 10%).
        for i in 0..4 {
            metas.push(meta("gramastar", &["star", &format!("points {i}")], "g"));
        }
        // Files with their own title and tag, so that a handful of files is under 10%.
        for i in 0..60 {
            metas.push(meta(&format!("thing {i}"), &[&format!("tag {i}")], "f"));
        }
        for m in &mut metas {
            m.keywords.push("hash".into());
        }
        // Six files whose only caption is the same: skipped as a collection's tag list.
        for _ in 0..6 {
            metas.push(meta("", &["card", "simple"], "c"));
        }
        let c = captions(&metas);
        assert_eq!(c[0].as_deref(), Ok("Orso, mammal, bear"));
        assert_eq!(c[1].as_deref(), Ok("signs and symbols"));
        assert!(c[2].is_err(), "digits only");
        assert_eq!(c[3].as_deref(), Ok("star, points 0"));
        assert!(
            c[67..73]
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.contains("shared by 6")))
        );
        assert_eq!(c[7].as_deref(), Ok("thing 0, tag 0"));
    }
}
