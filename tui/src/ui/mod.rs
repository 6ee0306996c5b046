//! Rendering: pure functions from [`App`] (plus the image cache) to a frame.
//!
//! The frame is: a title bar (screens, server, model), a red banner while the daemon is
//! unreachable, the current screen, a status line (the latest message; daemon errors in red)
//! and a help bar built from [`crate::keys::BINDINGS`]. Below [`MIN_WIDTH`]x[`MIN_HEIGHT`]
//! only a "terminal too small" notice is drawn, so no widget has to cope with a sliver.
mod audit;
mod browse;
mod dashboard;
mod help;
mod picture;
mod review;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};

use crate::images::Images;
use crate::keys;
use crate::state::{App, Conn, Level, Screen};

pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 24;

pub(crate) const KEY_STYLE: Style = Style::new().fg(Color::Black).bg(Color::Cyan);
pub(crate) const DIM: Style = Style::new().fg(Color::DarkGray);
pub(crate) const ERROR: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);

/// Draw the whole UI.
pub fn draw(f: &mut Frame, app: &App, images: &Images) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        too_small(f, area);
        return;
    }
    let banner = !app.is_connected();
    let [title, banner_area, main, status, help_bar] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(if banner { 1 } else { 0 }),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    title_bar(f, title, app, images);
    if banner {
        connection_banner(f, banner_area, app);
    }
    match app.screen {
        Screen::Review => review::draw(f, main, app, images),
        Screen::Browse => browse::draw(f, main, app, images),
        Screen::Dashboard => dashboard::draw(f, main, app),
        Screen::Audit => audit::draw(f, main, app, images),
    }
    if app.help {
        help::draw(f, main, app.screen);
    }
    status_line(f, status, app);
    help_line(f, help_bar, app);
}

fn too_small(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("terminal too small".bold()),
        Line::from(format!(
            "{}x{}, need at least {MIN_WIDTH}x{MIN_HEIGHT}",
            area.width, area.height
        )),
        Line::from("q quits"),
    ];
    let y = area.height.saturating_sub(3) / 2;
    let rect = Rect::new(area.x, area.y + y, area.width, area.height.min(3));
    f.render_widget(
        Paragraph::new(text).centered().wrap(Wrap { trim: true }),
        rect,
    );
}

fn title_bar(f: &mut Frame, area: Rect, app: &App, images: &Images) {
    let mut spans = vec![Span::styled(
        " sotalign ",
        Style::new().fg(Color::Black).bg(Color::Green).bold(),
    )];
    for (key, name, screen) in [
        ("1", "Review", Screen::Review),
        ("2", "Browse", Screen::Browse),
        ("3", "Dashboard", Screen::Dashboard),
        ("4", "Audit", Screen::Audit),
    ] {
        spans.push(Span::raw(" "));
        let style = if app.screen == screen {
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::new()
        };
        spans.push(Span::styled(format!("{key} {name}"), style));
    }
    // Right-hand facts in priority order; whatever does not fit is left out.
    let mut facts = Vec::new();
    match app.status.as_ref().and_then(|s| s.model.as_ref()) {
        Some(m) => facts.push(format!("model: re-align #{} ({} pairs)", m.run, m.pairs)),
        None if app.status.is_some() => facts.push("no model yet".to_owned()),
        None => {}
    }
    if let Conn::Connected { server } = &app.conn {
        facts.push(server.clone());
    }
    facts.push(images.protocol_name().to_owned());
    let left_len: usize = spans.iter().map(|s| s.width()).sum();
    let room = (area.width as usize).saturating_sub(left_len + 2);
    let mut shown: Vec<String> = Vec::new();
    for fact in facts {
        let len: usize =
            shown.iter().map(|s| s.chars().count() + 3).sum::<usize>() + fact.chars().count();
        if len <= room {
            shown.push(fact);
        }
    }
    let right = format!("{} ", shown.join(" · "));
    let pad = (area.width as usize).saturating_sub(left_len + right.chars().count());
    spans.push(Span::raw(" ".repeat(pad)));
    spans.push(Span::styled(right, DIM));
    f.render_widget(Line::from(spans), area);
}

fn connection_banner(f: &mut Frame, area: Rect, app: &App) {
    let text = match &app.conn {
        Conn::Connecting { attempt } if *attempt <= 1 => "connecting to the daemon...".to_owned(),
        Conn::Connecting { attempt } => format!("connecting to the daemon (attempt {attempt})..."),
        Conn::Lost {
            reason,
            retry_at_ms,
            attempt,
        } => {
            let secs = retry_at_ms.saturating_sub(app.now_ms).div_ceil(1000);
            if secs > 0 {
                format!("DAEMON LOST: {reason} · retry {} in {secs} s", attempt + 1)
            } else {
                format!("DAEMON LOST: {reason} · reconnecting...")
            }
        }
        Conn::Connected { .. } => String::new(),
    };
    let style = match app.conn {
        Conn::Lost { .. } => Style::new().fg(Color::White).bg(Color::Red).bold(),
        _ => Style::new().fg(Color::Black).bg(Color::Yellow),
    };
    f.render_widget(
        Paragraph::new(crate::state::truncate(&text, area.width as usize)).style(style),
        area,
    );
}

fn status_line(f: &mut Frame, area: Rect, app: &App) {
    let line = match &app.message {
        Some(m) => {
            let (prefix, style) = match m.level {
                Level::Error => ("error: ", ERROR),
                Level::Info => ("", Style::new()),
            };
            Line::from(Span::styled(
                crate::state::truncate(&format!("{prefix}{}", m.text), area.width as usize),
                style,
            ))
        }
        None => Line::from(Span::styled("ready", DIM)),
    };
    f.render_widget(line, area);
}

fn help_line(f: &mut Frame, area: Rect, app: &App) {
    let mut spans = Vec::new();
    let mut used = 0usize;
    for b in keys::bindings_for(app.scope()).filter(|b| b.in_bar) {
        let key = keys::key_label(&b.keys[0]);
        let w = key.chars().count() + b.short.chars().count() + 2;
        if used + w > area.width as usize {
            break;
        }
        used += w;
        spans.push(Span::styled(key, KEY_STYLE));
        spans.push(Span::raw(format!(" {} ", b.short)));
    }
    f.render_widget(Line::from(spans), area);
}
