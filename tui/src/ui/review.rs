//! The review queue: the sample under review on the left, its suggested partners on the right.
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};
use sotalign_protocol::codes;
use sotalign_protocol::types::{Candidate, Modality, QueueMode, Sample};

use super::{DIM, ERROR, picture};
use crate::images::Images;
use crate::state::{App, Loadable, Queue, truncate};

fn noun(m: Modality) -> &'static str {
    match m {
        Modality::Image => "image",
        Modality::Text => "caption",
    }
}

pub fn draw(f: &mut Frame, area: Rect, app: &App, images: &Images) {
    let q = app.review();
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(42), Constraint::Percentage(58)]).areas(area);

    let position = match q.total {
        Some(total) if q.skipped > 0 => {
            format!(
                " {} queued · {total} unpaired · {} skipped ",
                q.items.len(),
                q.skipped
            )
        }
        Some(total) => format!(" {} queued · {total} unpaired ", q.items.len()),
        None if q.ranked => match q.plan {
            Some((mode, precision, n)) => format!(
                " {} queued · {} · ~{:.0}% right ({n}) ",
                q.items.len(),
                mode_name(mode),
                100.0 * precision
            ),
            None => format!(" {} queued ", q.items.len()),
        },
        None => String::new(),
    };
    let Some(sample) = q.current() else {
        let block = Block::bordered().title(format!(" Review {}s ", noun(q.modality)));
        let inner = block.inner(area);
        f.render_widget(block, area);
        f.render_widget(
            Paragraph::new(empty_queue_text(app, q)).wrap(Wrap { trim: true }),
            inner,
        );
        return;
    };

    let title = format!(" {} {} · {} ", noun(sample.modality), sample.id, sample.key);
    let block = Block::bordered()
        .title(truncate(&title, left.width.saturating_sub(2) as usize))
        .title_bottom(Line::styled(position, DIM));
    let mut inner = block.inner(left);
    f.render_widget(block, left);
    if let Some(why) = q.why.get(&sample.id) {
        // Why the daemon queued this image (nextToLabel), above it.
        // Three lines at most (wrapped), so the picture keeps its room.
        let text = format!("queued: {why}");
        let width = inner.width.max(1) as usize;
        let rows = text.chars().count().div_ceil(width).clamp(1, 3) as u16;
        let [line, rest] =
            Layout::vertical([Constraint::Length(rows), Constraint::Min(0)]).areas(inner);
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("queued: ", DIM),
                Span::raw(why.clone()),
            ]))
            .wrap(Wrap { trim: true }),
            line,
        );
        inner = rest;
    }
    draw_sample(f, inner, sample, images);

    // The run that scored the list on screen, and the one replacing it while that loads.
    let run = match (q.candidates_run, app.served_run) {
        (Some(shown), Some(served)) if shown != served => {
            format!(" · re-align #{shown}, updating to #{served}")
        }
        (Some(shown), _) if q.candidates.ready().is_some() => format!(" · re-align #{shown}"),
        (_, Some(served)) => format!(" · re-align #{served}"),
        _ => String::new(),
    };
    let saving = if app.pending.is_some() || app.pending_undo.is_some() {
        " · saving..."
    } else {
        ""
    };
    let title = match &q.found {
        // An in-place search's hits, ranked words first, then meaning (f).
        Some(text) => format!(
            " {}s matching {:?}{}{saving} · y confirms, f again ",
            noun(sample.modality.other()),
            truncate(text, 24),
            if q.candidates
                .ready()
                .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c.score.is_nan()))
            {
                " (words only: no model yet)"
            } else {
                ""
            }
        ),
        None => format!(
            " Suggested {}s{run}{saving} ",
            noun(sample.modality.other())
        ),
    };
    let block = Block::bordered().title(truncate(&title, right.width.saturating_sub(2) as usize));
    let mut inner = block.inner(right);
    f.render_widget(block, right);
    if let Some(typed) = &app.finding {
        // The find field, on the first line of the pane while it has focus.
        let [field, rest] =
            Layout::vertical([Constraint::Length(2), Constraint::Min(0)]).areas(inner);
        f.render_widget(
            Paragraph::new(vec![
                Line::from(vec![
                    Span::styled("find: ", DIM),
                    Span::raw(typed.clone()).bold(),
                    Span::raw("▏"),
                ]),
                Line::styled("Enter searches (words, then meaning) · Esc cancels", DIM),
            ]),
            field,
        );
        inner = rest;
    }
    draw_candidates(f, inner, q, images);
}

/// The queue's mode in words (the bottom line of the sample pane).
fn mode_name(m: QueueMode) -> &'static str {
    match m {
        QueueMode::ColdStart => "cold start: typical uncovered images",
        QueueMode::Caption => "find captions",
        QueueMode::Judge => "judge proposals",
    }
}

fn empty_queue_text(app: &App, q: &Queue) -> Text<'static> {
    let n = noun(q.modality);
    if !app.is_connected() {
        return Text::styled("waiting for the daemon...", DIM);
    }
    if q.loading || q.total.is_none() {
        return Text::styled(format!("loading unpaired {n}s..."), DIM);
    }
    if q.total == Some(0) {
        return Text::from(vec![
            Line::from(format!("Nothing to review: every {n} is paired.").bold()),
            Line::from("Tab switches to the other modality; r re-aligns on all confirmed pairs."),
        ]);
    }
    Text::from(vec![
        Line::from(format!("Queue done for this session ({} skipped).", q.skipped).bold()),
        Line::from("r re-aligns with your confirmed pairs; Tab switches modality."),
    ])
}

