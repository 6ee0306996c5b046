//! The one key-binding table. The reducer looks keys up here, and both the help bar and the
//! `?` help screen are rendered from it, so a binding cannot exist without being documented
//! (nor be documented without existing).
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// What a key does; the reducer interprets it in the current screen's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Confirm,
    Reject,
    Skip,
    Undo,
    /// Open the browse screen with the query field focused.
    Search,
    Align,
    CancelJob,
    ToggleDirection,
    Up,
    Down,
    /// Browse: review the selected image in the queue; search field: run the query.
    Open,
    Back,
    Help,
    Quit,
    ShowReview,
    ShowBrowse,
    ShowDashboard,
    /// Dashboard: write the confirmed pairs to a JSONL manifest on the daemon's machine.
    Export,
    /// Review: type words to search the candidates of the other side for the sample on screen.
    Find,
    ShowAudit,
    /// Audit: run the audit again.
    RefreshAudit,
    /// Audit: the pair is right (confirmed again, recorded).
    Keep,
    /// Audit: reject the pair.
    Unpair,
    /// Audit: reject the pair and confirm the image with the suggested caption.
    Repair,
}

/// Where a binding is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every screen (unless a text field has focus, which takes printable keys).
    Global,
    Review,
    Browse,
    Dashboard,
    Audit,
    /// The browse screen's query field while it has focus.
    Input,
}

/// One key with its modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub mods: KeyModifiers,
}

const fn k(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        mods: KeyModifiers::NONE,
    }
}

const fn code(code: KeyCode) -> Key {
    Key {
        code,
        mods: KeyModifiers::NONE,
    }
}

const fn ctrl(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        mods: KeyModifiers::CONTROL,
    }
}

/// A row of the table: the keys, the action, where, and the words shown to the user.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub keys: &'static [Key],
    pub action: Action,
    pub scope: Scope,
    /// Short label for the help bar.
    pub short: &'static str,
    /// One line for the help screen.
    pub help: &'static str,
    /// Shown in the help bar (the rest only on the help screen, to fit 80 columns).
    pub in_bar: bool,
}

macro_rules! b {
    ($scope:ident, [$($key:expr),+], $action:ident, $short:literal, $help:literal, $bar:literal) => {
        Binding {
            keys: &[$($key),+],
            action: Action::$action,
            scope: Scope::$scope,
            short: $short,
            help: $help,
            in_bar: $bar,
        }
    };
}

