//! Browse / search: the stored images, or the images a free-text query finds (falling back to
//! name matches, with the daemon's reason shown, when free-text search is unavailable); the
//! selected image shows its closest captions.
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};

use super::{DIM, ERROR, picture};
use crate::images::Images;
use crate::state::{App, Listing, Loadable, truncate};

pub fn draw(f: &mut Frame, area: Rect, app: &App, images: &Images) {
    let b = &app.browse;
    let [query_area, body] =
        Layout::vertical([Constraint::Length(3), Constraint::Min(0)]).areas(area);

    let cursor = if b.editing { "█" } else { "" };
    let hint = if b.editing { "" } else { "  (/ to edit)" };
    let query = Line::from(vec![
        Span::raw("> "),
        Span::raw(b.query.clone()).bold(),
        Span::raw(cursor),
        Span::styled(hint, DIM),
    ]);
    let border = if b.editing {
        Style::new().fg(ratatui::style::Color::Cyan)
    } else {
        Style::new()
    };
    f.render_widget(
        Paragraph::new(query).block(
            Block::bordered()
                .border_style(border)
                .title(" Search images by text "),
        ),
        query_area,
    );

    let [list_area, detail] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(body);
    let title = match (&b.listing, &b.results) {
        (Listing::Text(q), Loadable::Ready(h)) => {
            format!(" {} images for \"{}\" ", h.len(), truncate(q, 20))
        }
        (Listing::Names(None), Loadable::Ready(h)) => match b.total {
            Some(t) if t > h.len() as u64 => format!(" Images (first {} of {t}) ", h.len()),
            _ => format!(" Images ({}) ", h.len()),
        },
        (Listing::Names(Some(f)), Loadable::Ready(h)) => {
            format!(" {} images named like \"{}\" ", h.len(), truncate(f, 16))
        }
        _ => " Images ".to_owned(),
    };
    let block =
        Block::bordered().title(truncate(&title, list_area.width.saturating_sub(2) as usize));
    let mut inner = block.inner(list_area);
    f.render_widget(block, list_area);
    if let Some(e) = &b.search_error {
        // The daemon's reason, above the fallback list, so nobody mistakes name matches for
        // semantic hits.
        let msg = e.to_string();
        // Word wrapping needs at most one line more than the characters fill.
        let wrapped = (msg.chars().count() as u16).div_ceil(inner.width.max(1)) + 1;
        let h = (1 + wrapped).min(inner.height / 2);
        let notice = Paragraph::new(vec![
            Line::styled("free-text search unavailable:", ERROR),
            Line::styled(msg, ERROR),
        ])
        .wrap(Wrap { trim: true });
        let [top, rest] =
            Layout::vertical([Constraint::Length(h), Constraint::Min(0)]).areas(inner);
        f.render_widget(notice, top);
        inner = rest;
    }
    match &b.results {
        Loadable::Idle => f.render_widget(
            Paragraph::new("Type a description and press Enter, e.g. \"a bird that swims\".")
                .style(DIM)
                .wrap(Wrap { trim: true }),
            inner,
        ),
        Loadable::Loading => f.render_widget(Paragraph::new("searching...").style(DIM), inner),
        Loadable::Failed(e) => f.render_widget(
            Paragraph::new(vec![
                Line::styled("search failed", ERROR),
                Line::from(e.to_string()),
            ])
            .wrap(Wrap { trim: true }),
            inner,
        ),
        Loadable::Ready(hits) if hits.is_empty() => {
            f.render_widget(Paragraph::new("no images match").style(DIM), inner)
        }
        Loadable::Ready(hits) => {
            let w = inner.width.saturating_sub(10) as usize;
            let items: Vec<ListItem> = hits
                .iter()
                .map(|h| {
                    let key = truncate(&h.sample.key, w);
                    ListItem::new(match h.score {
                        Some(score) => format!("{score:>6.3} {key}"),
                        None => format!("{:>6} {key}", h.sample.id),
                    })
                })
                .collect();
            let list = List::new(items)
                .highlight_symbol("▶ ")
                .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
            let mut state = ListState::default().with_selected(Some(b.selected));
            f.render_stateful_widget(list, inner, &mut state);
        }
    }

    let selected = b.results.ready().and_then(|h| h.get(b.selected));
    let title = selected
        .map(|h| format!(" image {} · {} ", h.sample.id, h.sample.key))
        .unwrap_or_else(|| " Image ".to_owned());
    let block = Block::bordered().title(truncate(&title, detail.width.saturating_sub(2) as usize));
    let inner = block.inner(detail);
    f.render_widget(block, detail);
    let Some(hit) = selected else { return };
    let [pic, caps] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner);
    picture::draw(f, pic, hit.sample.path.as_deref(), images);
    let lines: Vec<Line> = match &b.captions {
        Loadable::Idle | Loadable::Loading => vec![Line::styled("loading captions...", DIM)],
        Loadable::Failed(e) => vec![Line::styled(e.to_string(), ERROR)],
        Loadable::Ready(r) if r.candidates.is_empty() => {
            vec![Line::styled("no caption candidates", DIM)]
        }
        Loadable::Ready(r) => {
            let mut lines = vec![Line::from("Closest captions:".bold())];
            let w = caps.width.saturating_sub(9) as usize;
            lines.extend(r.candidates.iter().map(|c| {
                let text = c
                    .sample
                    .text
                    .clone()
                    .unwrap_or_else(|| c.sample.key.clone());
                Line::from(format!(
                    "{:>6.3} {}{}",
                    c.score,
                    truncate(&text, w),
                    super::review::twins_mark(c)
                ))
            }));
            lines
        }
    };
    f.render_widget(Paragraph::new(lines), caps);
}
