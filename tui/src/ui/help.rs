//! The `?` help screen, rendered from the key table.
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::KEY_STYLE;
use crate::keys::{self, BINDINGS, Scope};

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

pub fn draw(f: &mut Frame, area: Rect) {
    f.render_widget(Clear, area);
    let block = Block::bordered().title(" Help: keys (? or Esc closes) ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner);
    let mut l = section("Review queue", Scope::Review);
    l.extend(section("Browse", Scope::Browse));
    l.extend(section("Search field", Scope::Input));
    let mut r = section("Dashboard", Scope::Dashboard);
    r.extend(section("Everywhere", Scope::Global));
    r.extend(reading_the_list());
    f.render_widget(Paragraph::new(l), left);
    f.render_widget(Paragraph::new(r), right);
}