/// Every binding. Scope-specific rows come before global ones, so a screen can give a key a
/// different meaning (Enter confirms in the review queue, opens an image in browse).
pub const BINDINGS: &[Binding] = &[
    b!(
        Review,
        [k('y'), code(KeyCode::Enter)],
        Confirm,
        "confirm",
        "confirm selected candidate",
        true
    ),
    b!(
        Review,
        [k('n')],
        Reject,
        "reject",
        "reject it (never suggested)",
        true
    ),
    b!(
        Review,
        [k('s')],
        Skip,
        "skip",
        "skip this sample for now",
        true
    ),
    b!(
        Review,
        [k('u')],
        Undo,
        "undo",
        "undo last confirm/reject",
        true
    ),
    b!(
        Review,
        [code(KeyCode::Tab)],
        ToggleDirection,
        "img/txt",
        "queue: images <-> captions",
        // Off the bar to leave room for `f find` within 80 columns; `?` lists it.
        false
    ),
    b!(
        Review,
        [k('f')],
        Find,
        "find",
        "search its caption, then y",
        true
    ),
    b!(
        Review,
        [code(KeyCode::Up), k('k')],
        Up,
        "up",
        "previous candidate",
        false
    ),
    b!(
        Review,
        [code(KeyCode::Down), k('j')],
        Down,
        "down",
        "next candidate",
        false
    ),
    b!(
        Browse,
        [code(KeyCode::Up), k('k')],
        Up,
        "up",
        "previous image",
        true
    ),
    b!(
        Browse,
        [code(KeyCode::Down), k('j')],
        Down,
        "down",
        "next image",
        true
    ),
    b!(
        Browse,
        [code(KeyCode::Enter)],
        Open,
        "review it",
        "review this image",
        true
    ),
    b!(
        Input,
        [code(KeyCode::Enter)],
        Open,
        "search",
        "run the search",
        true
    ),
    b!(
        Input,
        [code(KeyCode::Esc)],
        Back,
        "done",
        "leave the query field",
        true
    ),
    b!(
        Audit,
        [k('y'), code(KeyCode::Enter)],
        Keep,
        "keep",
        "keep the pair (it is right)",
        true
    ),
    b!(
        Audit,
        [k('n')],
        Unpair,
        "unpair",
        "unpair it (rejected)",
        true
    ),
    b!(
        Audit,
        [k('p')],
        Repair,
        "re-pair",
        "pair the image with the suggestion",
        true
    ),
    b!(
        Audit,
        [k('u')],
        Undo,
        "undo",
        "undo the last audit action",
        true
    ),
    b!(
        Audit,
        [k('a')],
        RefreshAudit,
        "audit again",
        "run the audit again",
        true
    ),
    b!(
        Audit,
        [code(KeyCode::Up), k('k')],
        Up,
        "up",
        "previous pair",
        false
    ),
    b!(
        Audit,
        [code(KeyCode::Down), k('j')],
        Down,
        "down",
        "next pair",
        false
    ),
    b!(
        Dashboard,
        [k('x')],
        CancelJob,
        "cancel job",
        "cancel running alignment",
        true
    ),
    b!(
        Dashboard,
        [k('e')],
        Export,
        "export",
        "export pairs (JSONL, data dir)",
        true
    ),
    b!(
        Global,
        [k('/')],
        Search,
        "search",
        "search images by text",
        true
    ),
    b!(
        Global,
        [k('r')],
        Align,
        "re-align",
        "re-align on confirmed pairs",
        true
    ),
    b!(
        Global,
        [k('1')],
        ShowReview,
        "review",
        "review queue",
        false
    ),
    b!(
        Global,
        [k('2')],
        ShowBrowse,
        "browse",
        "browse / search",
        false
    ),
    b!(
        Global,
        [k('3'), k('d')],
        ShowDashboard,
        "dashboard",
        "dashboard",
        false
    ),
    b!(
        Global,
        [k('4')],
        ShowAudit,
        "audit",
        "audit: pairs that look wrong",
        false
    ),
    b!(
        Global,
        [code(KeyCode::Esc)],
        Back,
        "back",
        "close help / go back",
        false
    ),
    b!(Global, [k('?')], Help, "help", "this help", true),
    b!(
        Global,
        [k('q'), ctrl('c')],
        Quit,
        "quit",
        "quit (decisions are kept)",
        true
    ),
];

fn matches(key: &Key, ev: &KeyEvent) -> bool {
    // Shift is part of the character for printable keys ('?' arrives as Shift+'?' on some
    // terminals), so it is ignored for them.
    let mods = match ev.code {
        KeyCode::Char(_) => ev.modifiers - KeyModifiers::SHIFT,
        _ => ev.modifiers,
    };
    key.code == ev.code && key.mods == mods
}

/// The action bound to `ev` in `scope` (then globally, unless `scope` is the text field).
pub fn lookup(scope: Scope, ev: &KeyEvent) -> Option<Action> {
    if ev.kind == KeyEventKind::Release {
        return None;
    }
    let in_scope = |s: Scope| {
        s == scope || (s == Scope::Global && scope != Scope::Input)
            // Ctrl-C quits even from the text field.
            || (s == Scope::Global && scope == Scope::Input && ev.modifiers.contains(KeyModifiers::CONTROL))
    };
    BINDINGS
        .iter()
        .filter(|b| b.scope == scope)
        .chain(
            BINDINGS
                .iter()
                .filter(|b| b.scope != scope && in_scope(b.scope)),
        )
        .find(|b| b.keys.iter().any(|k| matches(k, ev)))
        .map(|b| b.action)
}

/// How a key is written in the help bar and help screen.
pub fn key_label(key: &Key) -> String {
    let base = match key.code {
        KeyCode::Char(' ') => "Space".to_owned(),
        KeyCode::Char(c) => c.to_string(),
        KeyCode::Enter => "Enter".to_owned(),
        KeyCode::Tab => "Tab".to_owned(),
        KeyCode::Esc => "Esc".to_owned(),
        KeyCode::Up => "↑".to_owned(),
        KeyCode::Down => "↓".to_owned(),
        KeyCode::Backspace => "Bksp".to_owned(),
        other => format!("{other:?}"),
    };
    if key.mods.contains(KeyModifiers::CONTROL) {
        format!("C-{base}")
    } else {
        base
    }
}

