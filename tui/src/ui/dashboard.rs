//! The dashboard: counts, the running job's progress with ETA, and R@1 across runs (does
//! curation pay off?).
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Dataset, Gauge, GraphType, Paragraph, Wrap};
use sotalign_protocol::types::JobState;

use super::{DIM, ERROR};
use crate::state::{App, JobView, percent, stage_name};

/// Annotators listed on the dashboard (most active first); the rest are summed in one line.
const ANNOTATORS_SHOWN: usize = 4;

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let people = app.status.as_ref().map_or(0, |s| s.annotators.len());
    let extra = match people {
        0 => 0,
        n => 1 + n.min(ANNOTATORS_SHOWN + 1) as u16,
    };
    let [top, chart] =
        Layout::vertical([Constraint::Length(11 + extra), Constraint::Min(6)]).areas(area);
    let [counts, job] = Layout::horizontal([Constraint::Length(32), Constraint::Min(0)]).areas(top);
    draw_counts(f, counts, app);
    draw_job(f, job, app);
    draw_chart(f, chart, app);
}

fn row(label: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::raw(format!("{label:<18}")),
        Span::raw(format!("{value:>10}")).bold(),
    ])
}

fn draw_counts(f: &mut Frame, area: Rect, app: &App) {
    let block = Block::bordered().title(" Counts ");
    let s = app.session;
    let mut lines = match app.counts {
        Some(c) => vec![
            row("paired (confirmed)", c.confirmed_pairs.to_string()),
            row("unpaired images", c.unpaired_images.to_string()),
            row("unpaired captions", c.unpaired_texts.to_string()),
            row("rejected pairs", c.rejected_pairs.to_string()),
            row("held out (eval)", c.held_out_pairs.to_string()),
        ],
        None => vec![Line::styled("waiting for the daemon...", DIM)],
    };
    lines.push(Line::styled("this session:", DIM));
    lines.push(row("  confirmed", s.confirmed.to_string()));
    lines.push(row("  rejected", s.rejected.to_string()));
    // Effort: candidates read before the right one, per pair confirmed (docs/CURATION.md).
    lines.push(row(
        "  read per pair",
        match app.effort_median() {
            Some((m, n)) => format!("{m:.0} (last {n})"),
            None => "–".to_owned(),
        },
    ));
    if let Some(st) = app.status.as_ref().filter(|s| !s.annotators.is_empty()) {
        lines.push(Line::styled("by annotator (confirmed / rejected):", DIM));
        for a in st.annotators.iter().take(ANNOTATORS_SHOWN) {
            let name = if a.annotator.is_empty() {
                "(unnamed)".to_owned()
            } else {
                crate::state::truncate(&a.annotator, 16)
            };
            lines.push(row(
                &format!("  {name}"),
                format!("{} / {}", a.confirmed, a.rejected),
            ));
        }
        let rest = &st.annotators[st.annotators.len().min(ANNOTATORS_SHOWN)..];
        if !rest.is_empty() {
            let (c, r) = rest
                .iter()
                .fold((0, 0), |(c, r), a| (c + a.confirmed, r + a.rejected));
            lines.push(row(&format!("  {} more", rest.len()), format!("{c} / {r}")));
        }
    }
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn secs(s: f64) -> String {
    if s >= 90.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.0}s")
    }
}

fn job_lines(j: &JobView, now_ms: u64) -> Vec<Line<'static>> {
    let mut lines = vec![Line::from(j.label().bold())];
    if let Some(fin) = &j.finished {
        let (word, style) = match fin.state {
            JobState::Succeeded => ("finished", Style::new().fg(Color::Green)),
            JobState::Cancelled => ("cancelled", Style::new().fg(Color::Yellow)),
            _ => ("FAILED", ERROR),
        };
        lines.push(Line::styled(
            format!("{word} after {}", secs(fin.elapsed_secs)),
            style,
        ));
        if let Some(m) = fin.metrics {
            lines.push(Line::from(format!(
                "R@1 image->text {} · text->image {}",
                percent(m.image_to_text.r1),
                percent(m.text_to_image.r1)
            )));
        }
        if let Some(e) = &fin.error {
            lines.push(Line::styled(
                format!("error {}: {}", e.code, e.message),
                ERROR,
            ));
        }
        lines.extend(stage_history(j));
        return lines;
    }
    if j.lost_track {
        lines.push(Line::styled(
            "ended while disconnected (see the runs chart)",
            DIM,
        ));
        return lines;
    }
    let (step, total, elapsed) = match (&j.progress, &j.info) {
        (Some(p), _) => (p.step, p.total, Some(p.elapsed_secs)),
        (None, Some(i)) => (i.step, i.total, None),
        (None, None) => (0, 0, None),
    };
    let mut parts = Vec::new();
    match j.current_stage() {
        Some(s) => {
            // Stages are numbered as they come, so one the daemon adds counts too.
            let n = j.stages.len().max(1);
            parts.push(format!("stage {n}: {} {step}/{total}", stage_name(s)));
        }
        None => parts.push("starting".to_owned()),
    }
    if let Some(loss) = j.progress.as_ref().and_then(|p| p.loss) {
        parts.push(format!("loss {loss:.4}"));
    }
    lines.push(Line::from(parts.join(" · ")));
    let mut timing = Vec::new();
    if let Some(e) = elapsed {
        timing.push(format!("elapsed {}", secs(e)));
    }
    match (j.current_stage(), j.stage_eta_secs(now_ms)) {
        (Some(s), Some(eta)) => timing.push(format!("{} ETA {}", stage_name(s), secs(eta))),
        // Honest: no rate measured yet, no number.
        (Some(_), None) => timing.push("ETA: measuring the rate...".to_owned()),
        (None, _) => {}
    }
    lines.push(Line::from(timing.join(" · ")));
    lines.extend(stage_history(j));
    if let Some(msg) = j.progress.as_ref().and_then(|p| p.message.clone()) {
        lines.push(Line::styled(msg, DIM));
    }
    lines
}

