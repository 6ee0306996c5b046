//! The `?` help screen, rendered from the key table.
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::KEY_STYLE;
use crate::keys::{self, BINDINGS, Scope};
use crate::state::Screen;

fn section(title: &'static str, scope: Scope) -> Vec<Line<'static>> {
    let mut lines = vec![Line::from(title.bold())];
    for b in BINDINGS.iter().filter(|b| b.scope == scope) {
        let keys: Vec<String> = b.keys.iter().map(keys::key_label).collect();
        let keys = keys.join(" ");
        lines.push(Line::from(vec![
            Span::styled(format!("{keys:<8}"), KEY_STYLE),
            Span::raw(format!(" {}", b.help)),
        ]));
    }
    lines.push(Line::from(""));
    lines
}

/// What the columns and marks of the suggestion list mean.
fn reading_the_list() -> Vec<Line<'static>> {
    let row = |mark: &'static str, what: &'static str| {
        Line::from(vec![
            Span::styled(format!("{mark:<8}"), Style::new().bold()),
            Span::raw(format!(" {what}")),
        ])
    };
    vec![
        Line::from("Reading the suggestions".bold()),
        row("0.625", "similarity (higher = closer)"),
        row("⇄", "each other's best match"),
        row("×3", "caption stored 3 times"),
        row("#3", "the re-align that scored it"),
    ]
}

/// The screens' sections, the one on screen first: on a small terminal the others may be cut
/// at the bottom, never the keys of the screen the user is on.
pub fn draw(f: &mut Frame, area: Rect, on: Screen) {
    f.render_widget(Clear, area);
    let block = Block::bordered().title(" Help: keys (? or Esc closes) ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner);
    let mut screens = vec![
        (Screen::Review, "Review queue", Scope::Review),
        (Screen::Browse, "Browse", Scope::Browse),
        (Screen::Browse, "Search field", Scope::Input),
        (Screen::Audit, "Audit", Scope::Audit),
    ];
    screens.sort_by_key(|(s, _, _)| *s != on);
    let mut l = Vec::new();
    for (_, title, scope) in screens {
        l.extend(section(title, scope));
    }
    let mut r = section("Dashboard", Scope::Dashboard);
    r.extend(section("Everywhere", Scope::Global));
    r.pop(); // no blank line before the legend: it fits 80x24 whole
    r.extend(reading_the_list());
    f.render_widget(Paragraph::new(l), left);
    f.render_widget(Paragraph::new(r), right);
}