/// The bindings shown for a scope, in table order: the scope's own, then the global ones.
pub fn bindings_for(scope: Scope) -> impl Iterator<Item = &'static Binding> {
    BINDINGS.iter().filter(move |b| b.scope == scope).chain(
        BINDINGS
            .iter()
            .filter(move |b| b.scope == Scope::Global && scope != Scope::Input),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(code: KeyCode, mods: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, mods)
    }

    #[test]
    fn enter_means_confirm_in_review_and_open_in_browse() {
        let enter = ev(KeyCode::Enter, KeyModifiers::NONE);
        assert_eq!(lookup(Scope::Review, &enter), Some(Action::Confirm));
        assert_eq!(lookup(Scope::Browse, &enter), Some(Action::Open));
        assert_eq!(lookup(Scope::Input, &enter), Some(Action::Open));
    }

    #[test]
    fn the_query_field_swallows_printable_keys_but_not_ctrl_c() {
        let q = ev(KeyCode::Char('q'), KeyModifiers::NONE);
        assert_eq!(lookup(Scope::Input, &q), None);
        assert_eq!(lookup(Scope::Review, &q), Some(Action::Quit));
        let cc = ev(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(lookup(Scope::Input, &cc), Some(Action::Quit));
        // A plain 'c' is not Ctrl-C.
        assert_eq!(
            lookup(Scope::Review, &ev(KeyCode::Char('c'), KeyModifiers::NONE)),
            None
        );
    }

    #[test]
    fn shifted_question_mark_opens_help() {
        let q = ev(KeyCode::Char('?'), KeyModifiers::SHIFT);
        assert_eq!(lookup(Scope::Dashboard, &q), Some(Action::Help));
    }

    #[test]
    fn review_specific_keys_do_nothing_elsewhere() {
        let y = ev(KeyCode::Char('y'), KeyModifiers::NONE);
        assert_eq!(lookup(Scope::Dashboard, &y), None);
        assert_eq!(lookup(Scope::Review, &y), Some(Action::Confirm));
    }

    #[test]
    fn no_key_is_bound_twice_in_one_scope() {
        for scope in [Scope::Review, Scope::Browse, Scope::Dashboard, Scope::Input] {
            let mut seen: Vec<(Key, Action)> = Vec::new();
            // Only the first match counts in lookup; a shadowed duplicate would be dead help.
            for b in bindings_for(scope) {
                for key in b.keys {
                    if let Some((_, a)) = seen.iter().find(|(k2, _)| k2 == key) {
                        // A scope row may shadow a global row on purpose (Enter, arrows, Esc)
                        // only when the scope's row comes first, which bindings_for guarantees.
                        assert!(
                            b.scope == Scope::Global,
                            "{:?} bound twice in {scope:?} ({a:?} and {:?})",
                            key,
                            b.action
                        );
                    } else {
                        seen.push((*key, b.action));
                    }
                }
            }
        }
    }

    #[test]
    fn required_bindings_exist() {
        let want = [
            (Scope::Review, 'y', Action::Confirm),
            (Scope::Review, 'n', Action::Reject),
            (Scope::Review, 's', Action::Skip),
            (Scope::Review, 'u', Action::Undo),
            (Scope::Review, '/', Action::Search),
            (Scope::Review, 'r', Action::Align),
            (Scope::Review, '?', Action::Help),
            (Scope::Review, 'q', Action::Quit),
            (Scope::Review, 'j', Action::Down),
            (Scope::Review, 'k', Action::Up),
        ];
        for (scope, c, action) in want {
            assert_eq!(
                lookup(scope, &ev(KeyCode::Char(c), KeyModifiers::NONE)),
                Some(action),
                "{c}"
            );
        }
        assert_eq!(
            lookup(Scope::Review, &ev(KeyCode::Tab, KeyModifiers::NONE)),
            Some(Action::ToggleDirection)
        );
    }
}
