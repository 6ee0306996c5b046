//! The audit screen: suspected pairs on the left (most suspicious first, flagged ones marked),
//! the selected pair on the right: its picture, its caption, and what the audit suggests.
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};
use sotalign_protocol::types::AuditedPair;

use super::review::draw_sample;
use super::{DIM, ERROR};
use crate::images::Images;
use crate::state::{App, Loadable, truncate};

const FLAG: &str = "⚑";

pub fn draw(f: &mut Frame, area: Rect, app: &App, images: &Images) {
    let a = &app.audit;
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let title = match &a.list {
        Loadable::Ready(_) => format!(
            " Audit · {} pairs · {} flagged {FLAG} · cca, cross-fitted ",
            a.audited, a.flagged
        ),
        _ => " Audit ".to_owned(),
    };
    let saving = if a.pending.is_some() || a.undoing.is_some() {
        " saving... "
    } else {
        ""
    };
    let block = Block::bordered()
        .title(truncate(&title, left.width.saturating_sub(2) as usize))
        .title_bottom(Line::styled(saving, DIM));
    let inner = block.inner(left);
    f.render_widget(block, left);
    match &a.list {
        Loadable::Idle | Loadable::Loading => f.render_widget(
            Paragraph::new(Text::styled(
                "auditing the confirmed pairs (each scored by a model fitted without it)...",
                DIM,
            ))
            .wrap(Wrap { trim: true }),
            inner,
        ),
        Loadable::Failed(e) => f.render_widget(
            Paragraph::new(vec![
                Line::styled(format!("no audit: {}", e.message), ERROR),
                Line::from(""),
                Line::from("The audit needs at least 4 confirmed pairs with embeddings."),
                Line::from("a runs it again."),
            ])
            .wrap(Wrap { trim: true }),
            inner,
        ),
        Loadable::Ready(list) if list.is_empty() => f.render_widget(
            Paragraph::new("Nothing left to audit in this list. a runs the audit again.")
                .wrap(Wrap { trim: true }),
            inner,
        ),
        Loadable::Ready(list) => {
            let width = inner.width as usize;
            let items: Vec<ListItem> = list.iter().map(|p| pair_item(p, width)).collect();
            let mut state = ListState::default().with_selected(Some(a.selected));
            f.render_stateful_widget(
                List::new(items)
                    .highlight_symbol("▶ ")
                    .highlight_style(Style::new().bold()),
                inner,
                &mut state,
            );
        }
    }
    draw_detail(f, right, app, images);
}

/// One pair: flag, suspicion, image key, caption.
fn pair_item(p: &AuditedPair, width: usize) -> ListItem<'static> {
    let mark = if p.flagged { FLAG } else { " " };
    let caption = p.text.text.as_deref().unwrap_or(&p.text.key);
    let head = format!("{mark} {:>6.3} {} ", p.suspicion, p.image.key);
    let room = width.saturating_sub(head.chars().count() + 2);
    let style = if p.flagged {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    };
    ListItem::new(Line::from(vec![
        Span::styled(head, style),
        Span::styled(format!("{:?}", truncate(caption, room.max(4))), DIM),
    ]))
}

fn draw_detail(f: &mut Frame, area: Rect, app: &App, images: &Images) {
    let block = Block::bordered().title(" Selected pair ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let Some(p) = app.audit.current() else {
        return;
    };
    let [picture, text] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Min(6)]).areas(inner);
    draw_sample(f, picture, &p.image, images);
    let caption = p.text.text.as_deref().unwrap_or(&p.text.key);
    let mut lines = vec![
        Line::from(vec![
            Span::styled("caption: ", DIM),
            Span::raw(caption.to_owned()).bold(),
        ]),
        Line::styled(
            format!(
                "suspicion {:.3}{} · its score {:.3} (model without it)",
                p.suspicion,
                if p.flagged { " · flagged" } else { "" },
                p.score
            ),
            DIM,
        ),
    ];
    match &p.alt_text {
        Some(t) => lines.push(Line::from(vec![
            Span::styled("p re-pairs with: ", DIM),
            Span::raw(format!(
                "{:?} ({:.3})",
                t.sample.text.as_deref().unwrap_or(&t.sample.key),
                t.score
            )),
        ])),
        None => lines.push(Line::styled("no caption suggested", DIM)),
    }
    if let Some(i) = &p.alt_image {
        lines.push(Line::from(vec![
            Span::styled("the caption fits better: ", DIM),
            Span::raw(format!("{} ({:.3})", i.sample.key, i.score)),
        ]));
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), text);
}