/// "done: teacher 3s, ..." for the stages already finished.
fn stage_history(j: &JobView) -> Vec<Line<'static>> {
    let done = j.stage_durations();
    if done.is_empty() {
        return Vec::new();
    }
    let parts: Vec<String> = done
        .iter()
        .map(|(name, d)| format!("{name} {}", secs(*d)))
        .collect();
    vec![Line::styled(format!("done: {}", parts.join(", ")), DIM)]
}

fn draw_job(f: &mut Frame, area: Rect, app: &App) {
    let block = Block::bordered().title(" Job ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let Some(j) = app.latest_job() else {
        f.render_widget(
            Paragraph::new("No job this session. r starts a re-align.")
                .style(DIM)
                .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    };
    let [gauge, text] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)])
        .spacing(1)
        .areas(inner);
    let ratio = j.ratio().clamp(0.0, 1.0);
    let color = match j.finished.as_ref().map(|f| f.state) {
        Some(JobState::Failed) => Color::Red,
        Some(JobState::Cancelled) => Color::Yellow,
        _ => Color::Green,
    };
    f.render_widget(
        Gauge::default()
            .gauge_style(Style::new().fg(color).bg(Color::DarkGray))
            .ratio(ratio)
            .label(match j.current_stage().filter(|_| j.is_running()) {
                Some(s) => format!("{} · {:.0}%", stage_name(s), ratio * 100.0),
                None => format!("{:.0}%", ratio * 100.0),
            }),
        gauge,
    );
    f.render_widget(
        Paragraph::new(job_lines(j, app.now_ms)).wrap(Wrap { trim: true }),
        text,
    );
}

fn draw_chart(f: &mut Frame, area: Rect, app: &App) {
    let runs: Vec<_> = app
        .runs
        .iter()
        .filter(|r| r.state == JobState::Succeeded)
        .filter_map(|r| r.metrics.map(|m| (r, m)))
        .collect();
    let title = " R@1 on held-out pairs (%), per re-align ";
    if runs.is_empty() {
        f.render_widget(
            Paragraph::new("No finished re-align with metrics yet.")
                .style(DIM)
                .block(Block::bordered().title(title)),
            area,
        );
        return;
    }
    let i2t: Vec<(f64, f64)> = runs
        .iter()
        .enumerate()
        .map(|(i, (_, m))| (i as f64 + 1.0, m.image_to_text.r1 * 100.0))
        .collect();
    let t2i: Vec<(f64, f64)> = runs
        .iter()
        .enumerate()
        .map(|(i, (_, m))| (i as f64 + 1.0, m.text_to_image.r1 * 100.0))
        .collect();
    let top = i2t.iter().chain(&t2i).map(|p| p.1).fold(0.0f64, f64::max);
    // Round the y range (percent) up to the next 10 so small numbers are not squashed flat.
    let y_max = ((top / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let n = runs.len() as f64;
    let (first, last) = (runs[0].0, runs[runs.len() - 1].0);
    let datasets = vec![
        Dataset::default()
            .name("image->text")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Cyan))
            .data(&i2t),
        Dataset::default()
            .name("text->image")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Magenta))
            .data(&t2i),
    ];
    let latest = runs[runs.len() - 1];
    let subtitle = format!(
        " latest: re-align #{}, {} pairs, R@1 {} / {} ",
        latest.0.id,
        latest.0.pairs,
        percent(latest.1.image_to_text.r1),
        percent(latest.1.text_to_image.r1)
    );
    let chart = Chart::new(datasets)
        .block(
            Block::bordered()
                .title(title)
                .title_bottom(Line::styled(subtitle, DIM)),
        )
        .x_axis(
            Axis::default()
                .title("re-align")
                .bounds([1.0, n.max(2.0)])
                .labels([
                    format!("#{} ({}p)", first.id, first.pairs),
                    format!("#{} ({}p)", last.id, last.pairs),
                ]),
        )
        .y_axis(Axis::default().bounds([0.0, y_max]).labels([
            "0%".to_owned(),
            format!("{:.0}%", y_max / 2.0),
            format!("{y_max:.0}%"),
        ]));
    f.render_widget(chart, area);
}
