//! The dashboard: counts, the running job's progress with ETA, and R@1 across runs (does
//! curation pay off?).
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Dataset, Gauge, GraphType, Paragraph, Wrap};
use sotalign_protocol::types::{JobKind, JobStage, JobState};

use super::{DIM, ERROR};
use crate::state::{App, JobView};

pub fn draw(f: &mut Frame, area: Rect, app: &App) {
    let [top, chart] = Layout::vertical([Constraint::Length(10), Constraint::Min(6)]).areas(area);
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
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn stage_name(s: JobStage) -> &'static str {
    match s {
        JobStage::Scan => "scan",
        JobStage::Encode => "encode",
        JobStage::Teacher => "teacher",
        JobStage::Refine => "refine",
        JobStage::Evaluate => "evaluate",
        JobStage::Index => "index",
        JobStage::Validate => "validate",
    }
}

fn secs(s: f64) -> String {
    if s >= 90.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.0}s")
    }
}

fn job_lines(j: &JobView, now_ms: u64) -> Vec<Line<'static>> {
    let kind = match j.kind {
        JobKind::Align => "alignment",
        JobKind::Ingest => "ingest",
    };
    let run = j.run.map(|r| format!(" · run {r}")).unwrap_or_default();
    let mut lines = vec![Line::from(format!("{kind} job {}{run}", j.id).bold())];
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
                "R@1 image->text {:.3} · text->image {:.3}",
                m.image_to_text.r1, m.text_to_image.r1
            )));
        }
        if let Some(e) = &fin.error {
            lines.push(Line::styled(
                format!("error {}: {}", e.code, e.message),
                ERROR,
            ));
        }
        return lines;
    }
    if j.lost_track {
        lines.push(Line::styled(
            "ended while disconnected (see the runs chart)",
            DIM,
        ));
        return lines;
    }
    let (stage, step, total, elapsed) = match (&j.progress, &j.info) {
        (Some(p), _) => (Some(p.stage), p.step, p.total, Some(p.elapsed_secs)),
        (None, Some(i)) => (i.stage, i.step, i.total, None),
        (None, None) => (None, 0, 0, None),
    };
    let mut parts = Vec::new();
    if let Some(s) = stage {
        parts.push(format!("{} {step}/{total}", stage_name(s)));
    } else {
        parts.push("starting".to_owned());
    }
    if let Some(loss) = j.progress.as_ref().and_then(|p| p.loss) {
        parts.push(format!("loss {loss:.4}"));
    }
    lines.push(Line::from(parts.join(" · ")));
    let mut timing = Vec::new();
    if let Some(e) = elapsed {
        timing.push(format!("elapsed {}", secs(e)));
    }
    match j.eta_secs(now_ms) {
        Some(eta) => timing.push(format!("ETA {}", secs(eta))),
        None => timing.push("ETA estimating...".to_owned()),
    }
    lines.push(Line::from(timing.join(" · ")));
    if let Some(msg) = j.progress.as_ref().and_then(|p| p.message.clone()) {
        lines.push(Line::styled(msg, DIM));
    }
    lines
}

fn draw_job(f: &mut Frame, area: Rect, app: &App) {
    let block = Block::bordered().title(" Job ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    let Some(j) = app.latest_job() else {
        f.render_widget(
            Paragraph::new("No job this session. r starts an alignment run.")
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
            .label(format!("{:.0}%", ratio * 100.0)),
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
    let title = " R@1 on held-out pairs, per alignment run ";
    if runs.is_empty() {
        f.render_widget(
            Paragraph::new("No finished alignment run with metrics yet.")
                .style(DIM)
                .block(Block::bordered().title(title)),
            area,
        );
        return;
    }
    let i2t: Vec<(f64, f64)> = runs
        .iter()
        .enumerate()
        .map(|(i, (_, m))| (i as f64 + 1.0, m.image_to_text.r1))
        .collect();
    let t2i: Vec<(f64, f64)> = runs
        .iter()
        .enumerate()
        .map(|(i, (_, m))| (i as f64 + 1.0, m.text_to_image.r1))
        .collect();
    let top = i2t.iter().chain(&t2i).map(|p| p.1).fold(0.0f64, f64::max);
    // Round the y range up to the next 0.1 so small numbers are not squashed flat.
    let y_max = ((top * 10.0).ceil() / 10.0).clamp(0.1, 1.0);
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
        " latest run {}: {} pairs, R@1 {:.3} / {:.3} ",
        latest.0.id, latest.0.pairs, latest.1.image_to_text.r1, latest.1.text_to_image.r1
    );
    let chart = Chart::new(datasets)
        .block(
            Block::bordered()
                .title(title)
                .title_bottom(Line::styled(subtitle, DIM)),
        )
        .x_axis(
            Axis::default()
                .title("run")
                .bounds([1.0, n.max(2.0)])
                .labels([
                    format!("{} ({}p)", first.id, first.pairs),
                    format!("{} ({}p)", last.id, last.pairs),
                ]),
        )
        .y_axis(Axis::default().bounds([0.0, y_max]).labels([
            "0".to_owned(),
            format!("{:.2}", y_max / 2.0),
            format!("{y_max:.2}"),
        ]));
    f.render_widget(chart, area);
}
