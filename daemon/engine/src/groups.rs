//! Caption groups: the one rule deciding which texts count as "the same caption".
//!
//! Two texts are in one group when their captions are equal after trimming surrounding
//! whitespace (the reference protocol's "caption string equals"; its captions carry none). A
//! text without a caption is a group of its own. Every layer uses this: training labels
//! (`AlignData::pair_groups`), evaluation (an item is correct when its group equals the
//! query's), manifests, the demo, and the daemon's suggestion lists (identical captions shown
//! once, a reject applying to the group).
use std::collections::HashMap;

/// The grouping key of a caption.
pub fn caption_key(caption: &str) -> &str {
    caption.trim()
}

/// Assigns group ids 0, 1, 2, ... in order of first appearance.
#[derive(Debug, Default, Clone)]
pub struct CaptionGroups {
    ids: HashMap<String, u32>,
    next: u32,
}

impl CaptionGroups {
    pub fn new() -> Self {
        Self::default()
    }

    /// The group of `caption`; `None` (no caption) opens a new group every time.
    pub fn assign(&mut self, caption: Option<&str>) -> u32 {
        let n = self.next;
        let g = match caption {
            Some(c) => *self.ids.entry(caption_key(c).to_string()).or_insert(n),
            None => n,
        };
        if g == n {
            self.next += 1;
        }
        g
    }

    /// Number of groups assigned so far.
    pub fn len(&self) -> usize {
        self.next as usize
    }

    pub fn is_empty(&self) -> bool {
        self.next == 0
    }
}

/// Group ids of a sequence of captions (see [`CaptionGroups::assign`]).
pub fn caption_groups<'a>(captions: impl IntoIterator<Item = Option<&'a str>>) -> Vec<u32> {
    let mut g = CaptionGroups::new();
    captions.into_iter().map(|c| g.assign(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_captions_share_a_group_missing_ones_never_do() {
        let g = caption_groups([
            Some("A cat."),
            None,
            Some(" A cat.\n"),
            Some("a cat."),
            None,
            Some("A dog."),
        ]);
        assert_eq!(g, vec![0, 1, 0, 2, 3, 4]);
        let mut cg = CaptionGroups::new();
        assert!(cg.is_empty());
        assert_eq!(cg.assign(Some("x")), 0);
        assert_eq!(cg.assign(Some("x ")), 0);
        assert_eq!(cg.len(), 1);
    }
}