pub(super) fn draw_sample(f: &mut Frame, area: Rect, sample: &Sample, images: &Images) {
    match sample.modality {
        Modality::Image => picture::draw(f, area, sample.path.as_deref(), images),
        Modality::Text => {
            let text = sample.text.as_deref().unwrap_or("(no caption text)");
            f.render_widget(
                Paragraph::new(text.to_owned())
                    .wrap(Wrap { trim: true })
                    .style(Style::new().bold()),
                area,
            );
        }
    }
}

/// The marks a candidate row can carry, explained above the list and on the `?` screen.
pub const LEGEND: &str = "score: similarity · ⇄ each other's best match · ×N same caption N times";
/// [`LEGEND`] for a narrow pane.
const LEGEND_SHORT: &str = "score=similarity ⇄ mutual best ×N identical";

/// " ×3" for a caption stored three times (itself and two identical others), else nothing.
pub fn twins_mark(c: &Candidate) -> String {
    if c.duplicates > 0 {
        format!(" ×{}", u64::from(c.duplicates) + 1)
    } else {
        String::new()
    }
}

/// A candidate as up to two lines: rank, score, mutual-NN mark, its caption (with how many
/// times it is stored) or key.
fn candidate_item(c: &Candidate, width: usize) -> ListItem<'static> {
    // No score (a words-only search before any model): a dash, not a number.
    let score = if c.score.is_nan() {
        "     –".to_owned()
    } else {
        format!("{:>6.3}", c.score)
    };
    let head = format!(
        "{:>2} {score} {} ",
        c.rank,
        if c.mutual_nn { "⇄" } else { " " }
    );
    let body = match c.sample.modality {
        Modality::Text => format!(
            "{}{}",
            c.sample
                .text
                .clone()
                .unwrap_or_else(|| c.sample.key.clone()),
            twins_mark(c)
        ),
        Modality::Image => format!("{} (image {})", c.sample.key, c.sample.id),
    };
    let room = width.saturating_sub(head.chars().count()).max(8);
    let first: String = body.chars().take(room).collect();
    let rest: String = body.chars().skip(room).collect();
    let score_style = if c.score >= 0.5 {
        Style::new().fg(Color::Green)
    } else {
        Style::new().fg(Color::Yellow)
    };
    let mut lines = vec![Line::from(vec![
        Span::styled(head.clone(), score_style),
        Span::raw(first),
    ])];
    if !rest.is_empty() {
        let indent = " ".repeat(head.chars().count());
        lines.push(Line::from(format!(
            "{indent}{}",
            truncate(rest.trim_start(), room)
        )));
    }
    ListItem::new(lines)
}

fn draw_candidates(f: &mut Frame, area: Rect, q: &Queue, images: &Images) {
    match &q.candidates {
        Loadable::Idle | Loadable::Loading => {
            f.render_widget(Paragraph::new("loading suggestions...").style(DIM), area);
        }
        Loadable::Failed(e) if e.code == Some(codes::NOT_READY) => {
            let text = vec![
                Line::from("No suggestions yet.".bold()),
                Line::from(e.message.clone()),
                Line::from(""),
                Line::from("Press r to run an alignment; suggestions appear when it finishes."),
            ];
            f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        }
        Loadable::Failed(e) => {
            let text = vec![
                Line::styled("cannot load suggestions", ERROR),
                Line::from(e.to_string()),
            ];
            f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        }
        Loadable::Ready(c) if c.is_empty() => {
            f.render_widget(
                Paragraph::new("No candidates left for this sample (all rejected?). s skips it.")
                    .wrap(Wrap { trim: true }),
                area,
            );
        }
        Loadable::Ready(cands) => {
            let [legend, area] =
                Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
            let text = if LEGEND.chars().count() <= legend.width as usize {
                LEGEND
            } else {
                LEGEND_SHORT
            };
            f.render_widget(
                Line::styled(truncate(text, legend.width as usize), DIM),
                legend,
            );
            // Image candidates get a preview of the selected one below the list.
            let images_listed = cands[0].sample.modality == Modality::Image;
            let (list_area, preview) = if images_listed && area.height >= 12 {
                let [l, p] = Layout::vertical([
                    Constraint::Length((cands.len() as u16).min(8)),
                    Constraint::Min(0),
                ])
                .areas(area);
                (l, Some(p))
            } else {
                (area, None)
            };
            let width = list_area.width.saturating_sub(2) as usize;
            let items: Vec<ListItem> = cands.iter().map(|c| candidate_item(c, width)).collect();
            let list = List::new(items)
                .highlight_symbol("▶ ")
                .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
            let mut state = ListState::default().with_selected(Some(q.selected));
            f.render_stateful_widget(list, list_area, &mut state);
            if let (Some(p), Some(sel)) = (preview, q.selected_candidate()) {
                let block = Block::new()
                    .borders(ratatui::widgets::Borders::TOP)
                    .title(format!(" {} ", sel.sample.key));
                let inner = block.inner(p);
                f.render_widget(block, p);
                picture::draw(f, inner, sel.sample.path.as_deref(), images);
            }
        }
    }
}
