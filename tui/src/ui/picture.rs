//! An image file drawn in a rectangle, or a placeholder naming the file when it cannot be.
use ratatui::Frame;
use ratatui::layout::{Rect, Size};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Wrap};
use ratatui_image::Image;

use super::{DIM, ERROR};
use crate::images::{Images, Slot};

fn file_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

pub fn draw(f: &mut Frame, area: Rect, path: Option<&str>, images: &Images) {
    if area.width == 0 || area.height == 0 {
        return;
    }
    let Some(path) = path else {
        f.render_widget(Paragraph::new("(no image file)").style(DIM), area);
        return;
    };
    match images.get(path, Size::new(area.width, area.height)) {
        Some(Slot::Ready(proto)) => {
            // Fit keeps the aspect ratio; centre the picture horizontally.
            let size = proto.size();
            let x = area.x + area.width.saturating_sub(size.width) / 2;
            let rect = Rect::new(
                x,
                area.y,
                size.width.min(area.width),
                size.height.min(area.height),
            );
            f.render_widget(Image::new(proto), rect);
        }
        Some(Slot::Failed(why)) => {
            let text = vec![
                Line::from(format!("[{}]", file_name(path))),
                Line::styled("cannot show this image:", ERROR),
                Line::styled(why.clone(), DIM),
            ];
            f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        }
        Some(Slot::Loading) | None => {
            f.render_widget(
                Paragraph::new(format!("loading {}...", file_name(path))).style(DIM),
                area,
            );
        }
    }
}
